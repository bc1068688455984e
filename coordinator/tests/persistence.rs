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
    let mut child = Command::new(env!("CARGO_BIN_EXE_commons-coordinator"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        // The DHT node (on by default) on loopback, on a port the OS picks.
        .args(["--dht-listen", "/ip4/127.0.0.1/tcp/0"])
        .env("COMMONS_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("COMMONS_REGISTER_RATE_LIMIT", "0")
        .env("RUST_LOG", "warn")
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
