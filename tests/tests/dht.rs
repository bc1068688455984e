//! The DHT end to end: an edge, two coordinators and twenty agents, all with real DHT nodes on loopback; a
//! coordinator and then the edge killed under them.

use std::sync::Arc;
use std::time::Duration;

use commons_agent::agent::{self, AgentHandle, State};
use commons_agent::credentials::FileStore;
use commons_agent::dht::{Route, find_worker};
use commons_agent::hardware::RecordedProbe;
use commons_agent::settings::Settings;
use commons_tests::{Coordinator, Edge, catalogue_only, eventually};

fn no_gpu() -> Arc<RecordedProbe> {
    Arc::new(RecordedProbe(Err(commons_agent::hardware::NoGpu(
        "no driver in tests".into(),
    ))))
}

fn dht_coordinator(c: &mut commons_coordinator::Config, dir: &std::path::Path) {
    c.dht = true;
    c.dht_listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
    c.dht_refresh_secs = 5;
    c.heartbeat_interval_secs = 1;
    c.region = Some("eu".into());
    c.catalogue = Some(catalogue_only(dir, &[("ocr", 100)]));
}

fn dht_agent(edge: &str, dir: &std::path::Path, i: usize) -> Settings {
    Settings {
        edge_url: edge.into(),
        containers: false,
        region: Some("eu".into()),
        instance: format!("a{i}"),
        probe_interval_ms: 500,
        dht: true,
        dht_listen: "/ip4/127.0.0.1/tcp/0".into(),
        dht_server: true,
        dht_refresh_secs: 5,
        dht_stagger_ms: 500,
        // Other tests share the machine's two cores: give the join time before falling back to the edge.
        dht_join_wait_ms: 20_000,
        dht_seed_cache: Some(dir.join(format!("seeds-{i}.json"))),
        catalogue_keys: vec![commons_tests::test_catalogue_key().1.clone()],
        ..Settings::default()
    }
}

/// Whether an ocr request through `coordinator` reaches a worker's gateway (which answers that it runs no ocr
/// container: the agents here run none), and the answer.
async fn reaches_a_gateway(
    client: &reqwest::Client,
    coordinator: &str,
) -> (bool, serde_json::Value) {
    let r = client
        .get(format!("{coordinator}/api/service/ocr/status"))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    let reached = body["message"]
        .as_str()
        .unwrap_or("")
        .contains("this worker does not run");
    (reached, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_fail_over_through_the_dht_and_the_edge_sees_nothing_of_it() {
    let client = reqwest::Client::new();
    let edge = Edge::start(|_| {}).await;
    let k1 = edge.federation_key(&client, "one").await;
    let k2 = edge.federation_key(&client, "two").await;
    let c1 = Coordinator::federated(&edge, &k1, 60_000, dht_coordinator).await;
    assert!(eventually(10, || async { edge.coordinator_count(&client).await == 1 }).await);
    // The second joins the first through the seeds the edge lists.
    let c2 = Coordinator::federated(&edge, &k2, 60_000, dht_coordinator).await;
    assert!(eventually(10, || async { edge.coordinator_count(&client).await == 2 }).await);
    let dht2 = c2.server.state().dht.get().unwrap().clone();
    assert!(
        eventually(10, || async {
            dht2.snapshot().await.stats.routing_table >= 1
        })
        .await,
        "the coordinators are linked in the DHT"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut agents: Vec<AgentHandle> = (0..20)
        .map(|i| {
            let creds = Arc::new(FileStore::new(dir.path().join(format!("creds-{i}.json"))));
            agent::start(dht_agent(&edge.url(), dir.path(), i), creds, no_gpu())
        })
        .collect();
    for a in &mut agents {
        assert_eq!(
            a.wait_for(Duration::from_secs(30), |s| *s == State::Active)
                .await,
            Some(State::Active)
        );
    }
    let before = edge.request_counts(&client).await;
    // First starts: one bootstrap request per agent and per coordinator; registrations went straight to
    // coordinators found in the DHT.
    assert_eq!(
        before.get("bootstrap").copied().unwrap_or(0),
        20 + 2,
        "{before:?}"
    );
    assert_eq!(
        before.get("registration").copied().unwrap_or(0),
        0,
        "{before:?}"
    );

    // Discovery: DHT first.
    let d0 = agents[0].dht().unwrap();
    assert!(
        eventually(20, || async {
            d0.service_providers("ocr").await.len() == 20
        })
        .await,
        "every agent is found as an ocr provider"
    );
    match find_worker(Some(&d0), &c1.url(), "ocr").await {
        Route::Direct { endpoint, .. } => assert!(endpoint.starts_with("http://127.0.0.1:")),
        r => panic!("expected a worker from the DHT, got {r:?}"),
    }
    // Fallback: no DHT, or nobody in the DHT offering the service.
    assert_eq!(
        find_worker(None, &c1.url(), "ocr").await,
        Route::Coordinator { url: c1.url() }
    );
    assert_eq!(
        find_worker(Some(&d0), &c1.url(), "rag").await,
        Route::Coordinator { url: c1.url() }
    );

    // A coordinator with no workers of its own routes a service request to a worker it finds in the DHT (here
    // the worker's gateway answers: it runs no container in this test).
    let c3 = Coordinator::start(dht_coordinator).await;
    c3.server
        .state()
        .dht
        .get()
        .unwrap()
        .bootstrap(&dht2.addresses())
        .await
        .unwrap();
    let (reached, body) = reaches_a_gateway(&client, &c3.url()).await;
    assert!(reached, "answered by a worker's gateway: {body}");
    c3.server.abort().await;

    // A DHT node with no peers has no answer either.
    let lonely = commons_agent::dht::start_with(
        &dht_agent(&edge.url(), dir.path(), 99),
        commons_dht::generate_keypair(),
    )
    .await
    .unwrap();
    assert_eq!(
        find_worker(Some(&lonely), &c1.url(), "ocr").await,
        Route::Coordinator { url: c1.url() }
    );
    lonely.shutdown().await;

    // The topology: a coordinator, its registered workers (by peer id, with their services) and its DHT links.
    let topo = c2.admin(&client, "/api/dht/topology").await;
    let workers: Vec<_> = topo["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["type"] == "worker" && n["worker_id"].is_string())
        .collect();
    assert!(!workers.is_empty());
    assert!(
        workers
            .iter()
            .all(|w| w["services"] == serde_json::json!(["ocr"]))
    );
    let stats = c2.admin(&client, "/api/dht/stats").await;
    assert_eq!(stats["enabled"], true);
    assert!(stats["routing_table"].as_u64().unwrap() >= 20, "{stats}");
    assert_eq!(topo["dht_enabled"], true);
    assert!(
        topo["edges"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "dht_link")
    );
    assert_eq!(
        topo["node_count"].as_u64().unwrap() as usize,
        topo["nodes"].as_array().unwrap().len()
    );

    // Kill the coordinator with more agents.
    let on = |url: &str, agents: &[AgentHandle]| {
        agents
            .iter()
            .filter(|a| a.session.borrow().coordinator_url == url)
            .count()
    };
    let (victim, survivor) = if on(&c1.url(), &agents) >= on(&c2.url(), &agents) {
        (c1, c2)
    } else {
        (c2, c1)
    };
    let moving = on(&victim.url(), &agents);
    assert!(moving > 0);
    let survivor_url = survivor.url();
    victim.server.abort().await;
    assert!(
        eventually(30, || async { on(&survivor_url, &agents) == 20 }).await,
        "{} of 20 agents moved to the surviving coordinator",
        on(&survivor_url, &agents)
    );
    for a in &mut agents {
        assert_eq!(
            a.wait_for(Duration::from_secs(10), |s| *s == State::Active)
                .await,
            Some(State::Active)
        );
    }
    let after = edge.request_counts(&client).await;
    for kind in ["bootstrap", "registration", "service"] {
        assert_eq!(
            after.get(kind),
            before.get(kind),
            "{moving} agents failed over; the edge counted {kind} requests: {before:?} → {after:?}"
        );
    }

    // Kill the edge, as kill -9 would (its connections cut, nothing flushed): workers and requests go on through
    // the DHT and the coordinator they know.
    let seen = |list: &serde_json::Value| -> Vec<(String, String)> {
        list["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                let id = w["worker_id"].as_str().unwrap_or_default().to_owned();
                (
                    id,
                    w["last_heartbeat"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let last = seen(
        &survivor
            .admin(&client, "/api/admin/workers?limit=100")
            .await,
    );
    assert_eq!(last.len(), 20);
    let edge_url = edge.url();
    edge.server.abort().await;
    assert!(
        eventually(20, || async {
            let now = seen(
                &survivor
                    .admin(&client, "/api/admin/workers?limit=100")
                    .await,
            );
            now.len() == 20 && now.iter().all(|w| !last.contains(w))
        })
        .await,
        "every worker heartbeats again with the edge gone"
    );
    for a in &mut agents {
        assert_eq!(*a.state.borrow(), State::Active);
    }
    let (reached, body) = reaches_a_gateway(&client, &survivor_url).await;
    assert!(
        reached,
        "a service request reaches a worker without the edge: {body}"
    );
    assert!(matches!(
        find_worker(Some(&d0), &survivor_url, "ocr").await,
        Route::Direct { .. }
    ));
    // A new agent, with the seeds an earlier one cached, joins through the DHT.
    let mut settings = dht_agent(&edge_url, dir.path(), 20);
    settings.dht_seed_cache = Some(dir.path().join("seeds-0.json"));
    let mut late = agent::start(
        settings,
        Arc::new(FileStore::new(dir.path().join("creds-20.json"))),
        no_gpu(),
    );
    assert_eq!(
        late.wait_for(Duration::from_secs(30), |s| *s == State::Active)
            .await,
        Some(State::Active),
        "an agent joins with the edge dead"
    );
    assert_eq!(late.session.borrow().coordinator_url, survivor_url);
    late.abort().await;
    for a in agents {
        a.abort().await;
    }
}
