//! Harness for Commons' cross-component tests: real coordinators and real worker HTTP servers on loopback.
//!
//! The tests live in `tests/tests/`; the load generator in `src/bin/loadgen.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use commons_coordinator::server::test_utils;
use commons_coordinator::{Config, Server};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

pub mod browser;
pub mod figures;
pub mod load;
pub mod nat;
pub mod tls;
pub mod update;

/// An operator's catalogue in `dir` that drops every shipped service and adds `services` (TOML `[[service]]`
/// entries), signed with [`test_catalogue_key`] so that agents given that key run it.
pub fn operator_catalogue(dir: &std::path::Path, services: &str) -> PathBuf {
    let remove: Vec<String> = commons_shared::catalogue::Catalogue::builtin()
        .services()
        .iter()
        .map(|s| format!("{:?}", s.name))
        .collect();
    let path = dir.join("catalogue.toml");
    std::fs::write(
        &path,
        format!("remove = [{}]\n{services}", remove.join(", ")),
    )
    .unwrap();
    sign_catalogue(&path);
    path
}

/// A catalogue overlay that leaves only the given services (name, replicas), each needing 1 GiB and 1 core.
pub fn catalogue_only(dir: &std::path::Path, services: &[(&str, u32)]) -> PathBuf {
    let mut text = String::new();
    for (i, (name, replicas)) in services.iter().enumerate() {
        text.push_str(&format!(
            "[[service]]\nname = {name:?}\nimage = \"example/{name}:1\"\nport = {}\nmin_ram = \"1GB\"\nmin_cores = 1\nreplicas = {replicas}\n",
            9000 + i
        ));
    }
    operator_catalogue(dir, &text)
}

/// The loopback registry's tiny busybox image as the only service, running `args` (no health path).
pub fn tiny_catalogue(dir: &std::path::Path, name: &str, image: &str, args: &str) -> PathBuf {
    operator_catalogue(
        dir,
        &format!(
            "[[service]]\nname = {name:?}\nimage = {image:?}\nport = 8080\nargs = {args}\nmin_ram = \"64MB\"\nreplicas = 1\nhealth = \"\"\n"
        ),
    )
}

/// A GET with a bearer token, its body as JSON.
pub async fn get_json(client: &reqwest::Client, url: &str, token: &str) -> Value {
    client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A coordinator on loopback with its own temp dir.
#[derive(Debug)]
pub struct Coordinator {
    /// The server.
    pub server: Server,
    /// Its data dir.
    pub dir: tempfile::TempDir,
}

impl Coordinator {
    /// Starts one; `tune` adjusts the test configuration.
    pub async fn start(tune: impl FnOnce(&mut Config, &std::path::Path)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_utils::config(dir.path());
        tune(&mut config, dir.path());
        let server = Server::bind(config).await.unwrap();
        Self { server, dir }
    }

    /// Starts one that registers with `edge` using `key` and heartbeats it every `heartbeat_ms`; `tune` adjusts
    /// the rest of the test configuration.
    pub async fn federated(
        edge: &Edge,
        key: &str,
        heartbeat_ms: u64,
        tune: impl FnOnce(&mut Config, &std::path::Path),
    ) -> Self {
        let (url, key) = (edge.url(), key.to_owned());
        Self::start(move |c, dir| {
            c.edge_url = Some(url);
            c.federation_key = Some(commons_coordinator::config::Secret(key));
            c.edge_heartbeat_interval_ms = heartbeat_ms;
            tune(c, dir);
        })
        .await
    }

    /// Base URL.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// A consumer's API key made through the admin API with `policy` (`{name, services, rate_per_minute, ...}`): the
    /// answer, with the key (`key`, shown once) and its `id`.
    pub async fn api_key(&self, client: &reqwest::Client, policy: Value) -> Value {
        let r = client
            .post(format!("{}/api/admin/keys", self.url()))
            .bearer_auth(test_utils::ADMIN_TOKEN)
            .json(&policy)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json().await.unwrap()
    }

    /// An admin GET (the test admin token) as JSON.
    pub async fn admin(&self, client: &reqwest::Client, path: &str) -> Value {
        get_json(
            client,
            &format!("{}{path}", self.url()),
            test_utils::ADMIN_TOKEN,
        )
        .await
    }
}

/// An edge on loopback with its own temp dir.
#[derive(Debug)]
pub struct Edge {
    /// The server.
    pub server: commons_edge::Server,
    /// Its data dir.
    pub dir: tempfile::TempDir,
}

impl Edge {
    /// Starts one; `tune` adjusts the test configuration.
    pub async fn start(tune: impl FnOnce(&mut commons_edge::Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, tune).await
    }

    /// Starts one on an existing data dir.
    pub async fn start_in(
        dir: tempfile::TempDir,
        tune: impl FnOnce(&mut commons_edge::Config),
    ) -> Self {
        let mut config = commons_edge::server::test_utils::config(dir.path());
        tune(&mut config);
        let server = commons_edge::Server::bind(config).await.unwrap();
        Self { server, dir }
    }

    /// Base URL.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Creates a federation key through the admin API.
    pub async fn federation_key(&self, client: &reqwest::Client, label: &str) -> String {
        let r: Value = client
            .post(format!("{}/api/admin/federation-keys", self.url()))
            .bearer_auth(commons_edge::server::test_utils::ADMIN_TOKEN)
            .json(&json!({"label": label}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["key"].as_str().unwrap().to_owned()
    }

    /// How many coordinators the edge knows.
    pub async fn coordinator_count(&self, client: &reqwest::Client) -> u64 {
        self.admin(client, "/api/admin/coordinators").await["total"]
            .as_u64()
            .unwrap_or(0)
    }

    /// Requests the edge has counted, per kind, over all its days (`/api/admin/metrics`).
    pub async fn request_counts(
        &self,
        client: &reqwest::Client,
    ) -> std::collections::HashMap<String, u64> {
        let m = self.admin(client, "/api/admin/metrics").await;
        let mut total = std::collections::HashMap::new();
        for day in m["days"].as_array().into_iter().flatten() {
            for (kind, n) in day["counts"].as_object().into_iter().flatten() {
                *total.entry(kind.clone()).or_insert(0) += n.as_u64().unwrap_or(0);
            }
        }
        total
    }

    /// An admin GET.
    pub async fn admin(&self, client: &reqwest::Client, path: &str) -> Value {
        get_json(
            client,
            &format!("{}{path}", self.url()),
            commons_edge::server::test_utils::ADMIN_TOKEN,
        )
        .await
    }
}

/// Waits until `check` holds, polling every 50 ms, at most `secs`.
pub async fn eventually<F, Fut>(secs: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

/// What a fake worker saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Requests served.
    pub requests: AtomicU64,
}

/// A worker's HTTP server on loopback that answers `/api/service/{service}/{*path}` by echoing what it received
/// (after `x-echo-delay-ms`, when a request carries it: a service that takes its time).
#[derive(Debug)]
pub struct WorkerServer {
    /// Its name (echoed in answers).
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Counters.
    pub seen: Arc<Seen>,
    task: JoinHandle<()>,
}

async fn echo(
    State((name, seen)): State<(String, Arc<Seen>)>,
    Path((service, path)): Path<(String, String)>,
    req: Request,
) -> Response {
    seen.requests.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = req.into_parts();
    if let Some(ms) = parts
        .headers
        .get("x-echo-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms.min(60_000))).await;
    }
    let header = |n: &str| {
        parts
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if parts.headers.get("x-echo-body").is_some() {
        // Stream the body straight back.
        return Response::builder()
            .header("x-worker", name)
            .body(Body::new(body))
            .unwrap();
    }
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    axum::Json(json!({
        "worker": name,
        "service": service,
        "path": path,
        "method": parts.method.as_str(),
        "query": parts.uri.query(),
        "body_len": bytes.len(),
        "x_test": header("x-test"),
        "x_forwarded_for": header("x-forwarded-for"),
        "host": header("host"),
        "gateway_key": header("x-commons-gateway-key"),
    }))
    .into_response()
}

/// The routes of a [`WorkerServer`] named `name`, counting into `seen`: what a worker's gateway would serve.
pub fn echo_routes(name: &str, seen: Arc<Seen>) -> Router {
    Router::new()
        .route("/api/service/{service}/{*path}", any(echo))
        .with_state((name.to_owned(), seen))
}

impl WorkerServer {
    /// Starts one.
    pub async fn start(name: &str) -> Self {
        let seen = Arc::new(Seen::default());
        let app = echo_routes(name, seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            name: name.into(),
            addr,
            seen,
            task,
        }
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops it: its port refuses connections afterwards.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A registered worker's credentials.
#[derive(Debug, Clone)]
pub struct Registered {
    /// Id.
    pub id: String,
    /// Token.
    pub token: String,
}

/// Registers a 4-core, 16 GiB worker reachable at `endpoint`.
pub async fn register(client: &reqwest::Client, coordinator: &str, endpoint: &str) -> Registered {
    let gib = 1u64 << 30;
    let body = json!({"capabilities": {"cpu": {"cores": 4, "threads": 8}, "memory_bytes": 16 * gib,
        "disks": [{"mount": "/", "total_bytes": 100 * gib, "free_bytes": 50 * gib}]}, "endpoint": endpoint});
    let r: Value = client
        .post(format!("{coordinator}/api/worker/register"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Registered {
        id: r["worker_id"].as_str().unwrap().into(),
        token: r["worker_token"].as_str().unwrap().into(),
    }
}

/// Sends a heartbeat.
pub async fn heartbeat(
    client: &reqwest::Client,
    coordinator: &str,
    w: &Registered,
    status: &str,
    load: f64,
) {
    heartbeat_with(client, coordinator, w, status, load, json!([])).await;
}

/// Sends a heartbeat that reports `containers` (a JSON list of `{name, state, restarts}`).
pub async fn heartbeat_with(
    client: &reqwest::Client,
    coordinator: &str,
    w: &Registered,
    status: &str,
    load: f64,
    containers: Value,
) {
    let r = client
        .post(format!("{coordinator}/api/worker/heartbeat"))
        .bearer_auth(&w.token)
        .json(&json!({"worker_id": w.id, "status": status, "load": load, "containers": containers}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// The build folder (`CARGO_TARGET_DIR`, else the workspace's `target`), where the tests keep what they make once per
/// machine and find what `cargo xtask` built.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The reference (pinned by digest) of a service image `cargo xtask images` built and pushed; `.ci/test` builds them
/// into the loopback registry before the tests run.
pub fn built_image(service: &str) -> String {
    let path = target_dir().join("images").join("images.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "no {} ({e}): run `cargo xtask images --registry 127.0.0.1:5000 --profile dev` (as .ci/test does)",
            path.display()
        )
    });
    let list: std::collections::BTreeMap<String, String> =
        toml::from_str(&text).expect("images.toml");
    list.get(service)
        .unwrap_or_else(|| panic!("{} lists no {service} image", path.display()))
        .clone()
}

/// The operator key the tests sign catalogues with: a minisign pair without password, made once per machine in
/// `$CARGO_TARGET_DIR/test-operator-key/` (minisign is installed by `.ci/packages tests`).
/// (secret key file, public key text)
pub fn test_catalogue_key() -> &'static (PathBuf, String) {
    static KEY: std::sync::OnceLock<(PathBuf, String)> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let target = target_dir();
        let dir = target.join("test-operator-key");
        if !dir.join("operator.key").exists() {
            // Made aside and renamed into place: test processes running at once agree on one key.
            let tmp = target.join(format!("test-operator-key.{}", std::process::id()));
            std::fs::create_dir_all(&tmp).unwrap();
            let ok = std::process::Command::new("minisign")
                .args(["-G", "-W", "-f", "-p"])
                .arg(tmp.join("operator.pub"))
                .arg("-s")
                .arg(tmp.join("operator.key"))
                .stdout(std::process::Stdio::null())
                .status()
                .expect("minisign (apt install minisign; .ci/packages tests installs it)");
            assert!(ok.success(), "minisign -G");
            if std::fs::rename(&tmp, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
        }
        (
            dir.join("operator.key"),
            std::fs::read_to_string(dir.join("operator.pub")).unwrap(),
        )
    })
}

/// Signs `path` as an operator's catalogue with [`test_catalogue_key`] (writes `<path>.minisig`, which the
/// coordinator serves beside it); returns the public key, for the agents' `catalogue_keys`.
pub fn sign_catalogue(path: &std::path::Path) -> String {
    let (secret, public) = test_catalogue_key();
    let mut sig = path.as_os_str().to_owned();
    sig.push(".minisig");
    let ok = std::process::Command::new("minisign")
        .arg("-S")
        .arg("-s")
        .arg(secret)
        .arg("-m")
        .arg(path)
        .arg("-x")
        .arg(&sig)
        .args([
            "-t",
            &format!("file:{}", commons_shared::catalogue::SIGNED_NAME),
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("minisign");
    assert!(ok.success(), "minisign -S");
    public.clone()
}

/// A catalogue of one service, ocr on the image `cargo xtask images` built, with `replicas`, in `dir`; signed with
/// [`test_catalogue_key`].
pub fn ocr_catalogue(dir: &std::path::Path, replicas: u32) -> PathBuf {
    operator_catalogue(
        dir,
        &format!(
            "[[service]]\nname = \"ocr\"\nimage = {:?}\nport = 8884\nmin_ram = \"64MB\"\nmin_cores = 1\n\
             replicas = {replicas}\nenv = {{ COMMONS_OCR_LANGUAGES = \"eng\" }}\n\
             verify = {{ paths = [\"ocr\"], ignore = [\"ms\"] }}\n",
            built_image("ocr"),
        ),
    )
}

/// An agent that joins through `edge` and runs the loopback registry's images without network, their sockets
/// under `sockets`.
pub fn service_agent_settings(
    edge: &str,
    instance: &str,
    sockets: &std::path::Path,
) -> commons_agent::settings::Settings {
    commons_agent::settings::Settings {
        edge_url: edge.into(),
        containers: true,
        allowed_images: Some(vec!["127.0.0.1:5000/".into()]),
        memory_mb: 512,
        instance: instance.into(),
        dht: false,
        service_reach: commons_agent::settings::ServiceReach::Socket,
        socket_dir: Some(sockets.to_owned()),
        models_dir: Some(sockets.with_file_name("models")),
        catalogue_keys: vec![test_catalogue_key().1.clone()],
        ..Default::default()
    }
}

/// Starts an agent with [`service_agent_settings`] (credentials, sockets and models in `dir`, no GPU), without waiting.
pub fn spawn_service_agent(
    edge: &str,
    instance: &str,
    dir: &std::path::Path,
) -> commons_agent::agent::AgentHandle {
    let probe = std::sync::Arc::new(commons_agent::hardware::RecordedProbe(Err(
        commons_agent::hardware::NoGpu("no driver in tests".into()),
    )));
    commons_agent::agent::start(
        service_agent_settings(edge, instance, &dir.join("s")),
        std::sync::Arc::new(commons_agent::credentials::FileStore::new(
            dir.join("creds.json"),
        )),
        probe,
    )
}

/// Starts an agent as [`spawn_service_agent`] does and waits until it is active.
pub async fn start_service_agent(
    edge: &str,
    instance: &str,
    dir: &std::path::Path,
) -> commons_agent::agent::AgentHandle {
    let mut a = spawn_service_agent(edge, instance, dir);
    a.wait_for(std::time::Duration::from_secs(60), |s| {
        *s == commons_agent::agent::State::Active
    })
    .await
    .expect("the agent is active");
    a
}

/// The container engine as the agent [`spawn_service_agent`] started in `dir` sees it: its containers only (the
/// tests remove what a crashed agent left, and check that a quitting one left nothing).
pub async fn service_engine(
    edge: &str,
    instance: &str,
    dir: &std::path::Path,
) -> commons_agent::containers::Engine {
    commons_agent::containers::Engine::connect(
        service_agent_settings(edge, instance, &dir.join("s")).policy(),
    )
    .await
    .expect("a container engine: run .ci/engine.sh and export DOCKER_HOST")
}

/// The socket of the one service container of that agent, once it runs.
pub async fn service_socket(edge: &str, instance: &str, dir: &std::path::Path) -> Option<PathBuf> {
    let ours = service_engine(edge, instance, dir)
        .await
        .ours()
        .await
        .ok()?;
    match ours.into_iter().next()?.upstream {
        commons_agent::containers::Upstream::Socket(s) => Some(s),
        commons_agent::containers::Upstream::Port(_) => None,
    }
}

/// The `p` quantile (0 to 1) of sorted figures, for the benchmarks: the smallest value at or above that share
/// (NaN when there are none).
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// An edge and a coordinator registered with it whose catalogue is [`ocr_catalogue`] (`replicas`), heartbeating its
/// workers every second; waits until the edge lists the coordinator.
pub async fn ocr_pool(client: &reqwest::Client, replicas: u32) -> (Edge, Coordinator) {
    pool(client, move |dir| ocr_catalogue(dir, replicas)).await
}

/// An edge and a coordinator registered with it whose catalogue `catalogue` writes (in the coordinator's folder),
/// heartbeating its workers every second; waits until the edge lists the coordinator.
pub async fn pool(
    client: &reqwest::Client,
    catalogue: impl FnOnce(&std::path::Path) -> PathBuf,
) -> (Edge, Coordinator) {
    pool_tuned(client, catalogue, |_| {}).await
}

/// [`pool`], with `tune` adjusting the coordinator's configuration.
pub async fn pool_tuned(
    client: &reqwest::Client,
    catalogue: impl FnOnce(&std::path::Path) -> PathBuf,
    tune: impl FnOnce(&mut commons_coordinator::Config),
) -> (Edge, Coordinator) {
    let edge = Edge::start(|_| {}).await;
    let key = edge.federation_key(client, "pool").await;
    let c = Coordinator::federated(&edge, &key, 200, |cfg, dir| {
        cfg.catalogue = Some(catalogue(dir));
        cfg.heartbeat_interval_secs = 1;
        tune(cfg);
    })
    .await;
    assert!(
        eventually(10, || async { edge.coordinator_count(client).await == 1 }).await,
        "the coordinator registers with the edge"
    );
    (edge, c)
}

/// The Python the tests run (a venv with tests/models/requirements.txt, which .ci/setup makes): `COMMONS_TEST_PYTHON`.
pub fn python() -> PathBuf {
    std::env::var_os("COMMONS_TEST_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            let venv = PathBuf::from(std::env::var_os("HOME")?).join(".cache/commons-venv/bin/python");
            venv.exists().then_some(venv)
        })
        .expect("the tests' Python packages: run .ci/setup (it makes ~/.cache/commons-venv), or set COMMONS_TEST_PYTHON")
}

/// The tiny llm model (a Llama-architecture GGUF with random weights, tests/models/tiny_gguf.py), written once per
/// machine into `$CARGO_TARGET_DIR/test-models/`: (file, its bytes' SHA-256, size).
pub fn tiny_model() -> &'static (PathBuf, String, u64) {
    static MODEL: std::sync::OnceLock<(PathBuf, String, u64)> = std::sync::OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = target_dir().join("test-models");
        std::fs::create_dir_all(&dir).unwrap();
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny_gguf.py");
        // Keyed by the script: a changed generator writes a new file.
        let key = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(std::fs::read(&script).unwrap()))[..12].to_owned()
        };
        let path = dir.join(format!("tiny-{key}.gguf"));
        if !path.exists() {
            let tmp = dir.join(format!("tiny-{key}.{}.partial", std::process::id()));
            let out = std::process::Command::new(python())
                .arg(&script)
                .arg(&tmp)
                .output()
                .expect("python");
            assert!(
                out.status.success(),
                "tiny_gguf.py: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::rename(&tmp, &path).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        let sha = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(&bytes))
        };
        (path, sha, bytes.len() as u64)
    })
}

/// A loopback HTTP server of files (`GET /{name}`), as a model's download site: it honours `Range: bytes=N-`, can cut
/// its first answers short, and remembers the ranges it was asked for.
#[derive(Debug)]
pub struct FileServer {
    addr: SocketAddr,
    state: Arc<FileState>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct FileState {
    files: parking_lot::Mutex<std::collections::HashMap<String, bytes::Bytes>>,
    /// Answers still to cut short, and after how many bytes.
    cut: parking_lot::Mutex<(u32, usize)>,
    /// Every request: (file, the `Range` header).
    asked: parking_lot::Mutex<Vec<(String, Option<String>)>>,
}

async fn serve_file(
    State(s): State<Arc<FileState>>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    let range = req
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    s.asked.lock().push((name.clone(), range.clone()));
    let Some(bytes) = s.files.lock().get(&name).cloned() else {
        return axum::http::StatusCode::NOT_FOUND.into_response();
    };
    let from = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n < bytes.len());
    let total = bytes.len();
    let body = bytes.slice(from.unwrap_or(0)..);
    let cut = {
        let mut c = s.cut.lock();
        (c.0 > 0).then(|| {
            c.0 -= 1;
            c.1
        })
    };
    let mut resp = Response::builder()
        .header("content-length", body.len())
        .header("accept-ranges", "bytes");
    if let Some(from) = from {
        resp = resp.status(206).header(
            "content-range",
            format!("bytes {from}-{}/{total}", total - 1),
        );
    }
    let body = match cut {
        // Promise the whole length, send part of it, then fail: the connection drops mid-body.
        Some(after) => {
            let part = body.slice(..after.min(body.len()));
            Body::from_stream(futures::stream::iter(vec![
                Ok::<_, std::io::Error>(part),
                Err(std::io::Error::other("cut short")),
            ]))
        }
        None => Body::from(body),
    };
    resp.body(body).unwrap()
}

impl FileServer {
    /// Starts one with no files.
    pub async fn start() -> Self {
        let state = Arc::new(FileState {
            files: Default::default(),
            cut: parking_lot::Mutex::new((0, 0)),
            asked: Default::default(),
        });
        let app = Router::new()
            .route("/{name}", axum::routing::get(serve_file))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state, task }
    }

    /// Serves `bytes` as `name`; its URL.
    pub fn put(&self, name: &str, bytes: impl Into<bytes::Bytes>) -> String {
        self.state.files.lock().insert(name.into(), bytes.into());
        format!("http://{}/{name}", self.addr)
    }

    /// Cuts the next `answers` answers short after `after` bytes.
    pub fn cut_next(&self, answers: u32, after: usize) {
        *self.state.cut.lock() = (answers, after);
    }

    /// The requests so far: (file, `Range` header).
    pub fn asked(&self) -> Vec<(String, Option<String>)> {
        self.state.asked.lock().clone()
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A catalogue entry (TOML) for the llm service on the image `cargo xtask images` built, serving `model` (downloaded
/// from `url`), with `replicas`.
pub fn llm_service(url: &str, sha256: &str, size: u64, replicas: u32) -> String {
    llm_service_on("llm", "", url, sha256, size, replicas)
}

/// The same on another of the images built (`llm-cuda`: the GPU form), with more environment (`, KEY = "value"`).
pub fn llm_service_on(
    image: &str,
    env: &str,
    url: &str,
    sha256: &str,
    size: u64,
    replicas: u32,
) -> String {
    format!(
        "[[service]]\nname = \"llm\"\nimage = {:?}\nport = 8000\nmin_ram = \"64MB\"\nmin_cores = 1\n\
         replicas = {replicas}\nenv = {{ COMMONS_LLM_MODEL = \"/models/tiny.gguf\", COMMONS_LLM_CONTEXT = \"512\", \
         COMMONS_LLM_PARALLEL = \"2\"{env} }}\n\
         models = [{{ name = \"tiny.gguf\", url = {url:?}, size = {size}, sha256 = {sha256:?} }}]\n",
        built_image(image),
    )
}
