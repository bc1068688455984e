//! The persistence story: what survives a crash.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::native;
use commons_coordinator::Server;
use commons_coordinator::server::test_utils::{ADMIN_TOKEN, config};
use serde_json::{Value, json};

async fn register_n(client: &reqwest::Client, url: &str, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for i in 0..n {
        let body = if i % 3 == 0 {
            common::legacy()
        } else {
            native(4, 16, None)
        };
        let r = common::register_at(client, url, &body).await;
        out.push((
            r["worker_id"].as_str().unwrap().to_owned(),
            r["worker_token"].as_str().unwrap().to_owned(),
        ));
    }
    out
}

async fn heartbeat(client: &reqwest::Client, url: &str, id: &str, token: &str, load: f64) -> u16 {
    client
        .post(format!("{url}/api/worker/heartbeat"))
        .bearer_auth(token)
        .json(&json!({"worker_id": id, "status": "healthy", "load": load}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn admin(client: &reqwest::Client, url: &str, path: &str) -> Value {
    client
        .get(format!("{url}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn hundred_workers_survive_a_drop_without_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let server = Server::bind(config(dir.path())).await.unwrap();
    let url = server.url();
    let workers = register_n(&client, &url, 100).await;
    // Dropped like a crash: no flush, no graceful close.
    server.abort().await;

    let server = Server::bind(config(dir.path())).await.unwrap();
    let url = server.url();
    let list = admin(&client, &url, "/api/admin/workers?limit=1000").await;
    assert_eq!(list["total"], 100);
    for (id, token) in &workers {
        assert_eq!(
            heartbeat(&client, &url, id, token, 0.1).await,
            200,
            "token of {id} no longer valid"
        );
    }
    // Legacy workers are still known as legacy; tiers and assignments are kept.
    let w = admin(
        &client,
        &url,
        &format!("/api/admin/workers/{}", workers[0].0),
    )
    .await;
    assert_eq!(w["legacy"], true);
    assert!(!w["assigned_containers"].as_array().unwrap().is_empty());
    server.shutdown().await.unwrap();
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_binary(dir: &std::path::Path) -> (Proc, String) {
    start_binary_with(dir, |_| {})
}

/// [`start_binary`] with more flags or environment from `tune`.
fn start_binary_with(dir: &std::path::Path, tune: impl FnOnce(&mut Command)) -> (Proc, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_commons-coordinator"));
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        // The DHT node (on by default) on loopback, on a port the OS picks.
        .args(["--dht-listen", "/ip4/127.0.0.1/tcp/0"])
        .env("COMMONS_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("COMMONS_REGISTER_RATE_LIMIT", "0")
        .env("RUST_LOG", "warn");
    tune(&mut cmd);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    // Keep draining what it prints.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let url = line.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    (Proc(child), url)
}

#[tokio::test]
async fn kill_9_loses_at_most_the_flush_window() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let (mut proc, url) = start_binary(dir.path());
    let workers = register_n(&client, &url, 10).await;
    for (id, token) in &workers {
        assert_eq!(heartbeat(&client, &url, id, token, 0.42).await, 200);
    }
    // Past the 1 s flush window: these heartbeats are on disk.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    // Inside the window: this one may be lost, nothing else may.
    assert_eq!(
        heartbeat(&client, &url, &workers[0].0, &workers[0].1, 0.77).await,
        200
    );
    proc.0.kill().unwrap(); // SIGKILL
    proc.0.wait().unwrap();

    let (_proc, url) = start_binary(dir.path());
    let list = admin(&client, &url, "/api/admin/workers?limit=100").await;
    assert_eq!(list["total"], 10);
    for w in list["workers"].as_array().unwrap() {
        let load = w["current_load"].as_f64().unwrap();
        if w["worker_id"] == workers[0].0.as_str() {
            assert!(load == 0.42 || load == 0.77, "{load}");
        } else {
            assert_eq!(load, 0.42);
        }
        assert!(w["last_heartbeat"].is_string());
    }
    for (id, token) in &workers {
        assert_eq!(heartbeat(&client, &url, id, token, 0.1).await, 200);
    }
}

#[test]
fn a_corrupt_database_stops_the_start_with_a_sentence_and_is_left_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("commons.db");
    // 8 KiB that are not a database: not SQLite's header, then text.
    let garbage: Vec<u8> = b"this was a database until a disk went bad. "
        .iter()
        .copied()
        .cycle()
        .take(8192)
        .collect();
    std::fs::write(&db, &garbage).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_commons-coordinator"))
        .args(["--listen", "127.0.0.1:0", "--no-dht", "--data-dir"])
        .arg(dir.path())
        .env("COMMONS_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{} is not a SQLite database", db.display())),
        "{stderr}"
    );
    assert!(stderr.contains("left as it is"), "{stderr}");
    assert_eq!(std::fs::read(&db).unwrap(), garbage, "not overwritten");
    assert!(
        !dir.path().join("commons.db-wal").exists(),
        "nothing written beside it"
    );
}

/// A tmpfs of `size` mounted on `dir` until dropped (the tests run as root on CI machines; mounting needs it).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Self {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "this test mounts a small tmpfs to fill the coordinator's disk: run it as root"
        );
        Self(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Writes a file until the disk is full.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let small = [0u8; 512];
    while f.write_all(&small).is_ok() {}
    let _ = f.flush();
}

#[tokio::test]
async fn a_full_disk_is_a_503_then_recovers_and_nothing_stored_is_lost() {
    let mount = tempfile::tempdir().unwrap();
    let _tmpfs = Tmpfs::mount(mount.path(), "4m");
    let data = mount.path().join("data");
    let client = reqwest::Client::new();
    let server = Server::bind(config(&data)).await.unwrap();
    let url = server.url();
    let before = register_n(&client, &url, 5).await;
    // The disk fills up under it.
    let filler = mount.path().join("filler");
    fill(&filler);
    let mut refused = 0;
    for _ in 0..20 {
        let r = client
            .post(format!("{url}/api/worker/register"))
            .json(&native(4, 16, None))
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"], "unavailable", "{body}");
            assert!(
                body["message"].as_str().unwrap().contains("disk is full"),
                "{body}"
            );
            refused += 1;
        } else {
            // SQLite may still find room in pages it has; what it acknowledges is kept.
            assert_eq!(r.status(), 200);
        }
    }
    assert!(refused > 0, "the full disk was noticed");
    // Heartbeats are kept in memory meanwhile.
    for (id, token) in &before {
        assert_eq!(heartbeat(&client, &url, id, token, 0.3).await, 200);
    }
    // Room again: it stores again, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let after = register_n(&client, &url, 3).await;
    server.shutdown().await.unwrap();
    // Everything acknowledged is there after a restart, and the file is sound.
    let server = Server::bind(config(&data)).await.unwrap();
    let list = admin(&client, &server.url(), "/api/admin/workers?limit=1000").await;
    let ids: Vec<&str> = list["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["worker_id"].as_str().unwrap())
        .collect();
    for (id, _) in before.iter().chain(&after) {
        assert!(ids.contains(&id.as_str()), "{id} lost");
    }
    let ok: String = rusqlite::Connection::open(data.join("commons.db"))
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    server.shutdown().await.unwrap();
}

/// The coordinators a coordinator lists from the DHT's records (it has no edge).
async fn listed(client: &reqwest::Client, url: &str) -> Vec<String> {
    admin(client, url, "/api/admin/coordinators").await["coordinators"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|c| c["url"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_whose_clocks_are_ten_minutes_apart_find_each_other_in_the_dht() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut c = config(&dir.path().join("real"));
    c.dht = true;
    c.dht_listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
    c.dht_refresh_secs = 5;
    let real = Server::bind(c).await.unwrap();
    let seed = real.state().dht.get().unwrap().address_strings()[0].clone();
    // The other is the real binary, its clock 10 minutes ahead (libfaketime, preloaded into the binary itself so
    // that killing it kills the coordinator): records it signs expire 10 minutes later than the first one's clock
    // says, and those it reads seem to expire 10 minutes early.
    let skewed_dir = dir.path().join("skewed");
    std::fs::create_dir_all(&skewed_dir).unwrap();
    let file = skewed_dir.join("coordinator.toml");
    std::fs::write(&file, "dht_refresh_secs = 5\n").unwrap();
    let libfaketime = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
    assert!(
        std::path::Path::new(libfaketime).exists(),
        "{libfaketime}: install faketime (.ci/packages tests does)"
    );
    let (_skewed, skewed_url) = start_binary_with(&skewed_dir, |cmd| {
        cmd.args(["--dht-seed", &seed])
            .arg("--config")
            .arg(&file)
            .env("LD_PRELOAD", libfaketime)
            .env("FAKETIME", "+10m");
    });
    // Each finds the other's record, in both directions, whatever its clock says.
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let (mut from_skewed, mut from_real) = (Vec::new(), Vec::new());
    while std::time::Instant::now() < deadline {
        from_skewed = listed(&client, &skewed_url).await;
        from_real = listed(&client, &real.url()).await;
        if from_skewed.contains(&real.url()) && from_real.contains(&skewed_url) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        from_skewed.contains(&real.url()),
        "the skewed one lists {from_skewed:?}"
    );
    assert!(
        from_real.contains(&skewed_url),
        "the real one lists {from_real:?}"
    );
    real.shutdown().await.unwrap();
}
