//! Service routing against real worker HTTP servers on loopback: weighted choice, retry when one is dead,
//! 503 when none, a streamed body passing through unchanged, and the connection kept for the next request.

use commons_tests::{
    Coordinator, WorkerServer, catalogue_only, eventually, heartbeat, heartbeat_with, register,
};
use serde_json::Value;
use std::sync::atomic::Ordering;

async fn coordinator() -> Coordinator {
    Coordinator::start(|c, dir| c.catalogue = Some(catalogue_only(dir, &[("echo", 3)]))).await
}

#[tokio::test]
async fn requests_favour_the_less_loaded_worker() {
    let c = coordinator().await;
    let client = reqwest::Client::new();
    let light = WorkerServer::start("light").await;
    let heavy = WorkerServer::start("heavy").await;
    let wl = register(&client, &c.url(), &light.url()).await;
    let wh = register(&client, &c.url(), &heavy.url()).await;
    heartbeat(&client, &c.url(), &wl, "healthy", 0.1).await;
    heartbeat(&client, &c.url(), &wh, "healthy", 0.9).await;
    for _ in 0..600 {
        let r = client
            .get(format!("{}/api/service/echo/ping", c.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let (l, h) = (
        light.seen.requests.load(Ordering::Relaxed),
        heavy.seen.requests.load(Ordering::Relaxed),
    );
    // Weights 1/(0.1+0.1) : 1/(0.1+0.9) = 5 : 1.
    assert_eq!(l + h, 600);
    assert!(h > 0, "the loaded worker still gets a share");
    assert!(l > 3 * h, "light {l}, heavy {h}");
    // Per-worker counts are in the admin API.
    let w = c
        .admin(&client, &format!("/api/admin/workers/{}", wl.id))
        .await;
    assert_eq!(w["requests"].as_u64(), Some(l));
    assert_eq!(w["errors"], 0);
    assert!(w["latency_ms"].as_f64().unwrap() > 0.0);

    // A paused worker gets nothing.
    heartbeat(&client, &c.url(), &wl, "paused", 0.1).await;
    let before = light.seen.requests.load(Ordering::Relaxed);
    for _ in 0..50 {
        client
            .get(format!("{}/api/service/echo/ping", c.url()))
            .send()
            .await
            .unwrap();
    }
    assert_eq!(light.seen.requests.load(Ordering::Relaxed), before);
}

#[tokio::test]
async fn a_dead_worker_is_retried_on_another() {
    let c = coordinator().await;
    let client = reqwest::Client::new();
    let alive = WorkerServer::start("alive").await;
    let dead = WorkerServer::start("dead").await;
    let wa = register(&client, &c.url(), &alive.url()).await;
    let wd = register(&client, &c.url(), &dead.url()).await;
    heartbeat(&client, &c.url(), &wa, "healthy", 0.5).await;
    heartbeat(&client, &c.url(), &wd, "healthy", 0.0).await;
    dead.stop().await;
    for i in 0..60 {
        let r = client
            .post(format!("{}/api/service/echo/job?n={i}", c.url()))
            .body("work")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["worker"], "alive");
        assert_eq!(body["query"], format!("n={i}"));
    }
    let w = c
        .admin(&client, &format!("/api/admin/workers/{}", wd.id))
        .await;
    assert!(
        w["errors"].as_u64().unwrap() > 0,
        "the dead worker's failures are counted: {w}"
    );
}

#[tokio::test]
async fn no_worker_is_a_503_naming_the_service() {
    let c = coordinator().await;
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{}/api/service/echo/x", c.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "no_worker");
    assert!(body["message"].as_str().unwrap().contains("echo"));
    // The only worker is dead: still a 503 once its connection fails.
    let dead = WorkerServer::start("dead").await;
    let w = register(&client, &c.url(), &dead.url()).await;
    heartbeat(&client, &c.url(), &w, "healthy", 0.0).await;
    dead.stop().await;
    let r = client
        .get(format!("{}/api/service/echo/x", c.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("echo"), "{body}");
}

#[tokio::test]
async fn bodies_stream_through_with_method_headers_and_query() {
    let c = coordinator().await;
    let client = reqwest::Client::new();
    let ws = WorkerServer::start("w").await;
    let w = register(&client, &c.url(), &ws.url()).await;
    heartbeat(&client, &c.url(), &w, "healthy", 0.2).await;
    let payload: Vec<u8> = (0..(4 << 20)).map(|i: u32| (i * 31 % 251) as u8).collect();
    let r = client
        .put(format!("{}/api/service/echo/upload", c.url()))
        .header("x-echo-body", "1")
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-worker"], "w");
    assert_eq!(r.bytes().await.unwrap().as_ref(), payload.as_slice());

    let r: Value = client
        .delete(format!("{}/api/service/echo/a/b/c?x=1&y=2", c.url()))
        .header("x-test", "kept")
        // A client cannot pass itself off as the coordinator: its key is dropped, the coordinator's sent.
        .header(commons_server::auth::GATEWAY_KEY_HEADER, "forged")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["method"], "DELETE");
    assert_eq!(r["path"], "a/b/c");
    assert_eq!(r["query"], "x=1&y=2");
    assert_eq!(r["x_test"], "kept");
    assert_eq!(r["x_forwarded_for"], "127.0.0.1");
    assert_eq!(r["host"], ws.addr.to_string());
    // At an endpoint, the request proves it comes from the worker's coordinator.
    let key = commons_server::auth::gateway_key(&commons_server::auth::hash_token(&w.token));
    assert_eq!(r["gateway_key"], key);
}

/// A worker whose container for the service is not serving yet (`starting`: its health check has not passed) gets no
/// requests and does not count as a healthy replica; once it reports the container running, it does.
#[tokio::test]
async fn a_replica_serves_only_once_its_container_is_healthy() {
    let c = coordinator().await;
    let client = reqwest::Client::new();
    let w = WorkerServer::start("w").await;
    let reg = register(&client, &c.url(), &w.url()).await;
    let url = c.url();
    let beat = |state: &'static str| {
        let containers =
            serde_json::json!([{"name": "commons-echo", "state": state, "restarts": 0}]);
        heartbeat_with(&client, &url, &reg, "healthy", 0.1, containers)
    };
    let healthy_replicas = |report: &Value| {
        report["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "echo")
            .unwrap()["healthy"]
            .as_u64()
            .unwrap()
    };
    beat("starting").await;
    let r = client
        .get(format!("{}/api/service/echo/ping", c.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "nothing serves echo yet");
    assert_eq!(w.seen.requests.load(Ordering::Relaxed), 0);
    let report = c.admin(&client, "/api/admin/services").await;
    assert_eq!(healthy_replicas(&report), 0, "{report}");
    beat("running").await;
    let r = client
        .get(format!("{}/api/service/echo/ping", c.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let report = c.admin(&client, "/api/admin/services").await;
    assert_eq!(healthy_replicas(&report), 1, "{report}");
}

/// Registers a worker at `endpoint` and returns the answer's status and body.
async fn try_register(client: &reqwest::Client, coordinator: &str, endpoint: &str) -> (u16, Value) {
    let body = serde_json::json!({"capabilities": {"cpu": {"cores": 4, "threads": 8}, "memory_bytes": 16u64 << 30},
        "endpoint": endpoint});
    let r = client
        .post(format!("{coordinator}/api/worker/register"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn a_worker_cannot_point_a_coordinator_at_itself_nor_start_a_loop() {
    let a = coordinator().await;
    let b = coordinator().await;
    let client = reqwest::Client::new();
    // Its own URL, by address and by name: refused at registration, with the field and the reason.
    let port = a.server.local_addr().port();
    for endpoint in [a.url(), format!("http://localhost:{port}/x")] {
        let (status, body) = try_register(&client, &a.url(), &endpoint).await;
        assert_eq!(status, 422, "{endpoint}: {body}");
        assert_eq!(body["error"], "invalid_field");
        // Named for a client to act on (an agent then joins without an endpoint).
        assert_eq!(body["field"], "endpoint");
        assert!(
            body["message"].as_str().unwrap().contains("own address"),
            "{body}"
        );
    }
    // A's worker is B and B's worker is A: one request comes back to A once, and stops there.
    let wa = register(&client, &a.url(), &b.url()).await;
    let wb = register(&client, &b.url(), &a.url()).await;
    heartbeat(&client, &a.url(), &wa, "healthy", 0.1).await;
    heartbeat(&client, &b.url(), &wb, "healthy", 0.1).await;
    let r = client
        .get(format!("{}/api/service/echo/x", a.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 508);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "loop_detected", "{body}");
    let through_b = b
        .admin(&client, &format!("/api/admin/workers/{}", wb.id))
        .await;
    assert_eq!(through_b["requests"], 1, "{through_b}");
}

#[tokio::test]
async fn a_public_coordinator_forwards_to_public_addresses_only() {
    // The echo service's port is a listener of the test's, which counts the connections it gets.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let count = accepted.clone();
    let acceptor = tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    let c = Coordinator::start(|c, dir| {
        c.catalogue = Some(commons_tests::operator_catalogue(
            dir,
            &format!(
                "[[service]]\nname = \"echo\"\nimage = \"example/echo:1\"\nport = {port}\nmin_ram = \"1GB\"\n\
                 min_cores = 1\nreplicas = 3\n"
            ),
        ));
        c.private_upstreams = Some(false);
    })
    .await;
    let client = reqwest::Client::new();
    let local = format!("http://127.0.0.1:{port}");
    for endpoint in [
        local.clone(),
        local.replace("127.0.0.1", "localhost"),
        "http://10.1.2.3:8000".into(),
        "http://169.254.169.254/latest".into(),
        "http://[::1]:9000".into(),
    ] {
        let (status, body) = try_register(&client, &c.url(), &endpoint).await;
        assert_eq!(status, 422, "{endpoint}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.starts_with("endpoint: "), "{body}");
        assert!(message.contains("private_upstreams = true"), "{body}");
    }
    // The address connected to is checked too, not only a registered name: a legacy worker's address is used as
    // it is, and a loopback one is never connected to.
    let r = client
        .post(format!("{}/api/worker/register", c.url()))
        .json(&serde_json::json!({"capabilities": {"cpu_cores": 2, "ram": "23.5GB", "storage": "252.0GB"},
            "ip_address": "127.0.0.1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("{}/api/service/echo/x", c.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(accepted.load(Ordering::Relaxed), 0);
    acceptor.abort();
}

/// A connection to a worker's endpoint outlives its request: the next request to that worker takes it instead of
/// a new TCP handshake.
#[tokio::test]
async fn a_connection_to_a_worker_is_kept_for_the_next_request() {
    let c = coordinator().await;
    let client = reqwest::Client::new();
    let ws = WorkerServer::start("w").await;
    let w = register(&client, &c.url(), &ws.url()).await;
    heartbeat(&client, &c.url(), &w, "healthy", 0.2).await;
    let kept = || c.server.state().upstreams.kept();
    for i in 0..5 {
        let r = client
            .get(format!("{}/api/service/echo/ping?i={i}", c.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        // Kept once the answer has ended: one connection, taken and kept again by every request.
        assert!(
            eventually(5, || async { kept() == 1 }).await,
            "request {i}: {} kept",
            kept()
        );
    }
    assert_eq!(ws.seen.requests.load(Ordering::Relaxed), 5);
}
