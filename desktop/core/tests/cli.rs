//! The `commons-agent` binary: detect, and a run that SIGTERM ends cleanly.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use commons_coordinator::server::test_utils::{ADMIN_TOKEN, config};

const BIN: &str = env!("CARGO_BIN_EXE_commons-agent");

#[test]
fn detect_prints_a_table_and_json() {
    let out = Command::new(BIN)
        .args(["detect"])
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("CPU") && text.contains("Memory") && text.contains("GPU"),
        "{text}"
    );
    let out = Command::new(BIN)
        .args(["detect", "--json"])
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .output()
        .unwrap();
    let caps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(caps["cpu"]["cores"].as_u64().unwrap() >= 1);
    assert!(caps["memory_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn bad_settings_and_no_agent_are_sentences_and_a_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "max_gpu_temp_c = 300\n").unwrap();
    let out = Command::new(BIN)
        .args(["--config"])
        .arg(&cfg)
        .arg("detect")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("max_gpu_temp_c: must be from 40 to 100")
    );
    let out = Command::new(BIN)
        .args(["--control-socket"])
        .arg(dir.path().join("none.sock"))
        .arg("status")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no agent is running"));
    // A CA file to trust that cannot be used stops it with the reason.
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate\n").unwrap();
    let out = Command::new(BIN)
        .env("COMMONS_CA_FILE", &ca)
        .arg("status")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("ca.pem holds no certificate"), "{said}");
}

#[tokio::test]
async fn sigterm_is_a_graceful_quit() {
    let dir = tempfile::tempdir().unwrap();
    let server = commons_coordinator::Server::bind(config(&dir.path().join("coord")))
        .await
        .unwrap();
    let sock = dir.path().join("agent.sock");
    let creds = dir.path().join("creds.json");
    // Containers are the container tests' business; here the engine may be absent or present.
    std::fs::write(dir.path().join("agent.toml"), "containers = false\n").unwrap();
    let mut child = Command::new(BIN)
        .args(["--config"])
        .arg(dir.path().join("agent.toml"))
        .arg("--credentials-file")
        .arg(&creds)
        .arg("--control-socket")
        .arg(&sock)
        .args(["run", "--coordinator", &server.url()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until it is active, through its own CLI.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut id = String::new();
    while Instant::now() < deadline {
        let out = Command::new(BIN)
            .arg("--control-socket")
            .arg(&sock)
            .args(["status", "--json"])
            .output()
            .unwrap();
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            && v["state"]["state"] == "active"
        {
            id = v["session"]["worker_id"].as_str().unwrap().to_owned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!id.is_empty(), "the agent never became active");
    // Without --json: sentences for a person.
    let out = Command::new(BIN)
        .arg("--control-socket")
        .arg(&sock)
        .arg("status")
        .output()
        .unwrap();
    let words = String::from_utf8(out.stdout).unwrap();
    assert!(words.starts_with("Commons agent: donating\n"), "{words}");
    assert!(
        words.contains(&format!("Worker {id} at {}", server.url())),
        "{words}"
    );
    assert!(!words.contains('{'), "no JSON: {words}");
    let client = reqwest::Client::new();
    let url = format!("{}/api/admin/workers/{id}", server.url());
    assert_eq!(
        client
            .get(&url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let t = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "no exit within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(code.success(), "{code:?}");
    assert_eq!(
        client
            .get(&url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        404,
        "unregistered"
    );
    assert!(!creds.exists(), "credentials forgotten");
    assert!(!sock.exists(), "control socket removed");
    server.shutdown().await.unwrap();
}

fn keyring_check(cmd: &mut Command) -> (bool, String) {
    finished(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the keyring check"),
    )
}

/// Whether a finished child succeeded, and what it said.
fn finished(child: std::process::Child) -> (bool, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn keyring_backends_keep_secrets_or_say_what_to_do() {
    // Kernel keyutils in a fresh session keyring (how a headless server runs it).
    let (ok, text) = keyring_check(
        Command::new("keyctl")
            .args(["session", "-", BIN, "keyring-check"])
            .env_remove("DBUS_SESSION_BUS_ADDRESS"),
    );
    assert!(ok && text.contains("keyring ok: Keyutils"), "{text}");

    // A desktop session: a session bus with GNOME Keyring's Secret Service.
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let script = format!(
        "echo '' | gnome-keyring-daemon --unlock --components=secrets >/dev/null 2>&1; exec {BIN} keyring-check"
    );
    let (ok, text) = keyring_check(
        Command::new("dbus-run-session")
            .args(["--", "sh", "-c", &script])
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .env("XDG_RUNTIME_DIR", &run),
    );
    assert!(ok && text.contains("keyring ok: SecretService"), "{text}");

    // Whatever this sandbox's own session keyring does, it either keeps the secret or says what to do instead.
    let (ok, text) = keyring_check(
        Command::new(BIN)
            .arg("keyring-check")
            .env_remove("DBUS_SESSION_BUS_ADDRESS"),
    );
    assert!(ok || text.contains("--credentials-file"), "{text}");
}

#[test]
fn a_locked_keyring_with_nobody_to_unlock_it_is_given_up_with_what_to_do() {
    // GNOME Keyring, unlocked at start and then locked, on a display: its prompter opens a window that nobody
    // answers, and before the deadline the agent waited on it for ever.
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "keyring_timeout_secs = 3\n").unwrap();
    let script = format!(
        "echo '' | gnome-keyring-daemon --unlock --components=secrets >/dev/null 2>&1; \
         dbus-send --session --print-reply --dest=org.freedesktop.secrets /org/freedesktop/secrets \
           org.freedesktop.Secret.Service.Lock array:objpath:/org/freedesktop/secrets/collection/login >/dev/null \
           || exit 9; \
         exec {BIN} --config {} keyring-check",
        config.display()
    );
    let started = Instant::now();
    let mut child = Command::new("xvfb-run")
        .args(["-a", "dbus-run-session", "--", "sh", "-c", &script])
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .env("XDG_RUNTIME_DIR", &run)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("xvfb-run, dbus and gnome-keyring (.ci/setup installs them)");
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the agent still waits on the locked keyring after 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, text) = finished(child);
    assert!(!ok, "a locked keyring cannot keep a secret: {text}");
    assert!(
        text.contains("did not answer within 3 s")
            && text.contains("unlock it")
            && text.contains("--credentials-file"),
        "{text}"
    );
}
