//! The edge and a federation of coordinators, all real servers on loopback.

use std::time::Duration;

use commons_tests::{Coordinator, Edge, WorkerServer, catalogue_only, eventually};
use serde_json::{Value, json};

async fn coordinator(edge: &Edge, key: &str, heartbeat_ms: u64) -> Coordinator {
    Coordinator::federated(edge, key, heartbeat_ms, |c, dir| {
        c.catalogue = Some(catalogue_only(dir, &[("echo", 3)]))
    })
    .await
}

async fn coordinator_count(edge: &Edge, client: &reqwest::Client) -> u64 {
    edge.coordinator_count(client).await
}

fn worker_body(endpoint: &str) -> Value {
    let gib = 1u64 << 30;
    json!({"capabilities": {"cpu": {"cores": 4}, "memory_bytes": 16 * gib,
        "disks": [{"mount": "/", "total_bytes": 100 * gib, "free_bytes": 50 * gib}]}, "endpoint": endpoint})
}

#[tokio::test]
async fn registrations_spread_by_weight_and_heartbeats_skip_the_edge() {
    let client = reqwest::Client::new();
    let edge = Edge::start(|_| {}).await;
    let key = edge.federation_key(&client, "pool").await;
    // Long registrar interval: the loads set below stay as set.
    let coords = [
        coordinator(&edge, &key, 60_000).await,
        coordinator(&edge, &key, 60_000).await,
        coordinator(&edge, &key, 60_000).await,
    ];
    assert!(eventually(5, || async { coordinator_count(&edge, &client).await == 3 }).await);
    for (c, load) in coords.iter().zip([0.0, 0.5, 0.9]) {
        let r = client
            .post(format!("{}/api/edge/heartbeat", edge.url()))
            .bearer_auth(&key)
            .json(&json!({"id": c.server.id(), "load": load, "workers": 0}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let mut first = None;
    for _ in 0..300 {
        let r: Value = client
            .post(format!("{}/api/worker/register", edge.url()))
            .json(&worker_body("http://127.0.0.1:9"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(r["worker_id"].is_string(), "{r}");
        first.get_or_insert(r);
    }
    let mut counts = Vec::new();
    for c in &coords {
        let list = c.admin(&client, "/api/admin/workers?limit=1").await;
        counts.push(list["total"].as_u64().unwrap());
    }
    // Weights 1/(0.1+0) : 1/(0.1+0.5) : 1/(0.1+0.9) = 10 : 1.7 : 1.
    assert_eq!(counts.iter().sum::<u64>(), 300);
    assert!(counts[0] > counts[1] + counts[2], "{counts:?}");
    assert!(counts[1] > 0 && counts[2] > 0, "{counts:?}");

    // The answer sends the worker straight to its coordinator: its heartbeat never touches the edge.
    let reg = first.unwrap();
    let coordinator_url = reg["coordinator_url"].as_str().unwrap();
    assert_ne!(coordinator_url, edge.url());
    let r = client
        .post(format!(
            "{coordinator_url}{}",
            reg["heartbeat_url"].as_str().unwrap()
        ))
        .bearer_auth(reg["worker_token"].as_str().unwrap())
        .json(&json!({"worker_id": reg["worker_id"], "status": "healthy", "load": 0.1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let counts = edge.request_counts(&client).await;
    assert_eq!(counts.get("registration"), Some(&300));
    assert_eq!(counts.get("service"), None);
}

#[tokio::test]
async fn service_requests_go_edge_coordinator_worker_and_avoid_a_dead_coordinator() {
    let client = reqwest::Client::new();
    let edge = Edge::start(|c| {
        c.coordinator_ttl_secs = 2;
        c.heartbeat_interval_secs = 1;
    })
    .await;
    let key = edge.federation_key(&client, "pool").await;
    let a = coordinator(&edge, &key, 200).await;
    let b = coordinator(&edge, &key, 200).await;
    let wa = WorkerServer::start("wa").await;
    let wb = WorkerServer::start("wb").await;
    // One worker on each coordinator, registered directly so we know which is where.
    for (c, w) in [(&a, &wa), (&b, &wb)] {
        let reg = commons_tests::register(&client, &c.url(), &w.url()).await;
        commons_tests::heartbeat(&client, &c.url(), &reg, "healthy", 0.2).await;
    }
    // The registrars report healthy "echo" workers to the edge.
    let ready = eventually(5, || async {
        let t = edge.admin(&client, "/api/admin/topology").await;
        t["services"]["echo"] == 2 && t["total_workers"] == 2
    })
    .await;
    assert!(ready);
    for i in 0..20 {
        let r = client
            .post(format!("{}/api/service/echo/run?i={i}", edge.url()))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert!(body["worker"] == "wa" || body["worker"] == "wb");
        assert_eq!(body["query"], format!("i={i}"));
        // edge, then coordinator, appended to X-Forwarded-For.
        assert_eq!(body["x_forwarded_for"], "127.0.0.1, 127.0.0.1");
    }
    // Kill coordinator b without a word to the edge.
    let b_id = b.server.id().to_owned();
    b.server.abort().await;
    for _ in 0..20 {
        let r = client
            .get(format!("{}/api/service/echo/x", edge.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "a failed forward is retried on another coordinator"
        );
        assert_eq!(r.json::<Value>().await.unwrap()["worker"], "wa");
    }
    let list = edge.admin(&client, "/api/admin/coordinators").await;
    let dead = list["coordinators"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == b_id.as_str());
    if let Some(dead) = dead {
        assert_eq!(
            dead["healthy"], false,
            "avoided at once after the failed connection"
        );
    }
    // It expires after the TTL (2 s), checked actively.
    assert!(eventually(6, || async { coordinator_count(&edge, &client).await == 1 }).await);
    let list = edge.admin(&client, "/api/admin/coordinators").await;
    assert_eq!(list["coordinators"][0]["id"], a.server.id());
    // A service no coordinator reports goes to one of them, which answers for it: this one's catalogue has no ocr.
    let r = client
        .get(format!("{}/api/service/ocr/x", edge.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("ocr"), "{body}");
    a.server.shutdown().await.unwrap();
    // Deregistered on shutdown.
    assert_eq!(coordinator_count(&edge, &client).await, 0);
}

#[tokio::test]
async fn the_registry_survives_an_edge_restart_and_coordinators_reregister_with_a_new_edge() {
    let client = reqwest::Client::new();
    let edge = Edge::start(|_| {}).await;
    let port = edge.server.local_addr().port();
    let key = edge.federation_key(&client, "pool").await;
    let c = coordinator(&edge, &key, 200).await;
    assert!(eventually(5, || async { coordinator_count(&edge, &client).await == 1 }).await);
    // Crash and restart on the same data dir and port: the registry and the key are still there.
    let dir = edge.dir;
    edge.server.abort().await;
    // A new client: pooled connections to the crashed edge are gone.
    let client = reqwest::Client::new();
    let edge = Edge::start_in(dir, |cfg| cfg.listen = ([127, 0, 0, 1], port).into()).await;
    assert_eq!(coordinator_count(&edge, &client).await, 1);
    let hb = client
        .post(format!("{}/api/edge/heartbeat", edge.url()))
        .bearer_auth(&key)
        .json(&json!({"id": c.server.id(), "load": 0.1}))
        .send()
        .await
        .unwrap();
    assert_eq!(hb.status(), 200, "the enrolled key survived the restart");

    // The edge forgets the coordinator (as after an expiry): its next heartbeat gets 404 and it registers again.
    let r = client
        .delete(format!(
            "{}/api/edge/coordinators/{}",
            edge.url(),
            c.server.id()
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(coordinator_count(&edge, &client).await, 0);
    assert!(
        eventually(5, || async { coordinator_count(&edge, &client).await == 1 }).await,
        "re-registered"
    );

    // A new, empty edge on the same port never enrolled the coordinator's key: the coordinator stays out.
    edge.server.abort().await;
    let client = reqwest::Client::new();
    let fresh = Edge::start(|cfg| cfg.listen = ([127, 0, 0, 1], port).into()).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        coordinator_count(&fresh, &client).await,
        0,
        "an unenrolled key is refused"
    );
}

#[tokio::test]
async fn federation_auth_and_bootstrap() {
    let client = reqwest::Client::new();
    let edge = Edge::start(|_| {}).await;
    let key_a = edge.federation_key(&client, "a").await;
    let key_b = edge.federation_key(&client, "b").await;
    let reg = |key: Option<&str>, body: Value| {
        let mut r = client
            .post(format!("{}/api/edge/register", edge.url()))
            .json(&body);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    let body = json!({"worker_id": "coord-a", "tunnel_url": "http://127.0.0.1:9", "capabilities": {"location": "London"},
                      "dht_addrs": ["/ip4/127.0.0.1/tcp/4001"]});
    assert_eq!(reg(None, body.clone()).await.unwrap().status(), 401);
    assert_eq!(
        reg(Some("made-up"), body.clone()).await.unwrap().status(),
        401
    );
    let ack: Value = reg(Some(&key_a), body.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // In the DHT (it listed DHT addresses), a coordinator is asked for a heartbeat every 6 h and kept 25 h.
    assert_eq!(
        (ack["heartbeat_interval"].as_u64(), ack["ttl"].as_u64()),
        (Some(6 * 3600), Some(25 * 3600))
    );
    let plain: Value = reg(
        Some(&key_b),
        json!({"worker_id": "coord-plain", "url": "http://127.0.0.1:8"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        (plain["heartbeat_interval"].as_u64(), plain["ttl"].as_u64()),
        (Some(60), Some(300))
    );
    let gone = client
        .delete(format!("{}/api/edge/coordinators/coord-plain", edge.url()))
        .bearer_auth(&key_b)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 200);
    // Another key cannot take over or heartbeat for coord-a.
    assert_eq!(reg(Some(&key_b), body.clone()).await.unwrap().status(), 403);
    let hb = client
        .post(format!("{}/api/edge/heartbeat", edge.url()))
        .bearer_auth(&key_b)
        .json(&json!({"id": "coord-a", "load": 0.1}))
        .send()
        .await
        .unwrap();
    assert_eq!(hb.status(), 403);
    let b: Value = client
        .get(format!("{}/api/dht/bootstrap", edge.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(b["count"], 1);
    assert_eq!(
        b["seeds"][0],
        json!({"node_id": "coord-a", "multiaddrs": ["/ip4/127.0.0.1/tcp/4001"], "location": "London"})
    );
    assert_eq!(b["ttl"], 300);
    let h: Value = client
        .get(format!("{}/health", edge.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        h,
        json!({"status": "healthy", "coordinators": 1, "message": "Edge router operational"})
    );
    // Revoking a key locks its coordinators out.
    let keys = edge.admin(&client, "/api/admin/federation-keys").await;
    let id_a = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["label"] == "a")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = client
        .delete(format!("{}/api/admin/federation-keys/{id_a}", edge.url()))
        .bearer_auth(commons_edge::server::test_utils::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let hb = client
        .post(format!("{}/api/edge/heartbeat", edge.url()))
        .bearer_auth(&key_a)
        .json(&json!({"id": "coord-a", "load": 0.1}))
        .send()
        .await
        .unwrap();
    assert_eq!(hb.status(), 401);
    let counts = edge.request_counts(&client).await;
    assert_eq!(counts.get("bootstrap"), Some(&1));
    assert!(counts["federation"] >= 6);
}

#[tokio::test]
async fn edge_bad_input_corpus() {
    let client = reqwest::Client::new();
    let edge = Edge::start(|_| {}).await;
    let key = edge.federation_key(&client, "k").await;
    let ok = client
        .post(format!("{}/api/edge/register", edge.url()))
        .bearer_auth(&key)
        .json(&json!({"id": "keep", "url": "http://127.0.0.1:9"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let big = "x".repeat(70 * 1024);
    // (method, path, federation key, body, status, what the message mentions)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, String, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/api/edge/register",
            Some(&key),
            "{not json".into(),
            400,
            "JSON",
        ),
        (
            "POST",
            "/api/edge/register",
            Some(&key),
            r#"{"id": "x"}"#.into(),
            422,
            "url",
        ),
        (
            "POST",
            "/api/edge/register",
            Some(&key),
            r#"{"url": "gopher://x"}"#.into(),
            422,
            "url",
        ),
        (
            "POST",
            "/api/edge/register",
            Some(&key),
            r#"{"url": "http://127.0.0.1:9", "id": "bad id!"}"#.into(),
            422,
            "id",
        ),
        (
            "POST",
            "/api/edge/register",
            Some(&key),
            format!(
                r#"{{"url": "http://127.0.0.1:9", "region": "{}"}}"#,
                "r".repeat(300)
            ),
            422,
            "region",
        ),
        (
            "POST",
            "/api/edge/register",
            Some(&key),
            big.clone(),
            413,
            "larger",
        ),
        (
            "POST",
            "/api/edge/heartbeat",
            Some(&key),
            r#"{"id": "keep", "load": NaN}"#.into(),
            400,
            "JSON",
        ),
        (
            "POST",
            "/api/edge/heartbeat",
            Some(&key),
            r#"{"id": "keep", "load": 7}"#.into(),
            422,
            "load",
        ),
        (
            "POST",
            "/api/edge/heartbeat",
            Some(&key),
            r#"{"id": "keep", "load": 0.1, "latency_ms": -1}"#.into(),
            422,
            "latency_ms",
        ),
        (
            "POST",
            "/api/edge/heartbeat",
            Some(&key),
            r#"{"id": "nobody", "load": 0.1}"#.into(),
            404,
            "register again",
        ),
        (
            "POST",
            "/api/edge/heartbeat",
            None,
            r#"{"id": "keep", "load": 0.1}"#.into(),
            401,
            "federation key",
        ),
        (
            "POST",
            "/api/worker/register",
            None,
            "{{{".into(),
            400,
            "JSON",
        ),
        (
            "POST",
            "/api/worker/register",
            None,
            big.clone(),
            413,
            "larger",
        ),
        (
            "GET",
            "/api/admin/coordinators",
            None,
            String::new(),
            401,
            "admin token",
        ),
        ("GET", "/nowhere", None, String::new(), 404, "endpoint"),
        (
            "DELETE",
            "/api/edge/heartbeat",
            None,
            String::new(),
            405,
            "method",
        ),
        ("GET", "/api/service/ocr/x", None, String::new(), 503, "ocr"),
    ];
    for (method, path, token, body, status, mention) in cases {
        let mut req = client
            .request(method.parse().unwrap(), format!("{}{path}", edge.url()))
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{method} {path}");
        let v: Value = r
            .json()
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON"));
        assert!(v["error"].is_string(), "{method} {path}: {v}");
        assert!(
            v["message"].as_str().unwrap().contains(mention),
            "{method} {path}: {v}"
        );
        assert_eq!(
            client
                .get(format!("{}/health", edge.url()))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    // The stored coordinator is intact.
    let list = edge.admin(&client, "/api/admin/coordinators").await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["coordinators"][0]["url"], "http://127.0.0.1:9");
}
