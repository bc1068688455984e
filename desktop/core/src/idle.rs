//! Whether the volunteer is using the computer, from input (keyboard and mouse), not from CPU load: the X11
//! screen-saver extension's time since the last input on Linux, the system's own count on Windows
//! (`GetLastInputInfo`) and macOS (IOHIDSystem's `HIDIdleTime`). Where there is no display (a server, a container)
//! nobody is at the keyboard, and the machine counts as idle.

use std::time::Duration;

use x11rb::connection::Connection;
use x11rb::protocol::screensaver::ConnectionExt as _;

/// A source of "time since the last input".
pub trait IdleSource: Send + Sync {
    /// Time since the last keyboard or mouse input; `None` when it cannot be known (no display).
    fn idle_for(&self) -> Option<Duration>;
}

/// The X11 display (`DISPLAY`, or the one named). One connection is kept open: the X server counts a client
/// leaving as activity, so connecting for each query would reset the very timer it reads.
#[derive(Default)]
pub struct X11Idle {
    display: Option<String>,
    conn: parking_lot::Mutex<Option<(x11rb::rust_connection::RustConnection, u32)>>,
}

impl std::fmt::Debug for X11Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X11Idle")
            .field("display", &self.display)
            .finish()
    }
}

impl X11Idle {
    /// The display named, or `DISPLAY` when `None`.
    pub fn new(display: Option<String>) -> Self {
        Self {
            display,
            conn: parking_lot::Mutex::new(None),
        }
    }
}

impl IdleSource for X11Idle {
    fn idle_for(&self) -> Option<Duration> {
        let mut guard = self.conn.lock();
        if guard.is_none() {
            let (conn, screen) = x11rb::connect(self.display.as_deref()).ok()?;
            let root = conn.setup().roots.get(screen)?.root;
            *guard = Some((conn, root));
        }
        let (conn, root) = guard.as_ref()?;
        match conn
            .screensaver_query_info(*root)
            .ok()
            .and_then(|c| c.reply().ok())
        {
            Some(info) => Some(Duration::from_millis(u64::from(info.ms_since_user_input))),
            None => {
                // The display went away: connect again next time.
                *guard = None;
                None
            }
        }
    }
}

/// The idle time this system keeps: Windows' and macOS's own (through `user-idle`).
#[cfg(any(windows, target_os = "macos"))]
#[derive(Debug, Default)]
pub struct SystemIdle;

#[cfg(any(windows, target_os = "macos"))]
impl IdleSource for SystemIdle {
    fn idle_for(&self) -> Option<Duration> {
        user_idle::UserIdle::get_time().ok().map(|t| t.duration())
    }
}

/// The idle time this system keeps: the X11 display's.
#[cfg(not(any(windows, target_os = "macos")))]
pub type SystemIdle = X11Idle;

/// Whether someone is using the machine: input within `threshold`.
pub fn in_use(source: &dyn IdleSource, threshold: Duration) -> bool {
    source.idle_for().is_some_and(|d| d < threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Option<Duration>);
    impl IdleSource for Fixed {
        fn idle_for(&self) -> Option<Duration> {
            self.0
        }
    }

    #[test]
    fn rules() {
        let five_min = Duration::from_secs(300);
        assert!(in_use(&Fixed(Some(Duration::from_secs(3))), five_min));
        assert!(!in_use(&Fixed(Some(Duration::from_secs(600))), five_min));
        assert!(
            !in_use(&Fixed(None), five_min),
            "no display: nobody at the keyboard"
        );
        assert_eq!(
            X11Idle::new(Some(":4242".into())).idle_for(),
            None,
            "a display that is not there"
        );
    }

    #[cfg(any(windows, target_os = "macos"))]
    #[test]
    fn the_systems_own_idle_time_is_read() {
        let idle = SystemIdle
            .idle_for()
            .expect("the system keeps the time since the last input");
        // Since the last input, not since the epoch.
        assert!(idle < Duration::from_secs(30 * 86_400), "{idle:?}");
    }
}
