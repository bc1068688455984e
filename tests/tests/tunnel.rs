//! The agent's gateway and tunnel: a stand-in for cloudflared (it cannot be installed here) that prints a quick
//! tunnel address the way cloudflared does, exits on SIGTERM, and can be made to crash.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use commons_agent::agent::{self, Command, State};
use commons_agent::credentials::FileStore;
use commons_agent::gateway::Gateway;
use commons_agent::settings::Settings;
use commons_agent::tunnel::{Mode, Tunnel};
use commons_tests::{Coordinator, WorkerServer, eventually};

/// Writes a stand-in cloudflared. Each start appends its pid to `pids` and prints a new URL; with `crash_after`
/// it exits with status 1 after that many seconds.
fn stand_in(dir: &Path, crash_after: Option<u32>) -> (PathBuf, PathBuf) {
    let pids = dir.join("pids");
    let script = dir.join(if crash_after.is_some() {
        "cloudflared-crashy"
    } else {
        "cloudflared"
    });
    let body = match crash_after {
        Some(n) => format!("sleep {n}\nexit 1\n"),
        None => "trap 'exit 0' TERM\nwhile true; do sleep 0.1; done\n".to_owned(),
    };
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho $$ >> {pids}\necho \"INF Requesting new quick Tunnel on trycloudflare.com...\" >&2\necho \"INF |  https://stand-in-$$.trycloudflare.com  |\" >&2\n{body}",
            pids = pids.display()
        ),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    (script, pids)
}

fn alive(pid: &str) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test]
async fn a_quick_tunnel_is_read_restarted_after_a_crash_and_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (program, pids) = stand_in(dir.path(), Some(1));
    let mut t = Tunnel::start(Mode::Quick {
        program,
        to: "http://127.0.0.1:1".into(),
    });
    let first = t
        .url
        .wait_for(Option::is_some)
        .await
        .unwrap()
        .clone()
        .unwrap();
    assert!(
        first.starts_with("https://stand-in-") && first.ends_with(".trycloudflare.com"),
        "{first}"
    );
    // It crashes after 1 s; the supervisor starts it again and publishes the new address.
    let second = tokio::time::timeout(
        Duration::from_secs(10),
        t.url.wait_for(|u| u.as_ref().is_some_and(|u| *u != first)),
    )
    .await
    .expect("restarted")
    .unwrap()
    .clone()
    .unwrap();
    assert_ne!(first, second);
    assert!(*t.starts.borrow() >= 2);
    t.stop().await;
    for pid in std::fs::read_to_string(&pids).unwrap().lines() {
        assert!(!alive(pid), "stand-in {pid} still running after stop");
    }
}

#[tokio::test]
async fn the_gateway_serves_only_its_coordinator_forwards_to_the_service_and_counts() {
    let g = Gateway::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let w = WorkerServer::start("svc").await;
    g.routes.set(HashMap::from([(
        "echo".to_owned(),
        commons_agent::gateway::Upstream::Port(w.addr.port()),
    )]));
    let client = reqwest::Client::new();
    let url = format!("{}/api/service/echo/api/service/echo/x?y=1", g.url());
    // Before joining it knows no coordinator: nobody gets in.
    let r = client.post(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let token = commons_server::auth::new_token();
    let key = commons_server::auth::gateway_key(&commons_server::auth::hash_token(&token));
    g.routes.set_key(Some(key.clone()));
    // No key, someone else's key, the worker's token itself: 401, and the service never sees them.
    let header = commons_server::auth::GATEWAY_KEY_HEADER;
    let forged = commons_server::auth::gateway_key(&[7; 32]);
    for offered in [None, Some(forged.as_str()), Some(token.as_str())] {
        let mut req = client.post(&url).body("abc");
        if let Some(k) = offered {
            req = req.header(header, k);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{offered:?}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("only its coordinator")
        );
    }
    assert_eq!(
        w.seen.requests.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // The coordinator's key: the echo server answers /api/service/...; the gateway strips its own prefix,
    // forwards the rest, and keeps the key to itself.
    let r: serde_json::Value = client
        .post(&url)
        .header(header, &key)
        .body("abc")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["worker"], "svc");
    assert_eq!(r["path"], "x");
    assert_eq!(r["query"], "y=1");
    assert_eq!(r["body_len"], 3);
    assert!(
        r["gateway_key"].is_null(),
        "the key stops at the gateway: {r}"
    );
    let r = client
        .get(format!("{}/api/service/ocr/x", g.url()))
        .header(header, &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(g.routes.stats.requests(), 1);
    assert!(g.routes.stats.latency_ms() > 0.0);
}

#[tokio::test]
async fn the_coordinator_learns_each_new_tunnel_address() {
    let c = Coordinator::start(|cfg, _| cfg.heartbeat_interval_secs = 1).await;
    let dir = tempfile::tempdir().unwrap();
    let (program, pids) = stand_in(dir.path(), Some(2));
    let settings = Settings {
        coordinator_url: Some(c.url()),
        containers: false,
        tunnel: commons_agent::settings::TunnelKind::Quick,
        cloudflared: program,
        dht: false,
        ..Settings::default()
    };
    let mut a = agent::start(
        settings,
        Arc::new(FileStore::new(dir.path().join("c.json"))),
        Arc::new(commons_agent::hardware::RecordedProbe(Ok(vec![]))),
    );
    a.wait_for(Duration::from_secs(15), |s| *s == State::Active)
        .await
        .expect("active");
    let id = a.session.borrow().worker_id.clone();
    let client = reqwest::Client::new();
    let endpoint = || async {
        let w = c.admin(&client, &format!("/api/admin/workers/{id}")).await;
        w["endpoint"].as_str().unwrap_or_default().to_owned()
    };
    let first = endpoint().await;
    assert!(
        first.starts_with("https://stand-in-"),
        "registered with the tunnel address: {first:?}"
    );
    // The stand-in crashes after 2 s and comes back with a new address, which the next heartbeat reports.
    assert!(
        eventually(15, || async {
            let e = endpoint().await;
            e.starts_with("https://stand-in-") && e != first
        })
        .await
    );
    a.send(Command::Quit).await;
    a.join().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for pid in std::fs::read_to_string(&pids).unwrap().lines() {
        assert!(!alive(pid), "the agent left cloudflared {pid} running");
    }
}
