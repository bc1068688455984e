//! The pool answers a real request, end to end on real parts: an edge, a coordinator registered with it, two agents
//! (the library the headless binary runs) joining through the edge, and a real container engine running the ocr
//! image `cargo xtask images` built, each container without network and reached over its socket.
//! `.ci/test` starts the engine (DOCKER_HOST) and builds the images first.

use commons_agent::agent::Command;
use commons_tests::{eventually, ocr_pool, service_engine, start_service_agent};
use serde_json::Value;

async fn ocr(client: &reqwest::Client, base: &str, png: &[u8]) -> (u16, Value) {
    match client
        .post(format!("{base}/api/service/ocr/ocr"))
        .body(png.to_vec())
        .send()
        .await
    {
        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
        Err(e) => (0, Value::String(e.to_string())),
    }
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
    let png = commons_ocr::sample::png_of(&commons_ocr::sample::pdf_with_text(&[
        "Volunteers answer",
        "this request",
    ]))
    .expect("pdftoppm");
    // Until both services listen on their sockets, a request can meet one that is still starting.
    assert!(
        eventually(30, || async {
            let (status, v) = ocr(&client, &edge.url(), &png).await;
            status == 200 && reads(&v)
        })
        .await,
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
