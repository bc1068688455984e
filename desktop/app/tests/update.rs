//! The app's updates against a real coordinator's feed. Through `Donor`: a signed release is fetched and verified and
//! the app offers "Restart to finish"; a tampered one is refused and shown as failed, the running version kept. End
//! to end: the real app built as 0.1.0 and 0.1.1 (`cargo xtask update-fixtures`), in its own desktop session with
//! `support/tray_host.py` as the shell, updates from its tray entry, restarts as 0.1.1 in the same process and
//! donates again.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use commons_agent::agent::State;
use commons_agent::credentials::FileStore;
use commons_agent::hardware::{NoGpu, RecordedProbe};
use commons_agent::settings::Settings;
use commons_agent::update::{Build, Updater};
use commons_coordinator::updates::{NewRelease, add};
use commons_desktop::donor::{Donor, UpdatePhase};

#[path = "support/shell.rs"]
mod shell;

fn minisign(args: &[&std::ffi::OsStr]) {
    let out = std::process::Command::new("minisign")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("minisign is installed (apt install minisign)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// Rewrites the published artifact and the checksum in its feed entry (a server that was tampered with).
fn serve_bytes(releases: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(releases.join(name), bytes).unwrap();
    let side = releases.join(format!("{name}.release.json"));
    let mut info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&side).unwrap()).unwrap();
    info["sha256"] = sha256_hex(bytes).into();
    std::fs::write(&side, serde_json::to_vec(&info).unwrap()).unwrap();
}

/// A coordinator on loopback serving `<data>/releases`.
async fn coordinator(data: &Path) -> (commons_coordinator::Server, std::path::PathBuf) {
    let releases = data.join("releases");
    let server = commons_coordinator::Server::bind({
        let mut c = commons_coordinator::server::test_utils::config(data);
        c.heartbeat_interval_secs = 1;
        c.releases_dir = Some(releases.clone());
        c
    })
    .await
    .unwrap();
    (server, releases)
}

/// Publishes `bytes` as the app's 0.1.1 for this platform, signed with `secret`, checked against `key`; its name.
fn publish(releases: &Path, work: &Path, bytes: &[u8], secret: &Path, key: &str) -> String {
    let platform = commons_shared::release::this_platform();
    let name = commons_shared::release::artifact_name("desktop", "0.1.1", &platform);
    let artifact = work.join(&name);
    std::fs::write(&artifact, bytes).unwrap();
    minisign(&[
        "-S".as_ref(),
        "-s".as_ref(),
        secret.as_os_str(),
        "-m".as_ref(),
        artifact.as_os_str(),
    ]);
    add(
        releases,
        key,
        &NewRelease {
            file: artifact,
            signature: None,
            product: "desktop".into(),
            version: "0.1.1".into(),
            channel: "stable".into(),
            platform,
            notes: "Faster start.".into(),
        },
    )
    .unwrap();
    name
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_release_is_verified_and_offered_for_restart_and_a_tampered_one_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let (server, releases) = coordinator(data.path()).await;

    // The release key (throw-away) and a signed 0.1.1 of the app, published.
    let work = tempfile::tempdir().unwrap();
    let (public, secret) = (work.path().join("k.pub"), work.path().join("k.key"));
    minisign(&[
        "-G".as_ref(),
        "-W".as_ref(),
        "-p".as_ref(),
        public.as_os_str(),
        "-s".as_ref(),
        secret.as_os_str(),
    ]);
    let good = b"#!/bin/sh\necho 'Commons 0.1.1'\n".to_vec();
    let key = std::fs::read_to_string(&public).unwrap();
    let name = publish(&releases, work.path(), &good, &secret, &key);
    // The app 0.1.0, installed in a folder the volunteer owns, donating to that coordinator.
    let home = tempfile::tempdir().unwrap();
    let exe = home.path().join("commons");
    std::fs::write(&exe, b"the running app").unwrap();
    let settings_path = home.path().join("agent.toml");
    let base = Settings {
        containers: false,
        dht: false,
        edge_url: "http://127.0.0.1:9".into(),
        control_socket: Some(home.path().join("control.sock")),
        ..Settings::default()
    };
    std::fs::write(&settings_path, toml::to_string(&base).unwrap()).unwrap();
    let build = Build {
        product: "desktop",
        version: "0.1.0".into(),
        key,
    };
    let donor = Donor::new(
        settings_path,
        Arc::new(FileStore::new(home.path().join("creds.json"))),
        Arc::new(RecordedProbe(Err(NoGpu("no NVIDIA driver".into())))),
    )
    .with_updater(Updater::new(
        build,
        "stable",
        exe.clone(),
        home.path().join("update.json"),
    ));
    donor.start(Some(server.url()), None).await.unwrap();
    let mut state = donor.watch();
    tokio::time::timeout(
        Duration::from_secs(15),
        state.wait_for(|s| *s == State::Active),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(donor.status().await.update.phase, UpdatePhase::UpToDate);

    // Tampered on the server (checksum made to match): refused, nothing staged, the app keeps its binary.
    let mut bad = good.clone();
    bad[12] ^= 1;
    serve_bytes(&releases, &name, &bad);
    donor.check_update().await;
    let u = donor.status().await.update;
    assert_eq!(u.phase, UpdatePhase::Failed, "{u:?}");
    assert!(u.detail.unwrap().contains("tampered"));
    assert_eq!(u.version.as_deref(), Some("0.1.1"));
    assert_eq!(std::fs::read(&exe).unwrap(), b"the running app");
    assert!(
        donor.restart_to_update().await.is_err(),
        "nothing to restart into"
    );

    // Served intact: fetched, verified, and waiting for Restart to finish; the tray entry says so.
    serve_bytes(&releases, &name, &good);
    donor.check_update().await;
    let u = donor.status().await.update;
    assert_eq!(u.phase, UpdatePhase::Restart, "{u:?}");
    assert_eq!(u.running, "0.1.0");
    assert_eq!(u.detail.as_deref(), Some("Faster start."));
    assert_eq!(
        u.tray_entry(),
        ("Restart to finish the update to 0.1.1".to_owned(), true)
    );
    // Staged beside the binary, not yet swapped in.
    assert_eq!(std::fs::read(&exe).unwrap(), b"the running app");
    let staged: Vec<_> = std::fs::read_dir(home.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".commons-update-")
        })
        .collect();
    assert_eq!(staged.len(), 1);
    assert_eq!(std::fs::read(staged[0].path()).unwrap(), good);
    donor.quit(Duration::from_secs(10)).await;
}

/// `$CARGO_TARGET_DIR/update-fixtures` (`cargo xtask update-fixtures`), from this test binary's place.
fn fixtures() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.ancestors().nth(3).unwrap().join("update-fixtures");
    assert!(
        dir.join("commons-desktop-0.1.1").is_file(),
        "{} lacks the app's builds: run `cargo xtask update-fixtures` first (.ci/test does)",
        dir.display()
    );
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_app_updates_from_its_tray_restarts_and_donates_as_the_new_version() {
    let fx = fixtures();
    let data = tempfile::tempdir().unwrap();
    let (server, releases) = coordinator(data.path()).await;
    // 0.1.1 of the app, signed with the key the fixture builds carry, published.
    let work = tempfile::tempdir().unwrap();
    publish(
        &releases,
        work.path(),
        &std::fs::read(fx.join("commons-desktop-0.1.1")).unwrap(),
        &fx.join("test-release.key"),
        &std::fs::read_to_string(fx.join("test-release.pub")).unwrap(),
    );

    // The volunteer's 0.1.0, in a folder of their own, set up to donate to this coordinator.
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("bin")).unwrap();
    let app = home.path().join("bin/commons");
    std::fs::copy(fx.join("commons-desktop-0.1.0"), &app).unwrap();
    let config_dir = home.path().join("config/commons");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("agent.toml"),
        format!(
            "coordinator_url = {:?}\ncontainers = false\ndht = false\nedge_url = \"http://127.0.0.1:9\"\n",
            server.url()
        ),
    )
    .unwrap();
    let restart = "Restart to finish the update to 0.1.1";
    let clicks = vec![
        "Start donating=>Pause".to_owned(),
        "notified=Commons is donating".to_owned(),
        format!("wait={restart}"),
        format!("restart={restart}=>Commons 0.1.1: up to date"),
        // Donating again by itself, as the volunteer left it: a second "donating" notification.
        "notified=Commons is donating".to_owned(),
    ];
    let out = shell::run(home.path(), &app, clicks).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the shell failed: {stdout}\n{stderr}");
    let events = shell::events(&stdout);
    let first = events.iter().find(|e| e["event"] == "registered").unwrap();
    let restarted = events
        .iter()
        .find(|e| e["event"] == "restarted")
        .unwrap_or_else(|| panic!("{stdout}"));
    // The same process became the new version (exec), and its tray came back.
    assert_eq!(restarted["pid"], first["pid"]);
    assert_eq!(restarted["running"], true);
    // The trial ran the new binary before the switch (the app logs to stdout).
    assert!(
        stdout.contains("the new version is healthy"),
        "{stdout}\n{stderr}"
    );
    let notified = events
        .iter()
        .filter(|e| e["event"] == "notification" && e["summary"] == "Commons is donating")
        .count();
    assert_eq!(
        notified, 2,
        "donating, then donating again after the restart: {stdout}"
    );
    // The binary in place is 0.1.1, the old one kept beside it; the coordinator heard the new version.
    assert!(
        std::fs::read(&app).unwrap() == std::fs::read(fx.join("commons-desktop-0.1.1")).unwrap()
    );
    assert!(
        std::fs::read(home.path().join("bin/commons.previous")).unwrap()
            == std::fs::read(fx.join("commons-desktop-0.1.0")).unwrap()
    );
    let list: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/admin/workers", server.url()))
        .bearer_auth(commons_coordinator::server::test_utils::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let workers = list["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{list}");
    assert_eq!(workers[0]["agent_version"], "0.1.1");
}
