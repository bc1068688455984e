//! The bad-input corpus against a real server on loopback: every case gets the right status and a JSON
//! `{error, message}`, the process keeps answering, and nothing stored is damaged.

mod common;

use common::{legacy, native};
use commons_coordinator::Server;
use commons_coordinator::server::test_utils::{ADMIN_TOKEN, config};
use serde_json::{Value, json};

struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    token: Option<String>,
    body: Vec<u8>,
    status: u16,
    /// Text the message must contain (the field it names, usually).
    mentions: &'static str,
}

fn case(
    name: &'static str,
    method: &'static str,
    path: &str,
    token: Option<&str>,
    body: impl Into<Vec<u8>>,
    status: u16,
    mentions: &'static str,
) -> Case {
    Case {
        name,
        method,
        path: path.into(),
        token: token.map(Into::into),
        body: body.into(),
        status,
        mentions,
    }
}

fn stored_workers(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let conn = rusqlite::Connection::open(dir.join("commons.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT id, token_hash FROM workers ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test]
async fn bad_input_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::bind(config(dir.path())).await.unwrap();
    let url = server.url();
    let client = reqwest::Client::new();

    // A worker that must survive everything below.
    let reg: Value = client
        .post(format!("{url}/api/worker/register"))
        .json(&native(4, 16, None))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = reg["worker_id"].as_str().unwrap().to_owned();
    let token = reg["worker_token"].as_str().unwrap().to_owned();
    let before = stored_workers(dir.path());
    assert_eq!(before.len(), 1);

    let big = vec![b' '; 70 * 1024];
    let long = "x".repeat(300);
    let deep = "[".repeat(10_000);
    let disks: Vec<Value> = (0..65)
        .map(|i| json!({"mount": format!("/d{i}"), "total_bytes": 1, "free_bytes": 1}))
        .collect();
    let containers: Vec<Value> = (0..65)
        .map(|i| json!({"name": format!("c{i}"), "state": "running"}))
        .collect();
    let mut with_disks = native(4, 16, None);
    with_disks["capabilities"]["disks"] = json!(disks);
    let mut with_brand = native(4, 16, None);
    with_brand["capabilities"]["cpu"]["brand"] = json!(long);
    let mut with_ctrl = native(4, 16, None);
    with_ctrl["capabilities"]["hostname"] = json!("host\u{0007}name");
    let hb = |v: Value| {
        let mut b = json!({"worker_id": id, "status": "healthy", "load": 0.5});
        for (k, x) in v.as_object().unwrap() {
            b[k] = x.clone();
        }
        b.to_string().into_bytes()
    };
    let t = Some(token.as_str());
    let reg_path = "/api/worker/register";
    let hb_path = "/api/worker/heartbeat";
    let cases = vec![
        case(
            "register: not JSON",
            "POST",
            reg_path,
            None,
            "hello",
            400,
            "JSON",
        ),
        case("register: empty", "POST", reg_path, None, "", 400, "JSON"),
        case(
            "register: truncated",
            "POST",
            reg_path,
            None,
            r#"{"capabilities": {"cpu_cores": 2,"#,
            400,
            "JSON",
        ),
        case(
            "register: NaN literal",
            "POST",
            reg_path,
            None,
            r#"{"capabilities": {"cpu_cores": NaN, "ram": "1GB"}}"#,
            400,
            "JSON",
        ),
        case(
            "register: deep nesting",
            "POST",
            reg_path,
            None,
            deep.clone(),
            400,
            "JSON",
        ),
        case(
            "register: array",
            "POST",
            reg_path,
            None,
            "[1,2,3]",
            422,
            "body",
        ),
        case(
            "register: ram lots",
            "POST",
            reg_path,
            None,
            r#"{"capabilities": {"cpu_cores": 2, "ram": "lots"}}"#,
            422,
            "capabilities.ram",
        ),
        case(
            "register: vram unknown",
            "POST",
            reg_path,
            None,
            r#"{"capabilities": {"cpu_cores": 2, "ram": "8GB", "gpu_type": "Radeon", "gpu_memory": "Unknown (AMD)"}}"#,
            422,
            "capabilities.gpu_memory",
        ),
        case(
            "register: negative cores",
            "POST",
            reg_path,
            None,
            r#"{"capabilities": {"cpu_cores": -4, "ram": "8GB"}}"#,
            422,
            "capabilities.cpu_cores",
        ),
        case(
            "register: cores as text",
            "POST",
            reg_path,
            None,
            r#"{"capabilities": {"cpu_cores": "four", "ram": "8GB"}}"#,
            422,
            "capabilities.cpu_cores",
        ),
        case(
            "register: huge number",
            "POST",
            reg_path,
            None,
            r#"{"capabilities": {"cpu": {"cores": 1e999}, "memory_bytes": 1}}"#,
            400,
            "JSON",
        ),
        case(
            "register: negative memory",
            "POST",
            reg_path,
            None,
            r#"{"capabilities": {"cpu": {"cores": 2}, "memory_bytes": -1}}"#,
            422,
            "capabilities.memory_bytes",
        ),
        case(
            "register: long string",
            "POST",
            reg_path,
            None,
            with_brand.to_string(),
            422,
            "capabilities.cpu.brand",
        ),
        case(
            "register: control characters",
            "POST",
            reg_path,
            None,
            with_ctrl.to_string(),
            422,
            "capabilities.hostname",
        ),
        case(
            "register: 65 disks",
            "POST",
            reg_path,
            None,
            with_disks.to_string(),
            422,
            "capabilities.disks",
        ),
        case(
            "register: unknown field",
            "POST",
            reg_path,
            None,
            r#"{"capabilities": {"cpu": {"cores": 2}, "memory_bytes": 1}, "admin": true}"#,
            422,
            "admin",
        ),
        case(
            "register: bad endpoint",
            "POST",
            reg_path,
            None,
            r#"{"capabilities": {"cpu": {"cores": 2}, "memory_bytes": 1}, "endpoint": "javascript:alert(1)"}"#,
            422,
            "endpoint",
        ),
        case(
            "register: 70 KiB",
            "POST",
            reg_path,
            None,
            big.clone(),
            413,
            "larger",
        ),
        case(
            "heartbeat: no token",
            "POST",
            hb_path,
            None,
            hb(json!({})),
            401,
            "Bearer",
        ),
        case(
            "heartbeat: not JSON",
            "POST",
            hb_path,
            t,
            "{{{{",
            400,
            "JSON",
        ),
        case(
            "heartbeat: load NaN",
            "POST",
            hb_path,
            t,
            format!(r#"{{"worker_id": "{id}", "status": "healthy", "load": NaN}}"#),
            400,
            "JSON",
        ),
        case(
            "heartbeat: load 1.5",
            "POST",
            hb_path,
            t,
            hb(json!({"load": 1.5})),
            422,
            "load",
        ),
        case(
            "heartbeat: load negative",
            "POST",
            hb_path,
            t,
            hb(json!({"load": -0.5})),
            422,
            "load",
        ),
        case(
            "heartbeat: status unknown",
            "POST",
            hb_path,
            t,
            hb(json!({"status": "sleepy"})),
            422,
            "status",
        ),
        case(
            "heartbeat: negative memory",
            "POST",
            hb_path,
            t,
            hb(json!({"free_memory_bytes": -1})),
            422,
            "free_memory_bytes",
        ),
        case(
            "heartbeat: hot GPU",
            "POST",
            hb_path,
            t,
            hb(json!({"gpus": [{"index": 0, "temperature_c": 1e6}]})),
            422,
            "gpus[0].temperature_c",
        ),
        case(
            "heartbeat: 65 containers",
            "POST",
            hb_path,
            t,
            hb(json!({"containers": containers})),
            422,
            "containers",
        ),
        case(
            "heartbeat: id too long",
            "POST",
            hb_path,
            t,
            hb(json!({"worker_id": "w".repeat(65)})),
            422,
            "worker_id",
        ),
        case(
            "heartbeat: unknown worker",
            "POST",
            hb_path,
            t,
            hb(json!({"worker_id": "worker-195d5431"})),
            401,
            "register again",
        ),
        case(
            "heartbeat: 70 KiB",
            "POST",
            hb_path,
            t,
            big.clone(),
            413,
            "larger",
        ),
        case(
            "unregister: id too long",
            "DELETE",
            &format!("/api/worker/unregister/{}", "w".repeat(100)),
            t,
            "",
            422,
            "id",
        ),
        case(
            "unregister: no token",
            "DELETE",
            &format!("/api/worker/unregister/{id}"),
            None,
            "",
            401,
            "Bearer",
        ),
        case(
            "unregister: wrong token",
            "DELETE",
            &format!("/api/worker/unregister/{id}"),
            Some("0123"),
            "",
            401,
            "own token",
        ),
        case(
            "admin: no token",
            "GET",
            "/api/admin/workers",
            None,
            "",
            401,
            "admin token",
        ),
        case(
            "admin: bad tier",
            "GET",
            "/api/admin/workers?tier=banana",
            Some(ADMIN_TOKEN),
            "",
            422,
            "query",
        ),
        case(
            "admin: bad enrollment body",
            "POST",
            "/api/admin/enrollment-tokens",
            Some(ADMIN_TOKEN),
            r#"{"label": ""}"#,
            422,
            "label",
        ),
        case(
            "unknown path",
            "GET",
            "/api/nothing",
            None,
            "",
            404,
            "endpoint",
        ),
        case("wrong method", "GET", reg_path, None, "", 405, "method"),
        case(
            "unknown service",
            "POST",
            "/api/service/teleport/x",
            None,
            "{}",
            404,
            "teleport",
        ),
        case(
            "service without workers",
            "POST",
            "/api/service/llm/v1/chat",
            None,
            "{}",
            503,
            "llm",
        ),
    ];

    for c in &cases {
        let mut req = client
            .request(c.method.parse().unwrap(), format!("{url}{}", c.path))
            .body(c.body.clone());
        if let Some(t) = &c.token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_eq!(status, c.status, "{}: {text}", c.name);
        let body: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{}: not JSON: {text}", c.name));
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{}: {body}",
            c.name
        );
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(c.mentions),
            "{}: message {message:?} should mention {:?}",
            c.name,
            c.mentions
        );

        // Still answering, and the stored worker still works.
        let health = client.get(format!("{url}/health")).send().await.unwrap();
        assert_eq!(health.status(), 200, "{}: health", c.name);
        let ok = client
            .post(format!("{url}{hb_path}"))
            .bearer_auth(&token)
            .body(hb(json!({"load": 0.25})))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200, "{}: the good worker's heartbeat", c.name);
    }

    // Nothing stored was damaged or added.
    assert_eq!(stored_workers(dir.path()), before);
    let w: Value = client
        .get(format!("{url}/api/admin/workers/{id}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(w["current_load"], 0.25);
    assert_eq!(w["status"], "healthy");
    // Legacy registration still works after all that.
    let r = client
        .post(format!("{url}/api/worker/register"))
        .json(&legacy())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.shutdown().await.unwrap();
}
