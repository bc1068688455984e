//! When the volunteer lets the machine donate: schedule windows (local time) and only on mains power.

use std::path::Path;

/// A daily window, minutes after local midnight; `end < start` wraps past midnight ("18:00-08:00").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    start: u16,
    end: u16,
}

impl Window {
    /// Parses "HH:MM-HH:MM" (24:00 allowed as an end).
    pub fn parse(text: &str) -> Option<Self> {
        let (a, b) = text.trim().split_once('-')?;
        let minutes = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
        };
        let (start, end) = (minutes(a)?, minutes(b)?);
        (start < 24 * 60 && start != end).then_some(Self { start, end })
    }

    /// Whether a minute of the day is inside.
    pub fn contains(&self, minute: u16) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

/// Why donating is held back now, if it is (`in_use`: someone is at the keyboard and `idle_only` is set).
pub fn blocked(
    windows: &[Window],
    minute_of_day: u16,
    ac_only: bool,
    on_ac: Option<bool>,
    in_use: bool,
) -> Option<String> {
    if in_use {
        return Some("the computer is in use".into());
    }
    if !windows.is_empty() && !windows.iter().any(|w| w.contains(minute_of_day)) {
        return Some("outside the donation schedule".into());
    }
    if ac_only && on_ac == Some(false) {
        return Some("on battery power".into());
    }
    None
}

/// Whether the machine runs on mains power, from a sysfs `power_supply` folder; `None` when it cannot tell (no
/// supplies: a desktop or a server, which counts as mains).
pub fn on_mains(power_supply: &Path) -> Option<bool> {
    let entries = std::fs::read_dir(power_supply).ok()?;
    let (mut mains_online, mut has_battery) = (false, false);
    for e in entries.flatten() {
        let read = |f: &str| {
            std::fs::read_to_string(e.path().join(f))
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        match read("type").as_str() {
            "Mains" | "USB" => mains_online |= read("online") == "1",
            "Battery" => has_battery = true,
            _ => {}
        }
    }
    if has_battery {
        Some(mains_online)
    } else {
        None
    }
}

/// Whether this machine runs on mains power; `None` when it cannot tell (no battery: a desktop or a server, which
/// counts as mains). From sysfs on Linux.
#[cfg(not(any(windows, target_os = "macos")))]
pub fn mains() -> Option<bool> {
    on_mains(Path::new("/sys/class/power_supply"))
}

/// Whether this machine runs on mains power, from the batteries the system lists (Windows, macOS): on battery
/// when one is discharging; `None` when it has none (a desktop, which counts as mains) or cannot tell.
#[cfg(any(windows, target_os = "macos"))]
pub fn mains() -> Option<bool> {
    let states: Vec<_> = starship_battery::Manager::new()
        .ok()?
        .batteries()
        .ok()?
        .flatten()
        .map(|b| b.state())
        .collect();
    mains_from(&states)
}

/// On mains unless a battery is discharging (or empty); `None` without batteries.
#[cfg(any(windows, target_os = "macos"))]
fn mains_from(batteries: &[starship_battery::State]) -> Option<bool> {
    use starship_battery::State;
    if batteries.is_empty() {
        return None;
    }
    Some(
        !batteries
            .iter()
            .any(|s| matches!(s, State::Discharging | State::Empty)),
    )
}

/// Minutes after local midnight now.
pub fn local_minute() -> u16 {
    let now = jiff::Zoned::now();
    (now.hour() as u16) * 60 + now.minute() as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        let night = Window::parse("18:00-08:00").unwrap();
        let office = Window::parse("09:30-17:00").unwrap();
        let all = Window::parse("00:00-24:00").unwrap();
        for (w, minute, inside) in [
            (night, 18 * 60, true),
            (night, 23 * 60 + 59, true),
            (night, 7 * 60 + 59, true),
            (night, 8 * 60, false),
            (night, 12 * 60, false),
            (office, 9 * 60 + 30, true),
            (office, 9 * 60 + 29, false),
            (office, 17 * 60, false),
            (all, 0, true),
            (all, 1439, true),
        ] {
            assert_eq!(w.contains(minute), inside, "{w:?} {minute}");
        }
        for bad in [
            "",
            "18:00",
            "25:00-01:00",
            "10:60-11:00",
            "10:00-10:00",
            "a-b",
            "24:00-01:00",
        ] {
            assert!(Window::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn blocking() {
        let night = [Window::parse("18:00-08:00").unwrap()];
        assert_eq!(blocked(&[], 600, false, None, false), None);
        assert_eq!(
            blocked(&night, 600, false, None, false).as_deref(),
            Some("outside the donation schedule")
        );
        assert_eq!(blocked(&night, 1200, false, None, false), None);
        assert_eq!(
            blocked(&[], 600, true, Some(false), false).as_deref(),
            Some("on battery power")
        );
        assert_eq!(blocked(&[], 600, true, Some(true), false), None);
        assert_eq!(
            blocked(&[], 600, true, None, false),
            None,
            "no battery: mains"
        );
        assert_eq!(
            blocked(&[], 600, false, None, true).as_deref(),
            Some("the computer is in use")
        );
    }

    #[test]
    fn mains_from_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let supply = |name: &str, kind: &str, online: Option<&str>| {
            let p = dir.path().join(name);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("type"), format!("{kind}\n")).unwrap();
            if let Some(o) = online {
                std::fs::write(p.join("online"), format!("{o}\n")).unwrap();
            }
        };
        assert_eq!(on_mains(dir.path()), None);
        supply("BAT0", "Battery", None);
        supply("AC", "Mains", Some("0"));
        assert_eq!(on_mains(dir.path()), Some(false));
        std::fs::write(dir.path().join("AC/online"), "1\n").unwrap();
        assert_eq!(on_mains(dir.path()), Some(true));
        assert_eq!(on_mains(Path::new("/nonexistent")), None);
    }

    #[cfg(any(windows, target_os = "macos"))]
    #[test]
    fn mains_from_the_systems_batteries() {
        use starship_battery::State;
        assert_eq!(mains_from(&[]), None);
        assert_eq!(mains_from(&[State::Charging]), Some(true));
        assert_eq!(mains_from(&[State::Full, State::Unknown]), Some(true));
        assert_eq!(mains_from(&[State::Full, State::Discharging]), Some(false));
        // The system answers (a machine without batteries: None, which counts as mains).
        println!("this machine on mains: {:?}", mains());
    }
}
