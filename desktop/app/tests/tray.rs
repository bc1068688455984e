//! The real app and its tray, as a desktop shell sees them: the `commons` binary runs under Xvfb in a fresh session
//! bus and kernel keyring; `support/tray_host.py` is the shell (an org.kde.StatusNotifierWatcher) that the tray item
//! registers with. It reads the item's dbusmenu and clicks entries with dbusmenu `Event(id, "clicked")`; the app
//! donates to a real coordinator on loopback, pauses, resumes and quits.

use serde_json::Value;

#[path = "support/shell.rs"]
mod shell;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tray_menu_starts_pauses_resumes_and_quits() {
    let data = tempfile::tempdir().unwrap();
    let mut config = commons_coordinator::server::test_utils::config(data.path());
    config.heartbeat_interval_secs = 1;
    let server = commons_coordinator::Server::bind(config).await.unwrap();

    // The volunteer's settings: this coordinator, no containers or DHT (not what this test is about).
    let home = tempfile::tempdir().unwrap();
    let config_dir = home.path().join("config");
    std::fs::create_dir_all(config_dir.join("commons")).unwrap();
    std::fs::write(
        config_dir.join("commons").join("agent.toml"),
        format!(
            "coordinator_url = {:?}\ncontainers = false\ndht = false\nedge_url = \"http://127.0.0.1:9\"\n",
            server.url()
        ),
    )
    .unwrap();
    // Each click waits for the status line of the state it leads to (a joining app already shows Pause).
    let clicks = [
        "Start donating=>Donating: *",
        "notified=Commons is donating",
        "Pause=>Resume",
    ]
    .into_iter()
    .chain(["Resume=>Donating: *", "second", "quit-launch"])
    .map(String::from)
    .collect();
    let app = std::path::Path::new(env!("CARGO_BIN_EXE_commons"));
    let out = shell::run(home.path(), app, clicks).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ev = shell::events(&stdout);
    assert!(
        out.status.success(),
        "the shell failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let find = |kind: &'static str| ev.iter().filter(move |e| e["event"] == kind);

    // The item registered, with the menu the issue lists.
    let item = find("item").next().expect("the tray item registered");
    assert_eq!(item["title"], "commons");
    let menu: Vec<(String, bool)> = find("menu").next().unwrap()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e[0].as_str().unwrap().to_owned(), e[1].as_bool().unwrap()))
        .collect();
    let labels: Vec<&str> = menu.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(
        labels,
        [
            "Not donating: open Commons to start",
            "Start donating",
            "Pause for 1 hour",
            "Pause until tomorrow",
            "Open Commons",
            "Open the portal",
            concat!("Commons ", env!("CARGO_PKG_VERSION"), ": up to date"),
            "Quit"
        ]
    );
    assert!(!menu[0].1, "the status line is not clickable");
    assert!(!menu[6].1, "nothing to do while up to date");
    assert!(!menu[2].1 && !menu[3].1, "nothing to pause before donating");

    // Each click changed the state, and the status line says so.
    let clicked: Vec<&Value> = find("clicked").collect();
    assert_eq!(clicked.len(), 3, "{stdout}");
    let status_line = |i: usize| clicked[i]["now"][0].as_str().unwrap().to_owned();
    assert!(
        status_line(0).starts_with("Donating: "),
        "{}",
        status_line(0)
    );
    assert!(status_line(1).starts_with("Paused: "), "{}", status_line(1));
    assert!(
        status_line(2).starts_with("Donating: "),
        "{}",
        status_line(2)
    );

    // The volunteer heard that donating started, as a desktop notification (the shell is the notification server).
    let told = find("notification")
        .find(|n| n["summary"] == "Commons is donating")
        .expect("a notification that donating started");
    assert!(
        told["body"].as_str().unwrap().starts_with("Donating: "),
        "{told}"
    );

    // One instance only: a second launch hands over to the first (which opens its window) and exits.
    let second = find("second").next().expect("a second launch");
    assert_eq!(second["code"], 0, "{second}");
    assert_eq!(second["first_running"], true, "{second}");

    // `commons --quit` (what the uninstaller runs first): that launch ends at once, and the running app quits as
    // its Quit does (the same function): it exits and has unregistered.
    let exited = find("exited").next().expect("the app exited after Quit");
    assert_eq!(exited["code"], 0, "{exited}");
    assert_eq!(exited["launched"], 0, "{exited}");
    let registered_and_left = server.state().registry.all().is_empty();
    assert!(registered_and_left, "the worker unregistered on quit");
    server.shutdown().await.unwrap();
}
