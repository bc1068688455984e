//! Consumers' API keys end to end on real parts: an edge, a coordinator federated with it with anonymous access off
//! (the default), a real agent running the rag image `cargo xtask images` built. The admin creates keys through the
//! admin API; service requests through the edge and at the coordinator are let through, refused (401, 403) or
//! limited (429 with `Retry-After`) by them, as JSON `{error, message}`.

use commons_agent::agent::Command;
use commons_coordinator::server::test_utils::ADMIN_TOKEN;
use commons_tests::{
    Coordinator, Edge, built_image, eventually, operator_catalogue, start_service_agent,
};
use serde_json::{Value, json};

async fn admin(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    as_admin(client, method, url, body, ADMIN_TOKEN).await
}

async fn as_admin(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
    token: &str,
) -> (u16, Value) {
    let mut req = client.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// A service request (the collections of rag) with `key`: its status, `Retry-After` and body.
async fn ask(client: &reqwest::Client, base: &str, key: Option<&str>) -> (u16, Option<u64>, Value) {
    let mut req = client.get(format!("{base}/api/service/rag/collections"));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    (status, after, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn api_keys_decide_who_uses_the_pool_at_the_edge_and_at_the_coordinator() {
    let client = reqwest::Client::new();
    let edge = Edge::start(|_| {}).await;
    let federation = edge.federation_key(&client, "keys").await;
    let rag = format!(
        "[[service]]\nname = \"rag\"\nimage = {:?}\nport = 8000\nmin_ram = \"64MB\"\nmin_cores = 1\nreplicas = 1\n",
        built_image("rag")
    );
    let c = Coordinator::federated(&edge, &federation, 200, |cfg, dir| {
        cfg.catalogue = Some(operator_catalogue(dir, &rag));
        cfg.heartbeat_interval_secs = 1;
        cfg.anonymous_access = false;
    })
    .await;
    assert!(eventually(10, || async { edge.coordinator_count(&client).await == 1 }).await);
    let dir = tempfile::tempdir().unwrap();
    let instance = format!("keys-{}", std::process::id());
    let agent = start_service_agent(&edge.url(), &instance, dir.path()).await;
    assert!(
        eventually(60, || async {
            c.admin(&client, "/api/admin/workers").await["workers"][0]["containers"][0]["state"]
                == "running"
        })
        .await,
        "rag serves: {}",
        c.admin(&client, "/api/admin/workers").await
    );
    let keys = format!("{}/api/admin/keys", c.url());
    let (edge_url, coordinator_url) = (edge.url(), c.url());

    // Without a key: 401 everywhere, as JSON, with the scheme to use.
    for base in [&edge_url, &coordinator_url] {
        let (status, _, body) = ask(&client, base, None).await;
        assert_eq!(status, 401, "{base}: {body}");
        assert_eq!(body["error"], "unauthorized");
        assert!(
            body["message"].as_str().unwrap().contains("API key"),
            "{body}"
        );
    }

    // The admin creates a key for rag with a daily quota of 4, and one for llm only.
    let (status, created) = admin(
        &client,
        reqwest::Method::POST,
        keys.clone(),
        Some(json!({"name": "lab", "services": ["rag"], "rate_per_minute": 600, "daily_requests": 4})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let lab = created["key"].as_str().unwrap().to_owned();
    assert!(lab.starts_with("ck_"));
    let (_, chat) = admin(
        &client,
        reqwest::Method::POST,
        keys.clone(),
        Some(json!({"name": "chat", "services": ["llm"]})),
    )
    .await;
    // A bad policy names its field.
    let (status, bad) = admin(
        &client,
        reqwest::Method::POST,
        keys.clone(),
        Some(json!({"name": "x", "rate_per_minute": 0})),
    )
    .await;
    assert_eq!(
        (
            status,
            bad["message"]
                .as_str()
                .unwrap()
                .starts_with("rate_per_minute")
        ),
        (422, true),
        "{bad}"
    );

    // The key works through the edge and at the coordinator; the other key is for another service.
    for base in [&edge_url, &coordinator_url] {
        let (status, _, body) = ask(&client, base, Some(&lab)).await;
        assert_eq!(status, 200, "{base}: {body}");
        let (status, _, body) = ask(&client, base, chat["key"].as_str()).await;
        assert_eq!(
            (status, &body["error"]),
            (403, &json!("forbidden")),
            "{body}"
        );
    }
    // Two more, then the daily quota is spent: 429 until midnight (UTC).
    for _ in 0..2 {
        assert_eq!(ask(&client, &edge_url, Some(&lab)).await.0, 200);
    }
    let (status, after, body) = ask(&client, &edge_url, Some(&lab)).await;
    assert_eq!(
        (status, &body["error"]),
        (429, &json!("quota_exceeded")),
        "{body}"
    );
    assert!(
        after.is_some_and(|s| (1..=86_400).contains(&s)),
        "{after:?}"
    );
    let (_, list) = admin(&client, reqwest::Method::GET, keys.clone(), None).await;
    // Keys made in the same millisecond list in id order: find it by name.
    let lab_row = list["keys"]
        .as_array()
        .and_then(|k| k.iter().find(|k| k["name"] == "lab"));
    assert_eq!(
        lab_row.map(|k| k["requests_today"].clone()),
        Some(json!(4)),
        "{list}"
    );
    assert!(
        list.to_string().find(&lab).is_none(),
        "the list never shows a key"
    );

    // A key's rate: two at once, then 429 with the wait.
    let (_, slow) = admin(
        &client,
        reqwest::Method::POST,
        keys.clone(),
        Some(json!({"name": "slow", "rate_per_minute": 2})),
    )
    .await;
    let slow_key = slow["key"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        assert_eq!(ask(&client, &edge_url, Some(&slow_key)).await.0, 200);
    }
    let (status, after, body) = ask(&client, &edge_url, Some(&slow_key)).await;
    assert_eq!(
        (status, &body["error"]),
        (429, &json!("rate_limited")),
        "{body}"
    );
    assert!(after.is_some_and(|s| (1..=30).contains(&s)), "{after:?}");

    // Rotating gives a new secret; the old one is refused at once.
    let (status, rotated) = admin(
        &client,
        reqwest::Method::POST,
        format!("{keys}/{}/rotate", chat["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(ask(&client, &edge_url, chat["key"].as_str()).await.0, 401);
    assert_eq!(
        ask(&client, &edge_url, rotated["key"].as_str()).await.0,
        403
    );

    // Revoking: refused at the edge and at the coordinator from the next request on; kept on record.
    let (status, revoked) = admin(
        &client,
        reqwest::Method::DELETE,
        format!("{keys}/{}", slow["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{revoked}");
    assert!(revoked["revoked_at_ms"].as_i64().is_some());
    for base in [&edge_url, &coordinator_url] {
        let (status, _, body) = ask(&client, base, Some(&slow_key)).await;
        assert_eq!(status, 401, "{base}: {body}");
    }
    let (_, list) = admin(&client, reqwest::Method::GET, keys.clone(), None).await;
    assert_eq!(list["keys"].as_array().unwrap().len(), 3, "{list}");
    let (status, _) = admin(
        &client,
        reqwest::Method::DELETE,
        format!("{keys}/key_nope"),
        None,
    )
    .await;
    assert_eq!(status, 404);

    // The federation's keys: created at the edge, they work at every coordinator (which fetches them when the
    // version in the edge's heartbeat answer changes), through the edge and directly; revoked at the edge, they are
    // refused everywhere within a heartbeat.
    let edge_keys = format!("{edge_url}/api/admin/keys");
    let edge_admin = commons_edge::server::test_utils::ADMIN_TOKEN;
    let (status, fed) = as_admin(
        &client,
        reqwest::Method::POST,
        edge_keys.clone(),
        Some(json!({"name": "federation", "services": ["rag"]})),
        edge_admin,
    )
    .await;
    assert_eq!(status, 201, "{fed}");
    let fed_key = fed["key"].as_str().unwrap().to_owned();
    assert!(
        eventually(10, || async {
            ask(&client, &coordinator_url, Some(&fed_key)).await.0 == 200
        })
        .await,
        "the coordinator takes the edge's key"
    );
    assert_eq!(ask(&client, &edge_url, Some(&fed_key)).await.0, 200);
    let (status, _) = as_admin(
        &client,
        reqwest::Method::DELETE,
        format!("{edge_keys}/{}", fed["id"].as_str().unwrap()),
        None,
        edge_admin,
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        eventually(10, || async {
            ask(&client, &coordinator_url, Some(&fed_key)).await.0 == 401
                && ask(&client, &edge_url, Some(&fed_key)).await.0 == 401
        })
        .await,
        "a key revoked at the edge is refused at the coordinator"
    );

    // Accounting and credit. The worker earns for the requests it completed, not for one it failed (a search of a
    // collection it does not have: 404 from the rag service); the usage report counts both against the key.
    let (_, acct) = admin(
        &client,
        reqwest::Method::POST,
        keys.clone(),
        Some(json!({"name": "acct", "services": ["rag"]})),
    )
    .await;
    let (acct_id, acct_key) = (
        acct["id"].as_str().unwrap().to_owned(),
        acct["key"].as_str().unwrap().to_owned(),
    );
    let worker_id = c.admin(&client, "/api/admin/workers").await["workers"][0]["worker_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let credit = || async {
        let board = c.admin(&client, "/api/volunteers").await;
        board["volunteers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["worker_id"] == worker_id.as_str())
            .map_or(0, |v| v["credit"]["requests"].as_u64().unwrap())
    };
    // What the requests above earned, once the ledger has them (it writes every 100 ms in tests).
    let mut before = credit().await;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        let now = credit().await;
        if std::mem::replace(&mut before, now) == now && now > 0 {
            break;
        }
    }
    assert!(before > 0, "the requests served above earn credit");
    for _ in 0..3 {
        assert_eq!(ask(&client, &edge_url, Some(&acct_key)).await.0, 200);
    }
    let failed = client
        .post(format!(
            "{edge_url}/api/service/rag/collections/nowhere/search"
        ))
        .bearer_auth(&acct_key)
        .json(&json!({"vector": [0.5, 0.5], "limit": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status().as_u16(), 404, "the worker fails it");
    assert!(
        eventually(10, || async { credit().await == before + 3 }).await,
        "credit {} after {before}",
        credit().await
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        credit().await,
        before + 3,
        "the failed request earns nothing"
    );
    let usage = c
        .admin(&client, "/api/admin/usage?hours=1&bucket_minutes=1")
        .await;
    let mine = usage["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == acct_id.as_str())
        .unwrap_or_else(|| panic!("{usage}"));
    assert_eq!(
        (&mine["totals"]["requests"], &mine["totals"]["completed"]),
        (&json!(4), &json!(3)),
        "{mine}"
    );
    assert_eq!(mine["services"][0]["service"], "rag");
    assert!(mine["totals"]["bytes_out"].as_u64().unwrap() > 0, "{mine}");
    let (status, bad) = admin(
        &client,
        reqwest::Method::GET,
        format!("{coordinator_url}/api/admin/usage?hours=0"),
        None,
    )
    .await;
    assert_eq!(
        (status, &bad["error"]),
        (422, &json!("invalid_field")),
        "{bad}"
    );
    // The volunteer's own view: what it served today equals its credit (all of it was earned today), and its
    // hours grow with its heartbeats.
    let (status, mine) = admin(
        &client,
        reqwest::Method::GET,
        format!("{coordinator_url}/api/worker/{worker_id}/contribution"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(mine["today"][0]["service"], "rag", "{mine}");
    assert_eq!(mine["today"][0]["requests"], json!(before + 3), "{mine}");
    assert!(mine["credit"]["hours"].as_f64().unwrap() > 0.0, "{mine}");
    // The agent shows it in words (it reads it every ten heartbeats, a second apart here).
    let mut session = agent.session.clone();
    let said = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        session.wait_for(|s| {
            s.contribution
                .as_deref()
                .is_some_and(|c| c.contains(&format!("Today you served {} requests", before + 3)))
        }),
    )
    .await;
    assert!(said.is_ok(), "{:?}", agent.session.borrow().contribution);

    agent.send(Command::Quit).await;
    agent.join().await.unwrap();
}
