//! The desktop app's window, end to end: the real `commons` binary under Xvfb with a session bus, driven through
//! WebDriver (tauri-driver over WebKitWebDriver) against a real coordinator on loopback. First run: the hardware and
//! Start donating (the coordinator typed under Advanced); the state becomes Donating, then Paused; screenshots of
//! the window go to the artifacts.

use std::path::PathBuf;
use std::time::Duration;

use commons_shared::api::ReportedStatus;
use commons_tests::Coordinator;
use commons_tests::browser::{Driver, click, screenshot, text_of, until};
use fantoccini::Locator;

/// The app binary, built next to this test (`cargo test --workspace` builds it; its window is embedded from
/// `desktop/app/ui`, which `cargo xtask desktop-ui` fills).
fn app_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let app = dir.join("commons");
    assert!(
        app.is_file(),
        "{} is missing: cargo build -p commons",
        app.display()
    );
    app
}

/// The state badge's text is `want`.
fn state_is(want: &str) -> String {
    format!("return document.getElementById('state')?.textContent === {want:?}")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_window_starts_donating_and_pauses_against_a_real_coordinator() {
    let app = app_binary();
    let c = Coordinator::start(|c, _| c.heartbeat_interval_secs = 1).await;
    // A volunteer's fresh home: no coordinator chosen yet (first run), no Docker, no DHT, an edge that is not there.
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("config");
    std::fs::create_dir_all(config.join("commons")).unwrap();
    std::fs::write(
        config.join("commons").join("agent.toml"),
        "containers = false\ndht = false\nedge_url = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let driver = Driver::tauri(home.path()).await;
    let w = driver.app(&app).await;

    // First run: the page (Yew) is up and lists this computer's hardware, with one button.
    let hardware = text_of(&w, "#hardware", 30).await;
    assert!(
        hardware.contains("CPU: ") && hardware.contains("Memory: "),
        "{hardware}"
    );
    assert!(until(&w, 5, &state_is("Not donating")).await);
    assert_eq!(w.title().await.unwrap(), "Commons");

    // A bad address under Advanced is refused in words; nothing starts.
    click(&w, "#advanced summary").await;
    let field = w.find(Locator::Css("#coordinator")).await.unwrap();
    field.send_keys("ftp://nowhere").await.unwrap();
    click(&w, "#start").await;
    let error = text_of(&w, "#error", 10).await;
    assert!(error.contains("is not a coordinator URL"), "{error}");
    assert!(c.server.state().registry.all().is_empty());

    // The real address: Start donating joins the coordinator and the state becomes Donating.
    field.clear().await.unwrap();
    field.send_keys(&c.url()).await.unwrap();
    click(&w, "#start").await;
    assert!(
        until(&w, 20, &state_is("Donating")).await,
        "the state is {:?}",
        text_of(&w, "#state", 1).await
    );
    assert_eq!(
        c.server.state().registry.all().len(),
        1,
        "one worker joined"
    );
    let tier = text_of(&w, "#tier", 5).await;
    assert!(["1", "2", "3"].contains(&tier.as_str()), "tier {tier:?}");
    // How the coordinator reaches this computer, in words: over its own connection, nothing to open.
    assert!(
        until(
            &w,
            10,
            "return (document.getElementById('reached')?.textContent || '').includes('own connection')"
        )
        .await,
        "reached: {:?}",
        text_of(&w, "#reached", 1).await
    );
    let shot = screenshot(&w, "desktop-window-donating").await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 1000);

    // Pause: the state becomes Paused, and the coordinator hears it.
    click(&w, "#toggle").await;
    assert!(until(&w, 10, &state_is("Paused")).await);
    assert!(
        until(
            &w,
            5,
            "return document.getElementById('toggle')?.textContent === 'Resume'"
        )
        .await
    );
    let paused = async {
        loop {
            let all = c.server.state().registry.all();
            if all
                .iter()
                .any(|w| w.live.lock().reported == ReportedStatus::Paused)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), paused)
        .await
        .expect("the coordinator sees the worker paused");
    screenshot(&w, "desktop-window-paused").await;

    // A rule changed in the window is saved to the volunteer's settings file and applied.
    click(&w, "#on_ac_power_only").await;
    assert!(until(&w, 10, "return !!document.getElementById('saved')").await);
    let saved = std::fs::read_to_string(config.join("commons").join("agent.toml")).unwrap();
    assert!(saved.contains("on_ac_power_only = true"), "{saved}");

    // Start at login: the checkbox writes an XDG autostart entry for this app (and removes it again).
    let entry = home.path().join(".config/autostart/commons.desktop");
    assert!(!entry.exists());
    click(&w, "#autostart").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !entry.exists() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = std::fs::read_to_string(&entry).expect("an autostart entry");
    assert!(text.contains(&format!("Exec={}", app.display())), "{text}");
    click(&w, "#autostart").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while entry.exists() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!entry.exists(), "unticked, the entry is gone");

    w.close().await.unwrap();
}
