//! Input-based idle detection against a real X server (Xvfb), with real input (xdotool).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use commons_agent::idle::{IdleSource, X11Idle, in_use};

struct Xvfb(Child);

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn idle_time_follows_real_input() {
    let n = 100 + std::process::id() % 800;
    let display = format!(":{n}");
    let _x = Xvfb(
        Command::new("Xvfb")
            .args([
                display.as_str(),
                "-screen",
                "0",
                "640x480x24",
                "-nolisten",
                "tcp",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Xvfb (Debian package xvfb; .ci/setup installs it)"),
    );
    let source = X11Idle::new(Some(display.clone()));
    let t = Instant::now();
    while source.idle_for().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "Xvfb did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let moved = Command::new("xdotool")
        .args(["mousemove", "100", "100"])
        .env("DISPLAY", &display)
        .status()
        .expect("xdotool");
    assert!(moved.success());
    let just_after = source.idle_for().unwrap();
    assert!(just_after < Duration::from_millis(800), "{just_after:?}");
    assert!(in_use(&source, Duration::from_secs(1)));
    std::thread::sleep(Duration::from_millis(1300));
    let later = source.idle_for().unwrap();
    assert!(later >= Duration::from_secs(1), "{later:?}");
    assert!(!in_use(&source, Duration::from_secs(1)));
}
