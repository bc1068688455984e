//! TLS on every hop, with a test CA this process trusts (as `COMMONS_CA_FILE` makes a program trust it): a tunnel's
//! `https://` endpoint is routed to over a kept connection, an endpoint whose certificate nothing vouches for is
//! not; an edge and a coordinator serve HTTPS, an agent joins through them and is reached over its channel inside
//! TLS.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use commons_agent::agent::{self, State};
use commons_agent::credentials::FileStore;
use commons_agent::hardware::RecordedProbe;
use commons_agent::settings::Settings;
use commons_server::serve::Limits;
use commons_tests::tls::{Pair, test_ca};
use commons_tests::{
    Coordinator, Edge, Seen, catalogue_only, echo_routes, eventually, heartbeat, register,
};
use serde_json::Value;

/// A worker's gateway behind a tunnel: the echo routes served over TLS with `pair`, at `https://localhost:port`.
async fn tls_worker(name: &str, pair: &Pair) -> (String, Arc<Seen>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Seen::default());
    let tls = commons_server::tls::acceptor(&pair.cert, &pair.key).unwrap();
    let listener = commons_server::serve::listen("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = echo_routes(name, seen.clone());
    let task = tokio::spawn(async move {
        let _ = commons_server::serve::run(
            listener,
            Some(tls),
            app,
            Limits::default(),
            std::future::pending(),
        )
        .await;
    });
    (format!("https://localhost:{port}"), seen, task)
}

#[tokio::test]
async fn a_tunnels_https_endpoint_is_routed_and_one_nobody_vouches_for_is_not() {
    let ca = test_ca();
    let c =
        Coordinator::start(|c, dir| c.catalogue = Some(catalogue_only(dir, &[("echo", 3)]))).await;
    let client = reqwest::Client::new();
    let (url, seen, _task) = tls_worker("tunnelled", &ca.server).await;
    let w = register(&client, &c.url(), &url).await;
    heartbeat(&client, &c.url(), &w, "healthy", 0.1).await;
    let listed = c
        .admin(&client, &format!("/api/admin/workers/{}", w.id))
        .await;
    assert_eq!(listed["path"], "tunnel", "{listed}");
    for i in 0..3 {
        let r = client
            .post(format!("{}/api/service/echo/v1/read?page=1", c.url()))
            .body(vec![7u8; 1000])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(r.headers()["x-commons-path"], "tunnel");
        let echoed: Value = r.json().await.unwrap();
        assert_eq!(echoed["worker"], "tunnelled");
        assert_eq!(echoed["path"], "v1/read");
        assert_eq!(echoed["query"], "page=1");
        assert_eq!(echoed["body_len"], 1000);
        // The tunnel's front routes by name: the Host it gets is the endpoint's.
        assert_eq!(echoed["host"], url.trim_start_matches("https://"));
        // The gateway's key travels inside TLS.
        let key = commons_server::auth::gateway_key(&commons_server::auth::hash_token(&w.token));
        assert_eq!(echoed["gateway_key"], key);
        // The TLS connection is kept for the next request (one, taken and kept again each time).
        assert!(
            eventually(5, || async { c.server.state().upstreams.kept() == 1 }).await,
            "request {i}: {} kept",
            c.server.state().upstreams.kept()
        );
    }
    assert_eq!(seen.requests.load(Ordering::Relaxed), 3);

    // The same names, but a self-signed certificate: the coordinator does not send the request there.
    let c2 =
        Coordinator::start(|c, dir| c.catalogue = Some(catalogue_only(dir, &[("echo", 3)]))).await;
    let (url, seen, _task) = tls_worker("stranger", &ca.stranger).await;
    let w = register(&client, &c2.url(), &url).await;
    heartbeat(&client, &c2.url(), &w, "healthy", 0.1).await;
    let r = client
        .get(format!("{}/api/service/echo/ping", c2.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].is_string() && body["message"].is_string(),
        "{body}"
    );
    assert_eq!(seen.requests.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn an_agent_joins_through_an_https_edge_and_coordinator_and_is_reached_over_its_channel() {
    let ca = test_ca();
    let tls = |c: &mut Option<std::path::PathBuf>, k: &mut Option<std::path::PathBuf>| {
        *c = Some(ca.server.cert.clone());
        *k = Some(ca.server.key.clone());
    };
    // Clients trust the test CA as COMMONS_CA_FILE makes a program trust it.
    let client = commons_server::tls::http().build().unwrap();
    let edge = Edge::start(|e| tls(&mut e.tls_cert, &mut e.tls_key)).await;
    let edge_url = edge.url();
    assert!(edge_url.starts_with("https://"), "{edge_url}");
    let key = edge.federation_key(&client, "pool").await;
    let c = Coordinator::federated(&edge, &key, 200, |cfg, _| {
        tls(&mut cfg.tls_cert, &mut cfg.tls_key);
        cfg.heartbeat_interval_secs = 1;
    })
    .await;
    assert!(c.url().starts_with("https://"), "{}", c.url());
    // The coordinator registered with the edge over HTTPS.
    assert!(eventually(5, || async { edge.coordinator_count(&client).await == 1 }).await);

    // The agent joins through the edge, which forwards its registration to the coordinator over TLS. It also has
    // a tunnel-style https endpoint in front of it, whose round trip it measures.
    let (tunnel, _seen, _tunnel_task) = tls_worker("agent-tunnel", &ca.server).await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = agent::start(
        Settings {
            coordinator_url: None,
            edge_url: edge_url.clone(),
            endpoint: Some(tunnel.clone()),
            containers: false,
            dht: false,
            ..Settings::default()
        },
        Arc::new(FileStore::new(dir.path().join("c.json"))),
        Arc::new(RecordedProbe(Err(commons_agent::hardware::NoGpu(
            "no driver in tests".into(),
        )))),
    );
    assert_eq!(
        a.wait_for(Duration::from_secs(15), |s| *s == State::Active)
            .await,
        Some(State::Active)
    );
    assert_eq!(a.session.borrow().coordinator_url, c.url());
    let id = a.session.borrow().worker_id.clone();
    // Its channel, opened inside TLS, is how the coordinator reaches it.
    assert!(
        eventually(10, || async {
            c.admin(&client, &format!("/api/admin/workers/{id}")).await["path"] == "reverse"
        })
        .await
    );
    // Its paths: the channel, and the tunnel with its measured round trip.
    let measured = eventually(10, || async {
        let w = c.admin(&client, &format!("/api/admin/workers/{id}")).await;
        let has = |kind: &str| {
            w["paths"].as_array().is_some_and(|p| {
                p.iter()
                    .any(|p| p["kind"] == kind && p["rtt_ms"].is_u64() && p["connections"] == 1)
            })
        };
        has("reverse") && has("tunnel")
    })
    .await;
    assert!(
        measured,
        "the worker lists its channel and its tunnel, each with a round trip: {}",
        c.admin(&client, &format!("/api/admin/workers/{id}")).await
    );

    // A client that does not trust the test CA is refused at the handshake; plain HTTP gets no answer.
    let untrusting = reqwest::Client::new();
    let e = untrusting
        .get(format!("{}/health", c.url()))
        .send()
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("UnknownIssuer"), "{e:?}");
    let plain = c.url().replace("https://", "http://");
    assert!(
        untrusting
            .get(format!("{plain}/health"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .is_err()
    );
    a.send(commons_agent::agent::Command::Quit).await;
    a.join().await.unwrap();
}
