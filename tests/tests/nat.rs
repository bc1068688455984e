//! The reverse path with a real NAT: a volunteer's agent in a LAN namespace behind a masquerading router namespace
//! (`commons_tests::nat`), no port forwarded, no tunnel, joins a coordinator that, like one on the internet, does
//! not forward to private addresses, and serves a real OCR request over its own connection (the channel). The
//! agent is the real `commons-agent` process, run in the LAN with `ip netns exec`; its container runs without
//! network and is reached over its socket.

use std::time::{Duration, Instant};

use commons_tests::nat::HomeRouter;
use commons_tests::{Coordinator, eventually, ocr_catalogue, service_agent_settings};
use serde_json::Value;

/// The worker as the coordinator lists it.
async fn listed(client: &reqwest::Client, c: &Coordinator) -> Value {
    c.admin(client, "/api/admin/workers").await["workers"][0].clone()
}

#[tokio::test]
async fn an_agent_behind_a_nat_with_no_port_open_serves_ocr_over_its_own_connection() {
    let client = reqwest::Client::new();
    let router = HomeRouter::new((std::process::id() % 200 + 20) as u8);
    let at = router.internet_address();
    let c = Coordinator::start(|cfg, dir| {
        cfg.listen = format!("{at}:0").parse().unwrap();
        // As on the internet: no forwarding to loopback or private addresses (the default off loopback).
        cfg.private_upstreams = Some(false);
        cfg.catalogue = Some(ocr_catalogue(dir, 1));
        cfg.heartbeat_interval_secs = 1;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let instance = format!("nat-{}", std::process::id());
    let mut settings =
        service_agent_settings("http://127.0.0.1:1", &instance, &dir.path().join("s"));
    settings.coordinator_url = Some(c.url());
    settings.control_socket = Some(dir.path().join("control.sock"));
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, toml::to_string(&settings).unwrap()).unwrap();

    let started = Instant::now();
    let mut agent = router
        .command_in_lan(&commons_tests::update::agent_bin())
        .arg("--config")
        .arg(&config)
        .arg("--credentials-file")
        .arg(dir.path().join("creds.json"))
        .args(["run", "--coordinator", &c.url()])
        .env("RUST_LOG", "info")
        .kill_on_drop(true)
        .spawn()
        .expect("the agent starts in the LAN");

    let png = commons_ocr::sample::png_of(&commons_ocr::sample::pdf_with_text(&[
        "Behind a home router",
    ]))
    .expect("pdftoppm");
    let url = format!("{}/api/service/ocr/ocr", c.url());
    let answer = std::sync::Mutex::new(None);
    let served = eventually(120, || async {
        let Ok(r) = client.post(&url).body(png.clone()).send().await else {
            return false;
        };
        let path = r.headers().get("x-commons-path").cloned();
        let ok = r.status() == 200;
        let v: Value = r.json().await.unwrap_or(Value::Null);
        let reads = v["text"]
            .as_str()
            .is_some_and(|t| t.contains("Behind a home router"));
        *answer.lock().unwrap() = Some((path, v));
        ok && reads
    })
    .await;
    let first = started.elapsed();
    let w = listed(&client, &c).await;
    assert!(
        served,
        "the NATed agent serves OCR: {:?}; the worker: {w}",
        answer.lock().unwrap()
    );
    let (path, _) = answer.into_inner().unwrap().unwrap();
    assert_eq!(path.unwrap(), "reverse", "the answer came over the channel");
    println!(
        "a NATed agent served its first request {:.1} s after it started",
        first.as_secs_f64()
    );
    // It has no endpoint the coordinator could use (its gateway listens on the LAN's loopback, which the
    // coordinator refused): the channel is its only path.
    assert_eq!(w["path"], "reverse", "{w}");
    assert!(w["endpoint"].is_null(), "no endpoint was taken: {w}");
    // The agent quits (SIGTERM): it unregisters, and its channel closes with it.
    // (`ip netns exec` execs the agent: the child is the agent itself.)
    let pid = agent.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let quit = tokio::time::timeout(Duration::from_secs(60), agent.wait()).await;
    assert!(
        matches!(quit, Ok(Ok(s)) if s.success()),
        "the agent quits cleanly: {quit:?}"
    );
    assert!(
        eventually(30, || async {
            c.admin(&client, "/api/admin/workers").await["workers"]
                .as_array()
                .is_some_and(Vec::is_empty)
        })
        .await,
        "the agent unregistered: {}",
        c.admin(&client, "/api/admin/workers").await
    );
}
