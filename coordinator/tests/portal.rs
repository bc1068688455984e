//! The portal's side of the coordinator: login sessions, the live feed, installers, and serving the built portal.

mod common;

use axum::http::StatusCode;
use common::{App, app, app_with, native};
use commons_coordinator::Server;
use commons_coordinator::server::test_utils::{self, ADMIN_TOKEN};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Logs in; returns the cookie pair (`commons_session=...`) and the whole Set-Cookie value.
async fn login(a: &App) -> (String, String) {
    let r = a
        .post("/api/admin/login", None, &json!({"token": ADMIN_TOKEN}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["authenticated"], true);
    let set = r.headers["set-cookie"].to_str().unwrap().to_owned();
    (set.split(';').next().unwrap().to_owned(), set)
}

#[tokio::test]
async fn login_sets_a_strict_httponly_cookie_that_admits_and_logout_ends_it() {
    let a = app().await;
    let (cookie, set) = login(&a).await;
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set.contains(attr), "{attr} missing from {set}");
    }
    assert!(
        !set.contains("Secure"),
        "plain http on loopback: no Secure flag"
    );
    let with_cookie = |uri: &'static str| {
        let cookie = cookie.clone();
        let a = &a;
        async move {
            a.call_with("GET", uri, None, None, &[("cookie", &cookie)])
                .await
        }
    };
    let stats = with_cookie("/api/admin/stats").await;
    assert_eq!(stats.status, StatusCode::OK, "{}", stats.body);
    assert_eq!(stats.body["total_workers"], 0);
    let s = with_cookie("/api/admin/session").await;
    assert_eq!(s.body["authenticated"], true);
    assert!(s.body["expires_in_secs"].as_u64().unwrap() > 43_000);

    let out = a
        .call_with(
            "POST",
            "/api/admin/logout",
            None,
            None,
            &[("cookie", &cookie)],
        )
        .await;
    assert_eq!(out.status, StatusCode::OK);
    assert!(
        out.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let after = with_cookie("/api/admin/stats").await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    assert_eq!(after.body["error"], "unauthorized");
    // A made-up session is no session.
    let forged = a
        .call_with(
            "GET",
            "/api/admin/stats",
            None,
            None,
            &[("cookie", "commons_session=abcdef")],
        )
        .await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_wrong_token_is_refused_clearly_and_guessing_is_rate_limited() {
    let a = app_with(|c| c.admin_auth_rate_limit = 3).await;
    for _ in 0..3 {
        let r = a
            .post(
                "/api/admin/login",
                None,
                &json!({"token": "wrong-token-0123456789"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.body["error"], "unauthorized");
        assert!(
            r.body["message"].as_str().unwrap().contains("wrong"),
            "{}",
            r.body
        );
        assert!(r.headers.get("set-cookie").is_none());
    }
    let r = a
        .post(
            "/api/admin/login",
            None,
            &json!({"token": "wrong-token-0123456789"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_eq!(r.body["error"], "rate_limited");
    // Bad bodies: a clear 4xx with a JSON error, never a session.
    let r = a
        .call("POST", "/api/admin/login", None, Some(b"{not json"))
        .await;
    assert!(
        r.status.is_client_error() && r.body["message"].is_string(),
        "{}",
        r.body
    );
    let r = a
        .post("/api/admin/login", None, &json!({"token": ""}))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    let r = a
        .post("/api/admin/login", None, &json!({"token": "x".repeat(300)}))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
}

#[tokio::test]
async fn the_portal_is_served_with_its_own_paths_and_gzip_and_the_api_stays_json() {
    let a = app().await;
    // Not configured: a page that says how to build it; the API is unaffected.
    let r = a.call("GET", "/", None, None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.as_str().unwrap().contains("cargo xtask portal"));
    let dist = tempfile::tempdir().unwrap();
    std::fs::write(
        dist.path().join("index.html"),
        "<!doctype html><title>portal</title>",
    )
    .unwrap();
    std::fs::write(dist.path().join("app.js"), "console.log('plain')").unwrap();
    std::fs::write(dist.path().join("app.js.gz"), b"\x1f\x8bgzipped").unwrap();
    let d = dist.path().to_owned();
    let a = app_with(move |c| c.portal_dir = Some(d)).await;
    for path in ["/", "/workers/42"] {
        let r = a.call("GET", path, None, None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert!(
            r.body.as_str().unwrap().contains("<title>portal</title>"),
            "{path}"
        );
        assert_eq!(r.headers["cache-control"], "no-cache");
    }
    let r = a
        .call_with("GET", "/app.js", None, None, &[("accept-encoding", "gzip")])
        .await;
    assert_eq!(r.headers["content-encoding"], "gzip");
    let r = a.call("GET", "/app.js", None, None).await;
    assert_eq!(r.body, "console.log('plain')");
    let r = a.call("GET", "/api/no-such-thing", None, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["error"], "not_found");
}

#[tokio::test]
async fn installers_are_listed_with_their_hash_and_served_by_plain_name_only() {
    let a = app().await;
    let r = a.call("GET", "/api/releases", None, None).await;
    assert_eq!(r.body, json!({"releases": []}));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("commons_0.2.0_amd64.deb"), b"desktop").unwrap();
    std::fs::write(dir.path().join("commons-agent_0.2.0_amd64.deb"), b"agent").unwrap();
    let d = dir.path().to_owned();
    let a = app_with(move |c| c.releases_dir = Some(d)).await;
    let r = a.call("GET", "/api/releases", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let list = r.body["releases"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    let agent = list
        .iter()
        .find(|r| r["file"] == "commons-agent_0.2.0_amd64.deb")
        .unwrap();
    assert_eq!(agent["version"], "0.2.0");
    assert_eq!(agent["size_bytes"], 5);
    use sha2::Digest;
    assert_eq!(agent["sha256"], hex::encode(sha2::Sha256::digest(b"agent")));
    assert!(
        r.body["headless_install"]
            .as_str()
            .unwrap()
            .contains("sha256sum -c")
    );
    let r = a
        .call("GET", "/releases/commons_0.2.0_amd64.deb", None, None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "desktop");
    for bad in [
        "/releases/..%2Fcommons.db",
        "/releases/.hidden",
        "/releases/missing.deb",
    ] {
        let r = a.call("GET", bad, None, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{bad}");
        assert_eq!(r.body["error"], "not_found");
    }
}

#[tokio::test]
async fn the_live_feed_sends_a_snapshot_then_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_utils::config(dir.path());
    config.live_interval_ms = 100;
    let server = Server::bind(config).await.unwrap();
    let http = reqwest::Client::new();
    let url = server.url();
    let reg = async |body: Value| {
        common::register_at(&http, &url, &body).await["worker_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let first = reg(native(4, 16, None)).await;
    let ws_url = format!("ws://{}/api/admin/live", server.local_addr());
    // Without a session: refused before the upgrade.
    let refused = tokio_tungstenite::connect_async(ws_url.as_str()).await;
    assert!(refused.is_err(), "an anonymous feed was opened");
    let login = http
        .post(format!("{url}/api/admin/login"))
        .json(&json!({"token": ADMIN_TOKEN}))
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let mut req = ws_url.into_client_request().unwrap();
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut next = async || -> Value {
        loop {
            let m = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
                .await
                .expect("a message within 5 s")
                .unwrap()
                .unwrap();
            if let Message::Text(t) = m {
                return serde_json::from_str(&t).unwrap();
            }
        }
    };
    let snap = next().await;
    assert_eq!(snap["type"], "snapshot");
    assert_eq!(snap["topology"]["node_count"], 2);
    assert_eq!(snap["stats"]["total_workers"], 1);
    assert!(
        snap["topology"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["worker_id"] == first.as_str())
    );

    let second = reg(native(8, 32, None)).await;
    let delta = next().await;
    assert_eq!(delta["type"], "delta", "{delta}");
    let upserted: Vec<&str> = delta["upsert"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["worker_id"].as_str())
        .collect();
    assert_eq!(
        upserted,
        [second.as_str()],
        "only the new worker, not the unchanged one: {delta}"
    );
    assert_eq!(delta["add_edges"].as_array().unwrap().len(), 1);
    assert_eq!(delta["stats"]["total_workers"], 2);
    ws.close(None).await.unwrap();
    server.shutdown().await.unwrap();
}
