//! Figures and states in words.

use commons_shared::desktop::DonorState;

/// A state as the page says it: active → "Donating".
pub fn state_label(state: DonorState) -> &'static str {
    match state {
        DonorState::Stopped => "Not donating",
        DonorState::Registering => "Joining",
        DonorState::Pulling => "Preparing",
        DonorState::Active => "Donating",
        DonorState::Paused => "Paused",
        DonorState::Error => "Error",
    }
}

/// A duration, coarse: "45 s", "12 min", "3 h 20 min", "2 d 4 h".
pub fn duration(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60);
    if secs < 60 {
        format!("{secs} s")
    } else if secs < 3600 {
        format!("{m} min")
    } else if d == 0 {
        format!("{h} h {m} min")
    } else {
        format!("{d} d {h} h")
    }
}

/// Hours donated, one decimal: "1.5 h".
pub fn hours(secs: u64) -> String {
    format!("{:.1} h", secs as f64 / 3600.0)
}

/// A pull's progress, percent (0 while the size is unknown).
pub fn percent(done: u64, total: u64) -> u32 {
    (done.min(total) * 100).checked_div(total).unwrap_or(0) as u32
}

/// The schedule field: "08:00-12:00, 18:00-23:00" ⇄ windows.
pub fn parse_windows(text: &str) -> Vec<String> {
    text.split([',', ';'])
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// See [`parse_windows`].
pub fn show_windows(windows: &[String]) -> String {
    windows.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_as_words() {
        assert_eq!(duration(42), "42 s");
        assert_eq!(duration(12 * 60 + 5), "12 min");
        assert_eq!(duration(3 * 3600 + 20 * 60), "3 h 20 min");
        assert_eq!(duration(2 * 86_400 + 4 * 3600 + 59), "2 d 4 h");
        assert_eq!(hours(5400), "1.5 h");
        assert_eq!(percent(50, 200), 25);
        assert_eq!(percent(10, 0), 0);
        assert_eq!(percent(300, 200), 100);
        assert_eq!(state_label(DonorState::Active), "Donating");
        assert_eq!(
            parse_windows(" 08:00-12:00, ;18:00-23:00 "),
            vec!["08:00-12:00", "18:00-23:00"]
        );
        assert_eq!(show_windows(&parse_windows("a,b")), "a, b");
    }
}
