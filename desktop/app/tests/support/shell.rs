//! Runs the app under `tray_host.py` (the desktop shell) in a desktop session of its own (`desktop-session`: Xvfb, a
//! session bus, a kernel keyring and an unlocked GNOME Keyring), with `home` as the volunteer's home.

use std::path::Path;

/// The shell's output: its JSON events on stdout (one per line), the app's log beside them.
pub async fn run(home: &Path, app: &Path, clicks: Vec<String>) -> std::process::Output {
    let (home, app) = (home.to_owned(), app.to_owned());
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/desktop-session"))
            .arg("/usr/bin/python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/tray_host.py"))
            .arg(&app)
            .args(clicks)
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("XDG_DATA_HOME", home.join("data"))
            .env("XDG_CACHE_HOME", home.join("cache"))
            .env("XDG_RUNTIME_DIR", home.join("runtime"))
            .env("HOME", &home)
            .env("RUST_LOG", "warn")
            .output()
            .expect("xvfb-run, keyutils, dbus, gnome-keyring and Debian's python3-dbus/python3-gi (.ci/setup installs them)")
    })
    .await
    .unwrap()
}

/// The shell's events.
pub fn events(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
