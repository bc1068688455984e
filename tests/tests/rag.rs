//! The rag service end to end on real parts: an edge, a coordinator, two agents and a real container engine running
//! the rag and llm images `cargo xtask images` built. Texts are embedded with the llm service's `/v1/embeddings`
//! (the tests' tiny model), kept in a rag collection, and found again by the embedding of the same text; every
//! request for the collection reaches the same replica (the catalogue's `sticky_segment`), so a collection written
//! on one worker is never looked for on another.

use commons_agent::agent::Command;
use commons_tests::{
    FileServer, built_image, eventually, llm_service, operator_catalogue, pool, service_engine,
    start_service_agent, tiny_model,
};
use serde_json::{Value, json};

#[tokio::test]
async fn texts_embedded_by_llm_are_found_again_in_a_rag_collection_on_one_replica() {
    let client = reqwest::Client::new();
    let files = FileServer::start().await;
    let (path, sha, size) = tiny_model();
    let url = files.put("tiny.gguf", std::fs::read(path).unwrap());
    let rag = format!(
        "[[service]]\nname = \"rag\"\nimage = {:?}\nport = 8000\nmin_ram = \"64MB\"\nmin_cores = 1\nreplicas = 2\n\
         sticky_segment = 2\n",
        built_image("rag")
    );
    let (edge, c) = pool(&client, |dir| {
        operator_catalogue(dir, &format!("{}{rag}", llm_service(&url, sha, *size, 1)))
    })
    .await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let pid = std::process::id();
    let instances = [format!("rag-a-{pid}"), format!("rag-b-{pid}")];
    let a = start_service_agent(&edge.url(), &instances[0], dirs[0].path()).await;
    let b = start_service_agent(&edge.url(), &instances[1], dirs[1].path()).await;
    let healthy = |list: &Value, name: &str| {
        list["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == name))
            .and_then(|s| s["healthy"].as_u64())
            .unwrap_or(0)
    };
    assert!(
        eventually(90, || async {
            let list = c.admin(&client, "/api/admin/services").await;
            healthy(&list, "rag") == 2 && healthy(&list, "llm") >= 1
        })
        .await,
        "two rag replicas and an llm serve: {}",
        c.admin(&client, "/api/admin/services").await
    );
    let base = edge.url();
    let texts = [
        "volunteers donate their computers",
        "the pool answers requests",
        "models live on the donated disk",
        "a collection lives on one replica",
        "hello world",
        "commons",
    ];
    let r = client
        .post(format!("{base}/v1/embeddings"))
        .json(&json!({"model": "tiny", "input": texts}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let vectors: Vec<Value> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["embedding"].clone())
        .collect();
    assert_eq!(vectors.len(), texts.len());

    let rag_url = format!("{base}/api/service/rag/collections/docs");
    let r = client
        .put(&rag_url)
        .json(&json!({"dimension": 256}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let home = r.headers()["x-commons-worker"].to_str().unwrap().to_owned();
    let points: Vec<Value> = texts
        .iter()
        .zip(&vectors)
        .enumerate()
        .map(|(i, (t, v))| json!({"id": format!("doc{i}"), "vector": v, "text": t, "payload": {"n": i}}))
        .collect();
    let r = client
        .post(format!("{rag_url}/points"))
        .json(&json!({ "points": points }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-commons-worker"].to_str().unwrap(), home);
    // Each text, embedded again, finds itself first: twelve searches, all on the collection's replica.
    for round in 0..2 {
        for (i, t) in texts.iter().enumerate() {
            let q: Value = client
                .post(format!("{base}/v1/embeddings"))
                .json(&json!({"model": "tiny", "input": t}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let r = client
                .post(format!("{rag_url}/search"))
                .json(&json!({"vector": q["data"][0]["embedding"], "limit": 3}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "round {round}, text {i}");
            assert_eq!(
                r.headers()["x-commons-worker"].to_str().unwrap(),
                home,
                "the collection's requests stay on its replica"
            );
            let found: Value = r.json().await.unwrap();
            let first = &found["results"][0];
            assert_eq!(first["id"], format!("doc{i}"), "{found}");
            assert_eq!(first["text"], *t);
            assert_eq!(first["payload"]["n"], i);
            assert!(first["score"].as_f64().unwrap() > 0.999, "{found}");
        }
    }
    // Bad input gets its JSON error.
    let r = client
        .post(format!("{rag_url}/search"))
        .json(&json!({"vector": [1.0, 2.0], "limit": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"], "invalid_field", "{e}");
    let r = client
        .post(format!("{base}/api/service/rag/collections/nope/search"))
        .json(&json!({"vector": [1.0], "limit": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    for (h, (instance, dir)) in [a, b].into_iter().zip(instances.iter().zip(&dirs)) {
        h.send(Command::Quit).await;
        h.join().await.unwrap();
        let engine = service_engine(&edge.url(), instance, dir.path()).await;
        assert!(
            engine.ours().await.unwrap().is_empty(),
            "nothing left behind"
        );
    }
}
