//! The worker and admin API through `oneshot` on a temp-file SQLite.

mod common;

use axum::http::StatusCode;
use common::*;
use commons_coordinator::server::test_utils::ADMIN_TOKEN;
use serde_json::json;

#[tokio::test]
async fn legacy_registration_answers_legacy_fields() {
    let app = app().await;
    let r = app
        .post(
            "/api/worker/register",
            None,
            &json!({"capabilities": {"cpu_cores": 8, "ram": "32GB", "storage": "252.0GB", "gpu_type": "NVIDIA RTX 4090", "gpu_memory": "24GB"},
                    "ip_address": "10.1.2.3", "tunnel_url": "https://abc.trycloudflare.com"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    for key in [
        "worker_id",
        "tier",
        "assigned_containers",
        "heartbeat_url",
        "heartbeat_interval",
        "coordinator_url",
        "tunnel_url",
        "endpoint",
        "worker_token",
    ] {
        assert!(r.body.get(key).is_some(), "missing {key}: {}", r.body);
    }
    assert_eq!(r.body["tier"], 1);
    assert_eq!(r.body["heartbeat_url"], "/api/worker/heartbeat");
    assert_eq!(r.body["heartbeat_interval"], 30);
    assert_eq!(r.body["tunnel_url"], "https://abc.trycloudflare.com");
    assert_eq!(r.body["worker_id"].as_str().unwrap().len(), 32);
    let containers = r.body["assigned_containers"].as_array().unwrap();
    assert!(!containers.is_empty());
    for c in containers {
        for key in ["name", "image", "port", "env"] {
            assert!(c.get(key).is_some(), "container lacks {key}: {c}");
        }
    }
    // The shipped catalogue's first service (llm, which runs on CPU or GPU) goes to a box this size.
    assert!(
        containers.iter().any(|c| c["service"] == "llm"),
        "{containers:?}"
    );
}

#[tokio::test]
async fn vram_in_megabytes_is_not_tier_one() {
    let app = app().await;
    let (_, _, body) = app
        .register(&json!({"capabilities": {"cpu_cores": 4, "ram": "16GB", "gpu_type": "NVIDIA RTX 3050", "gpu_memory": "4096MB"}}))
        .await;
    assert_eq!(body["tier"], 2);
    assert!(
        body["assigned_containers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["requires_gpu"] == false)
    );
}

#[tokio::test]
async fn heartbeat_needs_the_workers_own_token() {
    let app = app().await;
    let (a, ta, _) = app.register(&native(4, 16, None)).await;
    let (b, tb, _) = app.register(&native(4, 16, None)).await;
    assert_eq!(
        app.heartbeat(&a, Some(&ta), 0.2).await.status,
        StatusCode::OK
    );
    // No token, another worker's token, a made-up token: 401.
    let r = app.heartbeat(&a, None, 0.2).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body["error"], "unauthorized");
    for (id, token) in [(&a, tb.as_str()), (&b, ta.as_str()), (&a, "0000")] {
        assert_eq!(
            app.heartbeat(id, Some(token), 0.2).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    // The admin cannot heartbeat for a worker either.
    assert_eq!(
        app.heartbeat(&a, Some(ADMIN_TOKEN), 0.2).await.status,
        StatusCode::FORBIDDEN
    );
    // Whether an id exists is not told to whoever asks: an unknown id and a real one get the same answer, with
    // no token and with a wrong one (the agent re-registers on it).
    let unknown = "0123456789abcdef0123456789abcdef";
    for token in [None, Some("0000"), Some(ta.as_str())] {
        let real = app.heartbeat(&b, token.filter(|t| *t != ta), 0.2).await;
        let made_up = app.heartbeat(unknown, token, 0.2).await;
        assert_eq!(made_up.status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!((real.status, &real.body), (made_up.status, &made_up.body));
        let path = |id: &str| format!("/api/worker/unregister/{id}");
        let real = app
            .call("DELETE", &path(&b), token.filter(|t| *t != ta), None)
            .await;
        let made_up = app.call("DELETE", &path(unknown), token, None).await;
        assert_eq!((real.status, &real.body), (made_up.status, &made_up.body));
    }
    // The admin hears that an id is unknown.
    let r = app
        .call(
            "DELETE",
            &format!("/api/worker/unregister/{unknown}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // A worker cannot unregister another.
    let r = app
        .call(
            "DELETE",
            &format!("/api/worker/unregister/{b}"),
            Some(&ta),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let w = app.admin_get(&format!("/api/admin/workers/{a}")).await;
    assert_eq!(w.body["current_load"], 0.2);
}

#[tokio::test]
async fn legacy_open_mode_accepts_tokenless_heartbeats_from_legacy_workers_only() {
    let closed = app().await;
    let (id, _, _) = closed.register(&legacy()).await;
    let hb = json!({"worker_id": id, "status": "healthy", "current_load": 1.0, "available_memory": "22.4GB"});
    assert_eq!(
        closed.post("/api/worker/heartbeat", None, &hb).await.status,
        StatusCode::UNAUTHORIZED
    );

    let open = app_with(|c| c.legacy_open_workers = true).await;
    let (id, _, _) = open.register(&legacy()).await;
    let hb = json!({"worker_id": id, "status": "healthy", "current_load": 1.0, "available_memory": "22.4GB"});
    let r = open.post("/api/worker/heartbeat", None, &hb).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let w = open.admin_get(&format!("/api/admin/workers/{id}")).await;
    assert_eq!(
        w.body["free_memory_bytes"],
        (22.4 * (1u64 << 30) as f64).round() as u64
    );
    // A native worker still needs its token in open mode.
    let (nid, _, _) = open.register(&native(4, 16, None)).await;
    assert_eq!(
        open.heartbeat(&nid, None, 0.1).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Seed-style shutdown: 200, then 404.
    assert_eq!(
        open.call(
            "DELETE",
            &format!("/api/worker/unregister/{id}"),
            None,
            None
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        open.call(
            "DELETE",
            &format!("/api/worker/unregister/{id}"),
            None,
            None
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn unregister_then_unknown() {
    let app = app().await;
    let (id, token, _) = app.register(&native(4, 16, None)).await;
    let r = app
        .call(
            "DELETE",
            &format!("/api/worker/unregister/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["worker_id"], id);
    // Its token went with it: 401, on which the agent registers again.
    let r = app
        .call(
            "DELETE",
            &format!("/api/worker/unregister/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.heartbeat(&id, Some(&token), 0.1).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.admin_get("/api/admin/workers").await.body["total"], 0);
}

#[tokio::test]
async fn admin_needs_the_token_and_limits_guessing() {
    let app = app_with(|c| c.admin_auth_rate_limit = 3).await;
    for path in [
        "/api/admin/workers",
        "/api/admin/stats",
        "/api/admin/health",
        "/api/admin/services",
        "/api/admin/history",
    ] {
        let r = app.admin_get(path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
    }
    let r = app.call("GET", "/api/admin/stats", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body["error"], "unauthorized");
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            app.call("GET", "/api/admin/stats", Some("wrong-token"), None)
                .await
                .status,
        );
    }
    assert_eq!(
        statuses.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    // The right token still works from the same address.
    assert_eq!(
        app.admin_get("/api/admin/stats").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn admin_views_in_seed_shapes() {
    let app = app().await;
    app.register(&native(16, 64, Some(24))).await;
    app.register(&native(4, 16, None)).await;
    let (data_id, data_token, _) = app.register(&native(1, 2, None)).await;
    app.heartbeat(&data_id, Some(&data_token), 0.5).await;
    // One agent has updated itself: its heartbeat says so.
    app.post(
        "/api/worker/heartbeat",
        Some(&data_token),
        &json!({"worker_id": data_id, "status": "healthy", "load": 0.5, "agent_version": "0.1.1"}),
    )
    .await;

    let health = app.call("GET", "/health", None, None).await;
    assert_eq!(
        health.body,
        json!({"status": "healthy", "coordinator": "commons-coordinator", "workers": {"total": 3, "active": 3, "stale": 0}})
    );

    let s = app.admin_get("/api/admin/stats").await.body;
    assert_eq!(s["total_workers"], 3);
    assert_eq!(s["healthy_workers"], 3);
    assert_eq!(
        s["workers_by_tier"],
        json!({"gpu_workers": 1, "service_workers": 1, "data_workers": 1})
    );
    assert_eq!(s["average_load_by_tier"]["data_workers"], 0.5);
    assert_eq!(s["gpus"], 1);
    assert_eq!(s["total_vram_bytes"], 24u64 << 30);
    assert_eq!(s["cpu_cores"], 21);
    assert_eq!(s["agent_versions"], json!({"0.1.0": 2, "0.1.1": 1}));

    let h = app.admin_get("/api/admin/health").await.body;
    assert_eq!(h["overall_status"], "healthy");
    assert_eq!(h["has_minimum_workers"]["gpu_workers"], true);

    let list = app.admin_get("/api/admin/workers?tier=3").await.body;
    assert_eq!(list["total"], 1);
    let w = &list["workers"][0];
    for key in [
        "worker_id",
        "tier",
        "status",
        "current_load",
        "tasks_completed",
        "assigned_containers",
        "last_heartbeat",
        "registered_at",
        "ip_address",
        "capabilities",
    ] {
        assert!(w.get(key).is_some(), "missing {key}");
    }
    assert_eq!(w["worker_id"], data_id);
    assert!(w["last_heartbeat"].as_str().unwrap().ends_with('Z'));
    // Pagination and filters.
    let page = app
        .admin_get("/api/admin/workers?limit=2&offset=0")
        .await
        .body;
    assert_eq!(
        (
            page["total"].as_u64(),
            page["workers"].as_array().unwrap().len()
        ),
        (Some(3), 2)
    );
    let page = app
        .admin_get("/api/admin/workers?limit=2&offset=2")
        .await
        .body;
    assert_eq!(page["workers"].as_array().unwrap().len(), 1);
    assert_eq!(
        app.admin_get("/api/admin/workers?status=stale").await.body["total"],
        0
    );
    // The service filter lists exactly the workers assigned that service.
    let all = app.admin_get("/api/admin/workers").await.body;
    let with_llm = all["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| {
            w["assigned_containers"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["service"] == "llm"))
        })
        .count();
    let llm = app.admin_get("/api/admin/workers?service=llm").await.body;
    assert!(with_llm > 0);
    assert_eq!(llm["total"], with_llm as u64);
    for (q, field) in [
        ("tier=9", "tier"),
        ("status=sleepy", "status"),
        ("service=nope", "service"),
        ("limit=-1", "query"),
    ] {
        let r = app.admin_get(&format!("/api/admin/workers?{q}")).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{q}");
        assert!(
            r.body["message"].as_str().unwrap().starts_with(field),
            "{q}: {}",
            r.body
        );
    }

    let services = app.admin_get("/api/admin/services").await.body;
    let llm = services["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "llm")
        .unwrap();
    assert_eq!(
        (
            llm["assigned"].as_u64(),
            llm["healthy"].as_u64(),
            llm["wanted"].as_u64()
        ),
        (Some(with_llm as u64), Some(with_llm as u64), Some(2))
    );
    assert_eq!(
        services["gaps"].as_array().unwrap().contains(&json!("llm")),
        with_llm < 2
    );
}

#[tokio::test]
async fn enrollment_tokens_gate_registration() {
    let app = app_with(|c| c.require_enrollment = true).await;
    let r = app
        .post("/api/worker/register", None, &native(4, 16, None))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body["message"].as_str().unwrap().contains("enrollment"));
    let t = app
        .post(
            "/api/admin/enrollment-tokens",
            Some(ADMIN_TOKEN),
            &json!({"label": "lab 3"}),
        )
        .await;
    assert_eq!(t.status, StatusCode::OK);
    let token = t.body["token"].as_str().unwrap().to_owned();
    let mut body = native(4, 16, None);
    body["enrollment_token"] = json!("not-the-token");
    assert_eq!(
        app.post("/api/worker/register", None, &body).await.status,
        StatusCode::FORBIDDEN
    );
    body["enrollment_token"] = json!(token);
    assert_eq!(
        app.post("/api/worker/register", None, &body).await.status,
        StatusCode::OK
    );
    let id = t.body["id"].as_str().unwrap();
    assert_eq!(
        app.call(
            "DELETE",
            &format!("/api/admin/enrollment-tokens/{id}"),
            Some(ADMIN_TOKEN),
            None
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        app.post("/api/worker/register", None, &body).await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn registration_rate_limit_per_address() {
    let app = app_with(|c| c.register_rate_limit = 2).await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            app.post("/api/worker/register", None, &native(4, 16, None))
                .await
                .status,
        );
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let r = app
        .post("/api/worker/register", None, &native(4, 16, None))
        .await;
    assert_eq!(r.body["error"], "rate_limited");
    assert!(r.headers.contains_key("retry-after"));
}

fn two_service_catalogue(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("catalogue.toml");
    std::fs::write(
        &path,
        r#"
        remove = ["llm", "vision", "ocr", "rag", "ner", "redis", "postgres", "storage"]
        [[service]]
        name = "a"
        image = "example/a:1"
        port = 1000
        min_ram = "4GB"
        replicas = 1
        [[service]]
        name = "b"
        image = "example/b:1"
        port = 2000
        min_ram = "4GB"
        replicas = 1
        "#,
    )
    .unwrap();
    path
}

#[tokio::test]
async fn a_trusted_proxy_forwards_the_client_address_for_rate_limits() {
    // oneshot requests come from 0.0.0.0: trust it as if it were the edge.
    let app = app_with(|c| {
        c.register_rate_limit = 1;
        c.trusted_proxies = vec!["0.0.0.0".parse().unwrap()];
    })
    .await;
    let register = |xff: &'static str| {
        let req = axum::http::Request::post("/api/worker/register")
            .header("x-forwarded-for", xff)
            .body(axum::body::Body::from(native(4, 16, None).to_string()))
            .unwrap();
        tower::ServiceExt::oneshot(app.router.clone(), req)
    };
    assert_eq!(
        register("198.51.100.1").await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        register("198.51.100.2").await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        register("203.0.113.9, 198.51.100.1")
            .await
            .unwrap()
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Untrusted peers' headers are ignored: every request counts against the peer itself.
    let plain = app_with(|c| c.register_rate_limit = 1).await;
    for (xff, want) in [
        ("198.51.100.1", StatusCode::OK),
        ("198.51.100.2", StatusCode::TOO_MANY_REQUESTS),
    ] {
        let req = axum::http::Request::post("/api/worker/register")
            .header("x-forwarded-for", xff)
            .body(axum::body::Body::from(native(4, 16, None).to_string()))
            .unwrap();
        assert_eq!(
            tower::ServiceExt::oneshot(plain.router.clone(), req)
                .await
                .unwrap()
                .status(),
            want
        );
    }
}

#[tokio::test]
async fn rebalancing_reaches_workers_through_heartbeats() {
    let cat_dir = tempfile::tempdir().unwrap();
    let catalogue = two_service_catalogue(cat_dir.path());
    let app = app_with(|c| c.catalogue = Some(catalogue)).await;
    // Y (4 GiB) takes "a"; X (8 GiB) then takes only "b": "a" is covered.
    let (y, ty, yb) = app.register(&native(2, 4, None)).await;
    assert_eq!(yb["assigned_containers"][0]["name"], "commons-a");
    let (x, tx, xb) = app.register(&native(2, 8, None)).await;
    let names = |v: &serde_json::Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| c["service"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&xb["assigned_containers"]), ["b"]);
    assert_eq!(xb["assignment_version"], 1);
    // Current version: no assignment in the answer.
    let hb = |id: &str, v: u64| json!({"worker_id": id, "status": "healthy", "load": 0.1, "assignment_version": v});
    let r = app
        .post("/api/worker/heartbeat", Some(&tx), &hb(&x, 1))
        .await;
    assert!(r.body.get("assigned_containers").is_none(), "{}", r.body);
    assert_eq!(app.state.rebalance(), 0, "no gap, no change");
    // Y leaves: "a" has a gap that X can hold beside "b".
    assert_eq!(
        app.call(
            "DELETE",
            &format!("/api/worker/unregister/{y}"),
            Some(&ty),
            None
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        app.admin_get("/api/admin/services").await.body["gaps"],
        json!(["a"])
    );
    assert_eq!(app.state.rebalance(), 1);
    let r = app
        .post("/api/worker/heartbeat", Some(&tx), &hb(&x, 1))
        .await;
    assert_eq!(r.body["assignment_version"], 2);
    assert_eq!(names(&r.body["assigned_containers"]), ["b", "a"]);
    assert_eq!(
        app.admin_get("/api/admin/services").await.body["gaps"],
        json!([])
    );
}

#[tokio::test]
async fn silent_workers_turn_stale_and_come_back() {
    let app = app_with(|c| {
        c.heartbeat_interval_secs = 1;
        c.stale_after_secs = 2;
        c.offline_after_secs = 600;
    })
    .await;
    let (id, token, _) = app.register(&native(4, 16, None)).await;
    let status = |b: &serde_json::Value| b["status"].as_str().unwrap().to_owned();
    assert_eq!(
        status(
            &app.admin_get(&format!("/api/admin/workers/{id}"))
                .await
                .body
        ),
        "healthy"
    );
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(
        status(
            &app.admin_get(&format!("/api/admin/workers/{id}"))
                .await
                .body
        ),
        "stale"
    );
    let h = app.call("GET", "/health", None, None).await.body;
    assert_eq!(
        (
            h["workers"]["active"].as_u64(),
            h["workers"]["stale"].as_u64()
        ),
        (Some(0), Some(1))
    );
    // Out of routing: its services have no healthy replica.
    let services = app.admin_get("/api/admin/services").await.body;
    assert!(
        services["services"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["healthy"] == 0)
    );
    assert_eq!(
        app.heartbeat(&id, Some(&token), 0.3).await.status,
        StatusCode::OK
    );
    assert_eq!(
        status(
            &app.admin_get(&format!("/api/admin/workers/{id}"))
                .await
                .body
        ),
        "healthy"
    );
}

#[tokio::test]
async fn history_records_points() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = commons_coordinator::server::test_utils::config(dir.path());
    config.history_interval_secs = 1;
    let server = commons_coordinator::Server::bind(config).await.unwrap();
    let client = reqwest::Client::new();
    let reg: serde_json::Value = client
        .post(format!("{}/api/worker/register", server.url()))
        .json(&native(4, 16, None))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(reg["worker_id"].is_string());
    tokio::time::sleep(std::time::Duration::from_millis(2600)).await;
    let h: serde_json::Value = client
        .get(format!("{}/api/admin/history?range=1h", server.url()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let points = h["points"].as_array().unwrap();
    assert!(!points.is_empty(), "{h}");
    let last = points.last().unwrap();
    assert_eq!(last["workers_by_tier"]["service_workers"], 1);
    assert_eq!(last["workers_by_status"]["healthy"], 1);
    let bad = client
        .get(format!("{}/api/admin/history?range=1y", server.url()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn openapi_and_metrics() {
    let app = app().await;
    let r = app.call("GET", "/api/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    for path in [
        "/api/worker/register",
        "/api/worker/heartbeat",
        "/api/admin/workers",
        "/api/admin/history",
    ] {
        assert!(r.body["paths"].get(path).is_some(), "openapi lacks {path}");
    }
    let (id, token, _) = app.register(&native(4, 16, None)).await;
    app.heartbeat(&id, Some(&token), 0.1).await;
    let req = axum::http::Request::get("/metrics")
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = tower::ServiceExt::oneshot(app.router.clone(), req)
        .await
        .unwrap();
    let text = String::from_utf8(
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    for name in [
        "commons_heartbeats_total",
        "commons_registrations_total",
        "commons_workers{",
    ] {
        assert!(text.contains(name), "metrics lack {name}:\n{text}");
    }
}

#[tokio::test]
async fn an_unknown_api_path_is_404_whatever_the_method() {
    let app = app().await;
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
        for path in [
            "/api/nothing",
            "/api/admin/nothing/x",
            "/api/worker/heartbeat/x",
        ] {
            let r = app.call(method, path, None, Some(b"{}")).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{method} {path}");
            assert_eq!(r.body["error"], "not_found", "{method} {path}");
        }
    }
    // A known path asked with another method is 405; so is writing to the portal's pages.
    for (method, path) in [("GET", "/api/worker/register"), ("POST", "/workers")] {
        let r = app.call(method, path, None, None).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(r.body["error"], "method_not_allowed");
    }
}

/// A connection from `source` (any 127/8 address is this machine's loopback) with half a request's header sent.
async fn half_sent(source: [u8; 4], to: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::from((source, 0)))
        .unwrap();
    let mut s = socket.connect(to).await.unwrap();
    s.write_all(b"POST /api/worker/heartbeat HTTP/1.1\r\nhost: c\r\n")
        .await
        .unwrap();
    s
}

/// Whether the server answered 429 on `s` (as it does past an address's connection limit) within a moment.
async fn refused(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 12];
    matches!(
        tokio::time::timeout(std::time::Duration::from_millis(50), s.read_exact(&mut buf)).await,
        Ok(Ok(_)) if &buf == b"HTTP/1.1 429"
    )
}

#[tokio::test]
async fn a_slowloris_client_takes_only_its_own_share() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = commons_coordinator::server::test_utils::config(dir.path());
    config.max_connections_per_address = 16;
    config.header_read_timeout_secs = 5;
    config.trusted_proxies = vec!["127.0.0.3".parse().unwrap()];
    let server = commons_coordinator::Server::bind(config).await.unwrap();
    let addr = server.local_addr();
    // 200 half-sent requests from one address: it keeps 16, the rest are refused at once.
    let mut slow = Vec::new();
    for _ in 0..200 {
        slow.push(half_sent([127, 0, 0, 2], addr).await);
    }
    let mut n = 0;
    for s in &mut slow {
        n += usize::from(refused(s).await);
    }
    assert_eq!(n, 200 - 16);
    // Meanwhile a worker registers and heartbeats, and the health check answers.
    let client = reqwest::Client::new();
    let reg = register_at(&client, &server.url(), &native(4, 16, None)).await;
    let hb = json!({"worker_id": reg["worker_id"], "status": "healthy", "load": 0.1});
    for _ in 0..20 {
        let r = client
            .post(format!("{}/api/worker/heartbeat", server.url()))
            .bearer_auth(reg["worker_token"].as_str().unwrap())
            .json(&hb)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // The edge (a trusted proxy) carries many clients: its connections are not limited per address.
    let mut from_edge = Vec::new();
    for _ in 0..20 {
        from_edge.push(half_sent([127, 0, 0, 3], addr).await);
    }
    for s in &mut from_edge {
        assert!(!refused(s).await);
    }
    drop((slow, from_edge));
    server.shutdown().await.unwrap();
}

/// Registering again does not wash away what other workers' answers found: a worker's lowered trust follows its
/// DHT identity, to a second registration while the first is still listed, and past an unregistration (kept in
/// SQLite in the same transaction). A new identity starts as new workers do.
#[tokio::test]
async fn a_lowered_trust_follows_the_dht_identity_into_a_new_registration() {
    let app = app().await;
    let peer = "12D3KooWGzh3uL8Yd7NvwfRuEVmwLV1Bk3vLSZfHRyJ4XuiQmdgj";
    let with_peer = |peer: &str| {
        let mut body = native(4, 16, None);
        body["peer_id"] = json!(peer);
        body
    };
    let trust_of = |id: String| {
        let app = &app;
        async move {
            app.admin_get(&format!("/api/admin/workers/{id}"))
                .await
                .body["trust"]
                .as_f64()
                .unwrap()
        }
    };
    let (first, first_token, _) = app.register(&with_peer(peer)).await;
    assert_eq!(trust_of(first.clone()).await, 0.5, "a new worker's trust");
    // Outvoted until drained (the operator's setting stands in for the verdicts here).
    let r = app
        .call(
            "PUT",
            &format!("/api/admin/workers/{first}/trust"),
            Some(ADMIN_TOKEN),
            Some(br#"{"trust": 0.1}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // Registered again while the first is still listed: the same trust.
    let (second, second_token, _) = app.register(&with_peer(peer)).await;
    assert_eq!(trust_of(second.clone()).await, 0.1);
    assert_eq!(
        app.admin_get(&format!("/api/admin/workers/{second}"))
            .await
            .body["drained"],
        true
    );
    // Both unregister; a third registration of that identity still starts there.
    for (id, token) in [(&first, &first_token), (&second, &second_token)] {
        let r = app
            .call(
                "DELETE",
                &format!("/api/worker/unregister/{id}"),
                Some(token),
                None,
            )
            .await;
        assert!(r.status.is_success(), "{}", r.body);
    }
    let (third, _, _) = app.register(&with_peer(peer)).await;
    assert_eq!(trust_of(third).await, 0.1, "kept past the unregistration");
    // Another identity, and no identity, start afresh.
    let (other, _, _) = app
        .register(&with_peer(
            "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo",
        ))
        .await;
    assert_eq!(trust_of(other).await, 0.5);
    let (anonymous, _, _) = app.register(&native(4, 16, None)).await;
    assert_eq!(trust_of(anonymous).await, 0.5);
}
