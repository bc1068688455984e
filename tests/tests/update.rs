//! Signed self-updates of the headless agent, end to end: the real `commons-agent` built as 0.1.0 and 0.1.1 (with a
//! throw-away release key compiled in: `cargo xtask update-fixtures`), releases signed by the `minisign` tool and
//! published through the real `commons-coordinator release add`, the feed served by a real coordinator on loopback.

use std::path::{Path, PathBuf};
use std::time::Duration;

use commons_tests::Coordinator;
use commons_tests::update::*;
use serde_json::Value;

/// The versions the coordinator's workers report, once every worker has heartbeated.
async fn fleet(c: &Coordinator) -> Vec<(String, String)> {
    let list: Value = c.admin(&reqwest::Client::new(), "/api/admin/workers").await;
    list["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["worker_id"].as_str().unwrap().to_owned(),
                w["agent_version"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The agent's stable feed for `platform`, as the coordinator serves it.
async fn stable_feed(c: &Coordinator, platform: &str) -> Value {
    reqwest::get(format!("{}/api/updates/agent/stable/{platform}", c.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits until the only worker reports `version`; returns its id.
async fn reports(c: &Coordinator, version: &str) -> String {
    let mut last = Vec::new();
    for _ in 0..300 {
        last = fleet(c).await;
        if let [(id, v)] = last.as_slice()
            && v == version
        {
            return id.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the fleet never reported only {version}: {last:?}");
}

#[tokio::test]
async fn the_agent_updates_itself_to_a_signed_release_restarts_and_reports_it() {
    let c = coordinator_offering_0_1_1().await;
    let feed = stable_feed(&c, PLATFORM).await;
    assert_eq!(feed["latest"]["version"], "0.1.1");
    assert_eq!(feed["latest"]["notes"], "test release");

    let mut v = Volunteer::start("0.1.0", &c);
    let pid = v.child.id();
    let log = v.wait_log("updated from=0.1.0 to=0.1.1").await;
    let id = reports(&c, "0.1.1").await;
    assert!(log.contains("the new version is healthy"), "{log}");
    assert_eq!(v.installed_version(), "commons-agent 0.1.1");
    // The same process (exec'd, as a service manager would want), still the same worker, still running.
    assert_eq!(v.child.id(), pid);
    assert!(v.still_running(), "{}", v.log());
    assert_eq!(fleet(&c).await, vec![(id, "0.1.1".to_owned())]);
    let previous = std::process::Command::new(format!("{}.previous", v.exe.display()))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&previous.stdout).trim(),
        "commons-agent 0.1.0"
    );
}

#[tokio::test]
async fn a_paused_agent_updates_and_stays_paused() {
    let c = coordinator_offering_0_1_1().await;
    let mut v = Volunteer::start_in("0.1.0", &c, false, true);
    v.wait_log("updated from=0.1.0 to=0.1.1").await;
    reports(&c, "0.1.1").await;
    assert!(v.still_running(), "{}", v.log());
    // The volunteer's pause survived the restart: the coordinator hears "paused", the control socket says so.
    let mut status = Value::Null;
    for _ in 0..100 {
        let list: Value = c.admin(&reqwest::Client::new(), "/api/admin/workers").await;
        status = list["workers"][0]["status"].clone();
        if status == "paused" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "paused");
    let out = tokio::process::Command::new(&v.exe)
        .arg("--control-socket")
        .arg(v.dir.path().join("agent.sock"))
        .args(["status", "--json"])
        .output()
        .await
        .unwrap();
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["session"]["paused"], true, "{st}");
    assert_eq!(st["state"]["state"], "paused", "{st}");
}

/// Starts `running` against a feed prepared by `prepare`, waits for `refusal` in its log, and checks that nothing
/// changed: the same binary, still running, still reporting its version.
async fn refused(running: &str, refusal: &str, prepare: impl FnOnce(&Path, &Path)) -> String {
    let (c, releases) = coordinator().await;
    let work = tempfile::tempdir().unwrap();
    prepare(&releases, work.path());
    let mut v = Volunteer::start(running, &c);
    let log = v.wait_log(refusal).await;
    reports(&c, running).await;
    assert!(log.contains(&format!("{running} keeps running")), "{log}");
    assert_eq!(v.installed_version(), format!("commons-agent {running}"));
    assert!(!Path::new(&format!("{}.previous", v.exe.display())).exists());
    assert!(v.still_running(), "{log}");
    log
}

fn sidecar(releases: &Path, version: &str) -> PathBuf {
    releases.join(format!("commons-agent-{version}-{PLATFORM}.release.json"))
}

fn edit_sidecar(releases: &Path, version: &str, f: impl FnOnce(&mut Value)) {
    let path = sidecar(releases, version);
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[tokio::test]
async fn an_artifact_signed_with_another_key_is_refused_by_the_coordinator_and_the_agent() {
    let fx = fixtures();
    refused(
        "0.1.0",
        "signature was made with another key",
        |releases, work| {
            let other = (work.join("other.pub"), work.join("other.key"));
            let out = std::process::Command::new("minisign")
                .args(["-G", "-W", "-p"])
                .arg(&other.0)
                .arg("-s")
                .arg(&other.1)
                .output()
                .unwrap();
            assert!(out.status.success());
            let file = artifact(work, "0.1.1", b"#!/bin/sh\nexit 0\n", &other.1);
            // A coordinator that trusts the release key refuses it and publishes nothing...
            let out = release_add(releases, &file, "0.1.1", &fx.join("test-release.pub"));
            assert!(!out.status.success());
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("another key"), "{err}");
            assert!(!sidecar(releases, "0.1.1").exists());
            // ...one that was made to trust another key publishes it, and the agent, which carries its own key, refuses.
            publish(releases, &file, "0.1.1", &other.0);
        },
    )
    .await;
}

/// Publishes a small script as 0.1.1, signed with the fixtures' key.
fn publish_script(releases: &Path, work: &Path) {
    let fx = fixtures();
    let file = artifact(
        work,
        "0.1.1",
        b"#!/bin/sh\nexit 0\n",
        &fx.join("test-release.key"),
    );
    publish(releases, &file, "0.1.1", &fx.join("test-release.pub"));
}

#[tokio::test]
async fn a_tampered_artifact_is_refused() {
    refused(
        "0.1.0",
        "does not match the file (tampered",
        |releases, work| {
            publish_script(releases, work);
            // One byte changed on the server, and the checksum in the feed updated to match: only the signature can tell.
            let stored = releases.join(format!("commons-agent-0.1.1-{PLATFORM}"));
            let mut bytes = std::fs::read(&stored).unwrap();
            bytes[10] ^= 1;
            std::fs::write(&stored, &bytes).unwrap();
            let sha = {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(&bytes))
            };
            edit_sidecar(releases, "0.1.1", |v| v["sha256"] = sha.into());
        },
    )
    .await;
}

#[tokio::test]
async fn a_wrong_checksum_is_refused() {
    refused("0.1.0", "checksum mismatch", |releases, work| {
        publish_script(releases, work);
        edit_sidecar(releases, "0.1.1", |v| v["sha256"] = "ab".repeat(32).into());
    })
    .await;
}

#[tokio::test]
async fn a_downgrade_is_refused() {
    let fx = fixtures();
    refused("0.1.1", "refusing a downgrade", |releases, work| {
        let old = artifact(
            work,
            "0.1.0",
            &std::fs::read(fx.join("commons-agent-0.1.0")).unwrap(),
            &fx.join("test-release.key"),
        );
        publish(releases, &old, "0.1.0", &fx.join("test-release.pub"));
    })
    .await;
}

#[tokio::test]
async fn a_new_version_that_crashes_at_start_is_rolled_back_and_marked_bad() {
    let fx = fixtures();
    let (c, releases) = coordinator().await;
    let work = tempfile::tempdir().unwrap();
    let broken = artifact(
        work.path(),
        "0.1.2",
        b"#!/bin/sh\necho 'broken build' >&2\nexit 3\n",
        &fx.join("test-release.key"),
    );
    publish(&releases, &broken, "0.1.2", &fx.join("test-release.pub"));
    let mut v = Volunteer::start("0.1.0", &c);
    let pid = v.child.id();
    let log = v
        .wait_log("rolled back to 0.1.0 and marked 0.1.2 bad")
        .await;
    assert!(
        log.contains("broken build"),
        "the trial ran the new binary: {log}"
    );
    assert!(log.contains("exit status: 3"), "{log}");
    // The old binary is back, running in the same process, heard by the coordinator.
    assert_eq!(v.installed_version(), "commons-agent 0.1.0");
    assert_eq!(v.child.id(), pid);
    reports(&c, "0.1.0").await;
    let record: Value =
        serde_json::from_slice(&std::fs::read(v.dir.path().join("update.json")).unwrap()).unwrap();
    assert_eq!(record["bad"], serde_json::json!(["0.1.2"]));
    // After the restart the bad version is not tried again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(v.still_running(), "{}", v.log());
    assert_eq!(
        v.log().matches("trying the new version").count(),
        1,
        "{}",
        v.log()
    );
}

#[tokio::test]
async fn a_binary_it_cannot_replace_is_left_alone_and_the_package_is_named() {
    let fx = fixtures();
    let (c, releases) = coordinator().await;
    let work = tempfile::tempdir().unwrap();
    let key = fx.join("test-release.key");
    let new = artifact(work.path(), "0.1.1", b"#!/bin/sh\nexit 0\n", &key);
    publish(&releases, &new, "0.1.1", &fx.join("test-release.pub"));
    let deb = work
        .path()
        .join(format!("commons-agent-0.1.1-{PLATFORM}.deb"));
    std::fs::write(&deb, b"a Debian package").unwrap();
    sign(&deb, &key);
    let out = std::process::Command::new(coordinator_bin())
        .args(["release", "add"])
        .arg(&deb)
        .args([
            "--version",
            "0.1.1",
            "--platform",
            &format!("{PLATFORM}-deb"),
        ])
        .arg("--releases-dir")
        .arg(&releases)
        .arg("--release-key")
        .arg(fx.join("test-release.pub"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut v = Volunteer::start_in("0.1.0", &c, true, false);
    let log = v.wait_log("cannot replace itself").await;
    assert!(
        log.contains(&format!(
            "install the new package instead: {}/releases/commons-agent-0.1.1-{PLATFORM}.deb",
            c.url()
        )),
        "{log}"
    );
    assert!(log.contains("0.1.0 keeps running"), "{log}");
    reports(&c, "0.1.0").await;
    assert_eq!(v.installed_version(), "commons-agent 0.1.0");
    assert!(v.still_running(), "{log}");
}

/// The Windows agent (cross-built by `cargo xtask update-fixtures --windows`) under Wine updates itself from the feed's
/// Windows release: the running .exe moves aside (Windows cannot overwrite it), the new one goes in its place and,
/// Windows having no exec, is started as a new process that reports the new version as the same worker.
#[tokio::test]
#[ignore = "run by .ci/windows, under Wine, with the Windows fixtures it builds"]
async fn a_windows_agent_under_wine_updates_itself_to_a_signed_release() {
    let fx = fixtures();
    let (c, releases) = coordinator().await;
    let work = tempfile::tempdir().unwrap();
    let new = std::fs::read(fx.join("windows/commons-agent-0.1.1.exe")).unwrap();
    let file = artifact_for(
        work.path(),
        WINDOWS,
        "0.1.1",
        &new,
        &fx.join("test-release.key"),
    );
    publish_for(
        &releases,
        WINDOWS,
        &file,
        "0.1.1",
        &fx.join("test-release.pub"),
    );
    let feed = stable_feed(&c, WINDOWS).await;
    assert_eq!(feed["latest"]["version"], "0.1.1");

    let v = Volunteer::start_windows("0.1.0", &c);
    let log = v.wait_log("updated from=0.1.0 to=0.1.1").await;
    assert!(log.contains("the new version is healthy"), "{log}");
    // One worker only: the new process carried on as the worker the old one registered.
    let id = reports(&c, "0.1.1").await;
    assert_eq!(v.installed_version(), "commons-agent 0.1.1");
    assert_eq!(std::fs::read(&v.exe).unwrap(), new);
    let previous = PathBuf::from(format!("{}.previous", v.exe.display()));
    assert_eq!(
        std::fs::read(&previous).unwrap(),
        std::fs::read(fx.join("windows/commons-agent-0.1.0.exe")).unwrap()
    );
    // Still the one worker, heartbeating from the new process.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(fleet(&c).await, vec![(id, "0.1.1".to_owned())]);
}
