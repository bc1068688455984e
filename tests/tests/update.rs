//! Signed self-updates of the headless agent, end to end: the real `commons-agent` built as 0.1.0 and 0.1.1 (with a
//! throw-away release key compiled in: `cargo xtask update-fixtures`), releases signed by the `minisign` tool and
//! published through the real `commons-coordinator release add`, the feed served by a real coordinator on loopback.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use commons_tests::Coordinator;
use serde_json::Value;

const PLATFORM: &str = "linux-x86_64";

/// `$CARGO_TARGET_DIR/<dir>`, from this test binary's place (`…/debug/deps/update-…`).
fn target(dir: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().join(dir)
}

fn fixtures() -> PathBuf {
    let dir = target("update-fixtures");
    assert!(
        dir.join("commons-agent-0.1.1").is_file(),
        "{} lacks the agent builds: run `cargo xtask update-fixtures` first (.ci/test does)",
        dir.display()
    );
    dir
}

fn coordinator_bin() -> PathBuf {
    let bin = target("debug").join("commons-coordinator");
    assert!(
        bin.is_file(),
        "{} is missing: cargo build -p commons-coordinator",
        bin.display()
    );
    bin
}

/// Signs `file` with the minisign secret key `key` (its default trusted comment names the file).
fn sign(file: &Path, key: &Path) {
    let out = std::process::Command::new("minisign")
        .arg("-S")
        .arg("-s")
        .arg(key)
        .arg("-m")
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .expect("minisign is installed (apt install minisign)");
    assert!(
        out.status.success(),
        "minisign: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A signed artifact for `version`: `bytes` under the name the signature must carry, in `dir`.
fn artifact(dir: &Path, version: &str, bytes: &[u8], key: &Path) -> PathBuf {
    let file = dir.join(format!("commons-agent-{version}-{PLATFORM}"));
    std::fs::write(&file, bytes).unwrap();
    sign(&file, key);
    file
}

/// `commons-coordinator release add` into `releases`, trusting `key`.
fn release_add(releases: &Path, file: &Path, version: &str, key: &Path) -> std::process::Output {
    std::process::Command::new(coordinator_bin())
        .args(["release", "add"])
        .arg(file)
        .args([
            "--version",
            version,
            "--channel",
            "stable",
            "--platform",
            PLATFORM,
        ])
        .args(["--notes", "test release"])
        .arg("--releases-dir")
        .arg(releases)
        .arg("--release-key")
        .arg(key)
        .output()
        .unwrap()
}

fn publish(releases: &Path, file: &Path, version: &str, key: &Path) {
    let out = release_add(releases, file, version, key);
    assert!(
        out.status.success(),
        "release add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A coordinator serving `releases/` from its data dir.
async fn coordinator() -> (Coordinator, PathBuf) {
    let c = Coordinator::start(|cfg, dir| {
        cfg.releases_dir = Some(dir.join("releases"));
        cfg.heartbeat_interval_secs = 1;
    })
    .await;
    let releases = c.dir.path().join("releases");
    (c, releases)
}

/// A coordinator offering the agent build 0.1.1, signed with the release key the fixtures carry.
async fn coordinator_offering_0_1_1() -> Coordinator {
    let fx = fixtures();
    let (c, releases) = coordinator().await;
    let work = tempfile::tempdir().unwrap();
    let new = artifact(
        work.path(),
        "0.1.1",
        &std::fs::read(fx.join("commons-agent-0.1.1")).unwrap(),
        &fx.join("test-release.key"),
    );
    publish(&releases, &new, "0.1.1", &fx.join("test-release.pub"));
    c
}

/// A volunteer's server: a copy of an agent build in a writable folder, running against `c`.
struct Volunteer {
    dir: tempfile::TempDir,
    exe: PathBuf,
    child: tokio::process::Child,
}

impl Volunteer {
    fn start(version: &str, c: &Coordinator) -> Self {
        Self::start_in(version, c, false, false)
    }

    /// With `read_only`, the binary's folder is mounted read-only for the agent (in a mount namespace of its own),
    /// as /usr/bin is for a system package's binary; with `paused`, it starts paused by the volunteer (as after an
    /// update's restart while paused).
    fn start_in(version: &str, c: &Coordinator, read_only: bool, paused: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        let exe = dir.path().join("bin/commons-agent");
        std::fs::copy(fixtures().join(format!("commons-agent-{version}")), &exe).unwrap();
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "coordinator_url = {:?}\ncontainers = false\ndht = false\nupdate_deadline_secs = 30\nupdate_state = {:?}\n",
                c.url(),
                dir.path().join("update.json")
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let mut cmd = if read_only {
            let mut c = tokio::process::Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "sh", "-c"])
                .arg(r#"mount -o bind,ro "$0" "$0" && exec "$@""#)
                .arg(dir.path().join("bin"))
                .arg(&exe);
            c
        } else {
            tokio::process::Command::new(&exe)
        };
        let child = cmd
            .arg("--config")
            .arg(&config)
            .arg("--credentials-file")
            .arg(dir.path().join("credentials.json"))
            .arg("--control-socket")
            .arg(dir.path().join("agent.sock"))
            .arg("run")
            .env("NO_COLOR", "1")
            .env("COMMONS_START_PAUSED", if paused { "1" } else { "0" })
            .env_remove("RUST_LOG")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Self { dir, exe, child }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Waits for `needle` in the log.
    async fn wait_log(&self, needle: &str) -> String {
        for _ in 0..300 {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no {needle:?} in the agent's log:\n{}", self.log());
    }

    /// What `--version` of the binary now in place says.
    fn installed_version(&self) -> String {
        let out = std::process::Command::new(&self.exe)
            .arg("--version")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn still_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

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
    let feed: Value = reqwest::get(format!("{}/api/updates/agent/stable/{PLATFORM}", c.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
        .arg("status")
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

#[tokio::test]
async fn a_tampered_artifact_is_refused() {
    let fx = fixtures();
    refused(
        "0.1.0",
        "does not match the file (tampered",
        |releases, work| {
            let file = artifact(
                work,
                "0.1.1",
                b"#!/bin/sh\nexit 0\n",
                &fx.join("test-release.key"),
            );
            publish(releases, &file, "0.1.1", &fx.join("test-release.pub"));
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
    let fx = fixtures();
    refused("0.1.0", "checksum mismatch", |releases, work| {
        let file = artifact(
            work,
            "0.1.1",
            b"#!/bin/sh\nexit 0\n",
            &fx.join("test-release.key"),
        );
        publish(releases, &file, "0.1.1", &fx.join("test-release.pub"));
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
