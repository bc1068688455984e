//! The shell's wiring, through `tauri::test::mock_builder`: the window's commands reach a real agent that joins a
//! real coordinator on loopback, and its errors reach the page as `{error, message}`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use commons_agent::credentials::FileStore;
use commons_agent::hardware::{NoGpu, RecordedProbe};
use commons_agent::settings::Settings;
use commons_desktop::donor::Donor;
use commons_shared::desktop::WindowCommand;
use serde_json::{Value, json};
use tauri::ipc::{CallbackFn, InvokeBody};
use tauri::test::{
    INVOKE_KEY, MockRuntime, get_ipc_response, mock_builder, mock_context, noop_assets,
};
use tauri::webview::InvokeRequest;
use tauri::{WebviewWindow, WebviewWindowBuilder};

/// What the window does: one of its commands, by the name and arguments it sends.
fn invoke(w: &WebviewWindow<MockRuntime>, cmd: &WindowCommand) -> Result<Value, Value> {
    get_ipc_response(
        w,
        InvokeRequest {
            cmd: cmd.name().into(),
            callback: CallbackFn(0),
            error: CallbackFn(1),
            url: "tauri://localhost".parse().unwrap(),
            body: InvokeBody::Json(cmd.args()),
            headers: Default::default(),
            invoke_key: INVOKE_KEY.to_string(),
        },
    )
    .map(|b| b.deserialize::<Value>().unwrap())
}

/// New caps and rules, from their JSON (edited as the window's form would).
fn set_limits(limits: &Value) -> WindowCommand {
    WindowCommand::SetLimits(serde_json::from_value(limits.clone()).unwrap())
}

fn state_of(w: &WebviewWindow<MockRuntime>) -> String {
    invoke(w, &WindowCommand::Status).unwrap()["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn eventually(w: &WebviewWindow<MockRuntime>, state: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if state_of(w) == state {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn commands_drive_a_real_agent_against_a_real_coordinator() {
    // A coordinator on its own runtime, as a separate process would be.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let data = tempfile::tempdir().unwrap();
    let server = rt
        .block_on(commons_coordinator::Server::bind({
            let mut c = commons_coordinator::server::test_utils::config(data.path());
            c.heartbeat_interval_secs = 1;
            c
        }))
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let settings_path = dir.path().join("agent.toml");
    let base = Settings {
        containers: false,
        dht: false,
        edge_url: "http://127.0.0.1:9".into(),
        control_socket: Some(dir.path().join("control.sock")),
        ..Settings::default()
    };
    std::fs::write(&settings_path, toml::to_string(&base).unwrap()).unwrap();
    let donor = Arc::new(Donor::new(
        settings_path.clone(),
        Arc::new(FileStore::new(dir.path().join("creds.json"))),
        Arc::new(RecordedProbe(Err(NoGpu("no NVIDIA driver".into())))),
    ));
    let app = commons_desktop::run_app(mock_builder(), donor.clone(), false)
        .build(mock_context(noop_assets()))
        .unwrap();
    let w = WebviewWindowBuilder::new(&app, "main", Default::default())
        .build()
        .unwrap();

    // Before anything: stopped, the hardware is there, and pausing says what to do first.
    assert_eq!(state_of(&w), "stopped");
    let hw = invoke(&w, &WindowCommand::Detect).unwrap();
    assert!(
        hw["capabilities"]["cpu"]["cores"].as_u64().unwrap() >= 1,
        "{hw}"
    );
    assert!(
        hw["no_gpu"].as_str().unwrap().contains("no NVIDIA driver"),
        "{hw}"
    );
    let err = invoke(&w, &WindowCommand::Pause { minutes: None }).unwrap_err();
    assert_eq!(err["error"], "not_started", "{err}");
    assert!(err["message"].as_str().unwrap().contains("Start donating"));
    // A bad URL is refused in words, and nothing is saved.
    let err = invoke(
        &w,
        &WindowCommand::StartDonating {
            coordinator: Some("ftp://example".into()),
            enrollment_token: None,
        },
    )
    .unwrap_err();
    assert_eq!(err["error"], "invalid", "{err}");
    assert!(
        Settings::load(&settings_path)
            .unwrap()
            .coordinator_url
            .is_none()
    );

    // Start donating: the coordinator is saved, the agent joins and becomes active.
    let s = invoke(
        &w,
        &WindowCommand::StartDonating {
            coordinator: Some(server.url()),
            enrollment_token: None,
        },
    )
    .unwrap();
    assert_ne!(s["state"], "error", "{s}");
    assert_eq!(
        Settings::load(&settings_path).unwrap().coordinator_url,
        Some(server.url())
    );
    assert!(
        eventually(&w, "active"),
        "the agent became {}",
        state_of(&w)
    );
    let s = invoke(&w, &WindowCommand::Status).unwrap();
    assert_eq!(s["coordinator_url"], server.url());
    assert!(
        s["summary"].as_str().unwrap().starts_with("Donating: "),
        "{s}"
    );
    let workers = server.state().registry.all().len();
    assert_eq!(workers, 1);
    let err = invoke(
        &w,
        &WindowCommand::StartDonating {
            coordinator: None,
            enrollment_token: None,
        },
    )
    .unwrap_err();
    assert_eq!(err["error"], "already_started");

    assert_eq!(
        s["tier"].as_u64().map(|t| (1..=3).contains(&t)),
        Some(true),
        "{s}"
    );

    // The caps and rules: read, refused in words when out of range (nothing saved), applied live when valid. A
    // schedule window that excludes now holds donating back at once, with the reason; clearing it donates again.
    let limits = invoke(&w, &WindowCommand::Limits).unwrap();
    assert_eq!(limits["cpu_percent"], 50, "{limits}");
    let mut bad = limits.clone();
    bad["cpu_percent"] = json!(0);
    let err = invoke(&w, &set_limits(&bad)).unwrap_err();
    assert_eq!(err["error"], "invalid", "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("cpu_percent"),
        "{err}"
    );
    assert_eq!(Settings::load(&settings_path).unwrap().cpu_percent, 50);
    let later = (commons_agent::schedule::local_minute() + 120) % 1440;
    let window = format!(
        "{:02}:{:02}-{:02}:{:02}",
        later / 60,
        later % 60,
        (later + 60) % 1440 / 60,
        later % 60
    );
    let mut held = limits.clone();
    held["cpu_percent"] = json!(25);
    held["gpu_percent"] = json!(60);
    held["models_disk_mb"] = json!(4096);
    held["schedule"] = json!([window]);
    let saved = invoke(&w, &set_limits(&held)).unwrap();
    assert_eq!(saved["cpu_percent"], 25);
    let on_disk = Settings::load(&settings_path).unwrap();
    assert_eq!(
        (
            on_disk.cpu_percent,
            on_disk.gpu_percent,
            on_disk.models_disk_mb,
            on_disk.schedule.clone()
        ),
        (25, 60, 4096, vec![window])
    );
    assert_eq!(
        on_disk.coordinator_url,
        Some(server.url()),
        "the rest of the file is kept"
    );
    assert!(
        eventually(&w, "paused"),
        "outside the schedule: {}",
        state_of(&w)
    );
    let s = invoke(&w, &WindowCommand::Status).unwrap();
    assert_eq!(s["held"], "outside the donation schedule", "{s}");
    let mut always = saved.clone();
    always["schedule"] = json!([]);
    invoke(&w, &set_limits(&always)).unwrap();
    assert!(eventually(&w, "active"), "no schedule: {}", state_of(&w));
    assert!(invoke(&w, &WindowCommand::Status).unwrap()["held"].is_null());

    // Pause for a while, then resume.
    let s = invoke(&w, &WindowCommand::Pause { minutes: Some(60) }).unwrap();
    assert!(s["paused_until"].is_string(), "{s}");
    assert!(eventually(&w, "paused"));
    invoke(&w, &WindowCommand::Resume).unwrap();
    assert!(eventually(&w, "active"));

    // Quit (the tray's): unregistered, stopped.
    rt.block_on(donor.quit(Duration::from_secs(10)));
    assert_eq!(state_of(&w), "stopped");
    let left = server.state().registry.all().len();
    assert_eq!(left, 0, "quitting unregisters");
    // The time donated adds up over runs: it is kept next to the settings.
    let kept: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("donated.json")).unwrap())
            .unwrap();
    assert!(kept["donated_secs"].is_u64(), "{kept}");
    rt.block_on(server.shutdown()).unwrap();
}
