//! Helpers for the coordinator's tests: a router over a temp-file SQLite, and one-call requests.
#![allow(dead_code)]

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use commons_coordinator::Config;
use commons_coordinator::server::test_utils::{self, ADMIN_TOKEN};
use commons_coordinator::state::AppState;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

pub struct App {
    pub router: Router,
    pub state: AppState,
    pub dir: tempfile::TempDir,
}

pub async fn app() -> App {
    app_with(|_| {}).await
}

pub async fn app_with(f: impl FnOnce(&mut Config)) -> App {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_utils::config(dir.path());
    f(&mut config);
    let (router, state) = test_utils::app(config).await.unwrap();
    App { router, state, dir }
}

pub struct Resp {
    pub status: StatusCode,
    pub body: Value,
    pub headers: axum::http::HeaderMap,
}

impl App {
    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> Resp {
        self.call_with(method, uri, token, body, &[]).await
    }

    /// [`App::call`] with extra request headers.
    pub async fn call_with(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(
                body.map(|b| Body::from(b.to_vec()))
                    .unwrap_or_else(Body::empty),
            )
            .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Resp {
            status,
            body,
            headers,
        }
    }

    pub async fn post(&self, uri: &str, token: Option<&str>, body: &Value) -> Resp {
        self.call("POST", uri, token, Some(body.to_string().as_bytes()))
            .await
    }

    pub async fn admin_get(&self, uri: &str) -> Resp {
        self.call("GET", uri, Some(ADMIN_TOKEN), None).await
    }

    /// Registers a worker; returns (id, token, full answer).
    pub async fn register(&self, body: &Value) -> (String, String, Value) {
        let r = self.post("/api/worker/register", None, body).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        (
            r.body["worker_id"].as_str().unwrap().into(),
            r.body["worker_token"].as_str().unwrap().into(),
            r.body,
        )
    }

    pub async fn heartbeat(&self, id: &str, token: Option<&str>, load: f64) -> Resp {
        self.post(
            "/api/worker/heartbeat",
            token,
            &json!({"worker_id": id, "status": "healthy", "load": load}),
        )
        .await
    }
}

/// Registers a worker at a coordinator on a real socket; its answer as JSON.
pub async fn register_at(client: &reqwest::Client, url: &str, body: &Value) -> Value {
    client
        .post(format!("{url}/api/worker/register"))
        .json(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub fn native(cores: u32, ram_gib: u64, vram_gib: Option<u64>) -> Value {
    let gib = 1u64 << 30;
    let gpus = vram_gib
        .map(|v| json!([{"vendor": "nvidia", "name": "RTX 4090", "index": 0, "uuid": "GPU-1", "vram_bytes": v * gib,
                         "driver_version": "550.1", "compute_capability": "8.9"}]))
        .unwrap_or(json!([]));
    json!({"capabilities": {
        "cpu": {"brand": "Test CPU", "cores": cores, "threads": cores * 2, "frequency_mhz": 3000},
        "memory_bytes": ram_gib * gib,
        "disks": [{"mount": "/", "total_bytes": 500 * gib, "free_bytes": 50 * gib}],
        "gpus": gpus, "os": "linux", "arch": "x86_64", "hostname": "test", "region": "eu", "public_address": false,
        "agent_version": "0.1.0"}})
}

pub fn legacy() -> Value {
    json!({"capabilities": {"cpu_cores": 2, "ram": "23.5GB", "storage": "252.0GB"}, "ip_address": "127.0.0.1"})
}
