//! The pool answers a real request, end to end on real parts: an edge, a coordinator registered with it, two agents
//! (the library the headless binary runs) joining through the edge, and a real container engine running the ocr
//! image `cargo xtask images` built, each container without network and reached over its socket.
//! `.ci/test` starts the engine (DOCKER_HOST) and builds the images first.

use commons_agent::agent::Command;
use commons_tests::{
    eventually, ocr_catalogue, ocr_pool, pool_tuned, service_engine, start_service_agent,
};
use serde_json::{Value, json};

async fn ocr(client: &reqwest::Client, base: &str, png: &[u8]) -> (u16, Value) {
    ocr_with(client, base, png, None).await
}

async fn ocr_with(
    client: &reqwest::Client,
    base: &str,
    png: &[u8],
    key: Option<&str>,
) -> (u16, Value) {
    let mut req = client
        .post(format!("{base}/api/service/ocr/ocr"))
        .body(png.to_vec());
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    match req.send().await {
        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
        Err(e) => (0, Value::String(e.to_string())),
    }
}

/// A page that reads "Volunteers answer / this request", as a PNG.
fn sample_png() -> Vec<u8> {
    commons_ocr::sample::png_of(&commons_ocr::sample::pdf_with_text(&[
        "Volunteers answer",
        "this request",
    ]))
    .expect("pdftoppm")
}

/// Whether the pool reads the page right within 30 s: until every service listens on its socket, a request can
/// meet one that is still starting.
async fn until_it_reads(client: &reqwest::Client, base: &str, png: &[u8]) -> bool {
    eventually(30, || async {
        let (status, v) = ocr(client, base, png).await;
        status == 200 && reads(&v)
    })
    .await
}

fn reads(v: &Value) -> bool {
    v["text"]
        .as_str()
        .is_some_and(|t| t.contains("Volunteers answer") && t.contains("this request"))
}

#[tokio::test]
async fn an_ocr_request_is_answered_through_edge_coordinator_agent_and_container() {
    let client = reqwest::Client::new();
    let (edge, c) = ocr_pool(&client, 2).await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let pid = std::process::id();
    let instances = [format!("svc-a-{pid}"), format!("svc-b-{pid}")];
    let a = start_service_agent(&edge.url(), &instances[0], dirs[0].path()).await;
    let b = start_service_agent(&edge.url(), &instances[1], dirs[1].path()).await;
    let signer = a.session.borrow().catalogue.clone().unwrap_or_default();
    assert!(
        signer.contains("signed by your operator key"),
        "the session says whose catalogue runs: {signer}"
    );
    let ids = [
        a.session.borrow().worker_id.clone(),
        b.session.borrow().worker_id.clone(),
    ];
    // Both containers run.
    assert!(
        eventually(60, || async {
            let list = c.admin(&client, "/api/admin/workers").await;
            list["workers"].as_array().is_some_and(|ws| {
                ws.len() == 2 && ws.iter().all(|w| w["containers"][0]["state"] == "running")
            })
        })
        .await,
        "both ocr containers run: {}",
        c.admin(&client, "/api/admin/workers").await
    );
    let png = sample_png();
    assert!(
        until_it_reads(&client, &edge.url(), &png).await,
        "the first answer: {:?}",
        ocr(&client, &edge.url(), &png).await
    );
    for i in 0..20 {
        let (status, v) = ocr(&client, &edge.url(), &png).await;
        assert_eq!(status, 200, "request {i}: {v}");
        assert!(reads(&v), "request {i}: {v}");
    }
    // Both workers served some of them (a weighted random choice: 2^-19 that one served none).
    let served = |id: &str, list: &Value| {
        list["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["worker_id"] == id)
            .map_or(0, |w| w["requests"].as_u64().unwrap_or(0))
    };
    let list = c.admin(&client, "/api/admin/workers").await;
    assert!(
        ids.iter().all(|id| served(id, &list) > 0),
        "both workers served requests: {list}"
    );

    // One agent dies (as kill -9 would): the next requests go to the other.
    a.abort().await;
    for i in 0..5 {
        let (status, v) = ocr(&client, &edge.url(), &png).await;
        assert_eq!(status, 200, "after the crash, request {i}: {v}");
        assert!(reads(&v));
    }
    b.send(Command::Quit).await;
    b.join().await.unwrap();
    // The crashed agent left its container; a volunteer's restart would adopt it, the test removes it.
    service_engine(&edge.url(), &instances[0], dirs[0].path())
        .await
        .remove_all()
        .await
        .unwrap();
    let counts = edge.request_counts(&client).await;
    assert!(
        counts.get("service").copied().unwrap_or(0) >= 26,
        "{counts:?}"
    );
}

/// The socket a service agent's container listens on, under the agent's folder.
fn container_socket(dir: &std::path::Path) -> std::path::PathBuf {
    fn find(dir: &std::path::Path) -> Option<std::path::PathBuf> {
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == "http.sock") {
                return Some(p);
            }
            if p.is_dir()
                && let Some(found) = find(&p)
            {
                return Some(found);
            }
        }
        None
    }
    find(dir).expect("the container's socket")
}

#[tokio::test]
async fn a_volunteer_whose_container_answers_wrong_text_is_outvoted_and_drained() {
    let client = reqwest::Client::new();
    // Every ocr request is checked against a second worker (2 % in production).
    let (edge, c) = pool_tuned(
        &client,
        |dir| ocr_catalogue(dir, 3),
        |cfg| cfg.verify_fraction = 1.0,
    )
    .await;
    // A consumer's key whose daily quota is exactly what this test sends: the checks cost it nothing.
    const SENT: u64 = 40;
    let key = client
        .post(format!("{}/api/admin/keys", c.url()))
        .bearer_auth(commons_coordinator::server::test_utils::ADMIN_TOKEN)
        .json(&json!({"name": "checked", "rate_per_minute": 600, "daily_requests": SENT}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let dirs = [(); 3].map(|_| tempfile::tempdir().unwrap());
    let pid = std::process::id();
    let mut agents = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        agents.push(start_service_agent(&edge.url(), &format!("chk-{i}-{pid}"), d.path()).await);
    }
    let ids: Vec<String> = agents
        .iter()
        .map(|a| a.session.borrow().worker_id.clone())
        .collect();
    let workers = || async { c.admin(&client, "/api/admin/workers").await };
    assert!(
        eventually(90, || async {
            workers().await["workers"].as_array().is_some_and(|ws| {
                ws.len() == 3 && ws.iter().all(|w| w["containers"][0]["state"] == "running")
            })
        })
        .await,
        "three ocr containers run: {}",
        workers().await
    );
    let png = sample_png();
    assert!(
        until_it_reads(&client, &edge.url(), &png).await,
        "the containers serve"
    );
    let worker = |list: &Value, id: &str| {
        list["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["worker_id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    };

    // The third volunteer's machine answers garbage in the right shape: a server of the test's takes over its
    // container's socket (as a volunteer who tampers with the machine would), health checks included.
    let socket = container_socket(dirs[2].path());
    std::fs::remove_file(&socket).unwrap();
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let wrong = axum::Router::new()
        .route(
            "/ocr",
            axum::routing::post(|| async {
                axum::Json(json!({"text": "Volunteers ignore\nthat request", "words": [], "language": "eng", "ms": 3}))
            }),
        )
        .route(
            "/health",
            axum::routing::get(|| async { axum::Json(json!({"status": "ok", "languages": ["eng"]})) }),
        );
    let impostor = tokio::spawn(async move { axum::serve(listener, wrong).await });

    // Every answer is one answer, right or (until it is drained) the impostor's; the impostor is outvoted by the
    // two others and drained within a few requests.
    let mut drained_after = None;
    for i in 0..SENT - 10 {
        let (status, v) = ocr_with(&client, &edge.url(), &png, Some(&key)).await;
        assert_eq!(status, 200, "request {i}: {v}");
        assert!(v["text"].is_string(), "request {i}: {v}");
        if worker(&workers().await, &ids[2])["drained"] == true {
            drained_after = Some(i + 1);
            break;
        }
    }
    // The last check may still be under way.
    if drained_after.is_none() {
        assert!(
            eventually(5, || async {
                worker(&workers().await, &ids[2])["drained"] == true
            })
            .await,
            "the impostor is drained: {}",
            workers().await
        );
        drained_after = Some(SENT - 10);
    }
    let drained_after = drained_after.unwrap();
    let sent_so_far = drained_after;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let list = workers().await;
    let bad = worker(&list, &ids[2]);
    assert!(bad["trust"].as_f64().unwrap() < 0.2, "{bad}");
    for id in &ids[..2] {
        let good = worker(&list, id);
        assert!(
            good["trust"].as_f64().unwrap() > 0.5,
            "confirmed answers raise trust: {good}"
        );
        assert_eq!(good["drained"], false);
    }
    // Drained: it gets nothing more, and every answer reads right.
    let served_before = bad["requests"].as_u64().unwrap();
    for i in sent_so_far..SENT {
        let (status, v) = ocr_with(&client, &edge.url(), &png, Some(&key)).await;
        assert_eq!(status, 200, "request {i}: {v}");
        assert!(reads(&v), "after the drain, request {i}: {v}");
    }
    assert_eq!(
        worker(&workers().await, &ids[2])["requests"]
            .as_u64()
            .unwrap(),
        served_before,
        "a drained worker gets no requests"
    );
    // The key paid for what it sent and no more: its quota is spent only now.
    let (status, v) = ocr_with(&client, &edge.url(), &png, Some(&key)).await;
    assert_eq!(status, 429, "{v}");
    let metrics = client
        .get(format!("{}/metrics", c.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("commons_verify_total{result=\"outvoted\"}"),
        "{metrics}"
    );
    eprintln!("the impostor was drained after {drained_after} requests");
    // Its volunteer hears it, in words, with what to do.
    let problem = || {
        agents[2]
            .session
            .borrow()
            .problem
            .clone()
            .unwrap_or_default()
    };
    assert!(
        eventually(10, || async {
            problem().contains("answered the same requests differently")
        })
        .await,
        "the drained volunteer is told: {:?}",
        problem()
    );

    // The operator trusts it again (its volunteer fixed the fault): it is no longer drained, and the window's
    // problem goes. A trust out of range, or an unknown worker, is refused.
    let set_trust = |id: String, body: Value| {
        let client = client.clone();
        let url = c.url();
        async move {
            let r = client
                .put(format!("{url}/api/admin/workers/{id}/trust"))
                .bearer_auth(commons_coordinator::server::test_utils::ADMIN_TOKEN)
                .json(&body)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or_default(),
            )
        }
    };
    let (status, v) = set_trust(ids[2].clone(), json!({"trust": 2.0})).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (422, Some("invalid_field")),
        "{v}"
    );
    let (status, _) = set_trust("00".repeat(16), json!({"trust": 0.5})).await;
    assert_eq!(status, 404);
    let (status, v) = set_trust(ids[2].clone(), json!({"trust": 0.5})).await;
    assert_eq!((status, &v["drained"]), (200, &json!(false)), "{v}");
    assert!(
        eventually(10, || async {
            agents[2].session.borrow().problem.is_none()
        })
        .await,
        "the problem goes: {:?}",
        problem()
    );

    impostor.abort();
    for a in agents {
        a.send(Command::Quit).await;
        a.join().await.unwrap();
    }
}
