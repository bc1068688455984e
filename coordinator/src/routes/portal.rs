//! The admin portal's side of the coordinator: login sessions (an HttpOnly cookie), the live feed (a WebSocket of
//! topology and stats deltas), the coordinators list, the installers, and the built portal itself at `/`.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::time::Duration;

use axum::Json;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, get, post};
use commons_server::extract::{Body, ClientIp};
use commons_shared::ErrorBody;
use commons_shared::edge::{CoordinatorFigures, CoordinatorInfo, CoordinatorList};
use commons_shared::portal::{
    CoordinatorsView, LiveMessage, LoginRequest, Release, ReleaseList, Session, TopologyDelta,
    release_kind, release_version,
};
use commons_shared::validate::parse_json;
use parking_lot::Mutex;
use serde_json::json;
use sha2::{Digest, Sha256};
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};

use crate::access::{Admin, COOKIE, session_cookie};
use crate::error::{ApiError, ApiResult};
use crate::state::{AppState, rfc3339};
use crate::stats::snapshot;

/// Installers listed at most.
const MAX_RELEASES: usize = 200;

pub(crate) fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/api/admin/login", post(login))
        .route("/api/admin/logout", post(logout))
        .route("/api/admin/session", get(session))
        .route("/api/admin/live", get(live))
        .route("/api/admin/coordinators", get(coordinators))
        .route("/api/releases", get(releases))
        .route("/releases/{file}", get(release_file))
        .route("/", get(portal))
        .route("/{*path}", any(portal))
}

fn cookie(state: &AppState, value: &str, max_age: u64) -> HeaderValue {
    let secure = if state.coordinator_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .expect("a session token is a valid header value")
}

fn session_body(state: &AppState, left: Duration) -> Session {
    Session {
        authenticated: true,
        coordinator: state.config.name.clone(),
        expires_in_secs: left.as_secs(),
    }
}

/// Logs in with the admin token: sets an HttpOnly, SameSite=Strict session cookie. Wrong tokens count against the
/// address's limit (429 beyond it).
#[utoipa::path(post, path = "/api/admin/login", request_body = LoginRequest,
    responses((status = 200, body = Session), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 429, body = ErrorBody)))]
pub(crate) async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Body(body): Body,
) -> ApiResult<Response> {
    let req: LoginRequest = parse_json(&body)?;
    if req.token.is_empty() || req.token.len() > 256 {
        return Err(ApiError::Invalid {
            field: "token".into(),
            message: "the admin token: 16 to 256 characters".into(),
        });
    }
    state.check_admin(Some(&req.token), ip)?;
    let ttl = Duration::from_secs(state.config.session_ttl_secs);
    let token = state.sessions.create(ttl);
    tracing::info!(%ip, "portal login");
    let mut res = Json(session_body(&state, ttl)).into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        cookie(&state, &token, state.config.session_ttl_secs),
    );
    Ok(res)
}

/// Ends the session and clears the cookie.
#[utoipa::path(post, path = "/api/admin/logout", responses((status = 200)))]
pub(crate) async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(t) = session_cookie(&headers) {
        state.sessions.end(t);
    }
    let mut res = Json(json!({ "status": "logged_out" })).into_response();
    res.headers_mut()
        .insert(header::SET_COOKIE, cookie(&state, "", 0));
    res
}

/// Whether the caller is logged in (cookie or bearer token).
#[utoipa::path(get, path = "/api/admin/session",
    responses((status = 200, body = Session), (status = 401, body = ErrorBody)), security(("admin_token" = [])))]
pub(crate) async fn session(
    State(state): State<AppState>,
    _: Admin,
    headers: HeaderMap,
) -> Json<Session> {
    let left = session_cookie(&headers)
        .and_then(|t| state.sessions.left(t))
        .unwrap_or(Duration::from_secs(state.config.session_ttl_secs));
    Json(session_body(&state, left))
}

/// The live feed: a WebSocket that sends a snapshot of the topology and stats, then only what changed.
#[utoipa::path(get, path = "/api/admin/live",
    responses((status = 101, description = "the WebSocket: JSON messages (LiveMessage), a snapshot then changes"),
              (status = 400, body = ErrorBody)),
    security(("admin_token" = [])))]
pub(crate) async fn live(
    State(state): State<AppState>,
    _: Admin,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let ws = ws.map_err(|e| {
        ApiError::BadRequest(format!(
            "this is a WebSocket; open it with a WebSocket client ({})",
            e.body_text()
        ))
    })?;
    Ok(ws
        .max_message_size(4096)
        .on_upgrade(move |socket| feed(state, socket)))
}

async fn feed(state: AppState, mut socket: WebSocket) {
    let mut topology = crate::topology::build(&state).await;
    let mut stats = snapshot(&state).0;
    let first = LiveMessage::Snapshot {
        topology: topology.clone(),
        stats: stats.clone(),
    };
    if send(&mut socket, &first).await.is_err() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(state.config.live_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = crate::topology::build(&state).await;
                let now_stats = snapshot(&state).0;
                let delta = TopologyDelta::between(&topology, &now);
                let changed = (now_stats != stats).then(|| now_stats.clone());
                if delta.is_empty() && changed.is_none() {
                    continue;
                }
                let msg = LiveMessage::Delta { topology: delta, stats: changed };
                if send(&mut socket, &msg).await.is_err() {
                    return;
                }
                topology = now;
                stats = now_stats;
            }
            incoming = socket.recv() => match incoming {
                // The portal says nothing; pings are answered by axum.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

async fn send(socket: &mut WebSocket, msg: &LiveMessage) -> Result<(), axum::Error> {
    let text = serde_json::to_string(msg).expect("live messages serialise");
    socket.send(Message::Text(text.into())).await
}

/// The coordinators this one knows of: the edge's list (with `edge_admin_token`), else the DHT's coordinator records,
/// else itself.
#[utoipa::path(get, path = "/api/admin/coordinators",
    responses((status = 200, body = CoordinatorsView), (status = 401, body = ErrorBody)), security(("admin_token" = [])))]
pub(crate) async fn coordinators(
    State(state): State<AppState>,
    _: Admin,
) -> Json<CoordinatorsView> {
    let mut message = None;
    if let (Some(edge), Some(token)) = (&state.config.edge_url, &state.config.edge_admin_token) {
        match edge_coordinators(edge, &token.0).await {
            Ok(list) => {
                return Json(CoordinatorsView {
                    source: "edge".into(),
                    coordinators: list.coordinators,
                    message: None,
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read the edge's coordinators");
                message = Some(format!(
                    "the edge did not answer ({e}); showing what the DHT knows"
                ));
            }
        }
    }
    if let Some(dht) = state.dht.get() {
        let found = dht.find_coordinators(commons_shared::dht::ANY_REGION).await;
        let now = rfc3339(crate::state::now_ms());
        let coordinators = found
            .into_iter()
            .map(|f| CoordinatorInfo {
                id: f.peer.to_base58(),
                url: f.record.url,
                region: Some(f.record.region).filter(|r| !r.is_empty()),
                location: None,
                dht_addrs: Vec::new(),
                capacity: None,
                figures: CoordinatorFigures {
                    load: f.record.load,
                    workers: f.record.workers,
                    ..Default::default()
                },
                healthy: true,
                forwarded: 0,
                errors: 0,
                last_seen: now.clone(),
                registered_at: String::new(),
            })
            .collect::<Vec<_>>();
        if !coordinators.is_empty() {
            return Json(CoordinatorsView {
                source: "dht".into(),
                coordinators,
                message,
            });
        }
    }
    let (s, _) = snapshot(&state);
    let live = s.workers_by_tier.gpu_workers
        + s.workers_by_tier.service_workers
        + s.workers_by_tier.data_workers;
    let load = [
        (
            s.workers_by_tier.gpu_workers,
            s.average_load_by_tier.gpu_workers,
        ),
        (
            s.workers_by_tier.service_workers,
            s.average_load_by_tier.service_workers,
        ),
        (
            s.workers_by_tier.data_workers,
            s.average_load_by_tier.data_workers,
        ),
    ]
    .iter()
    .map(|(n, l)| *n as f64 * l)
    .sum::<f64>()
        / (live.max(1) as f64);
    Json(CoordinatorsView {
        source: "local".into(),
        coordinators: vec![CoordinatorInfo {
            id: state.config.name.clone(),
            url: state.coordinator_url.clone(),
            region: state.config.region.clone(),
            location: None,
            dht_addrs: state
                .dht
                .get()
                .map(|d| d.address_strings())
                .unwrap_or_default(),
            capacity: None,
            figures: CoordinatorFigures {
                load,
                workers: live as u32,
                ..Default::default()
            },
            healthy: true,
            forwarded: s.requests_total,
            errors: s.errors_total,
            last_seen: rfc3339(crate::state::now_ms()),
            registered_at: String::new(),
        }],
        message,
    })
}

async fn edge_coordinators(edge: &str, token: &str) -> Result<CoordinatorList, reqwest::Error> {
    commons_server::tls::http()
        .timeout(Duration::from_secs(5))
        .build()?
        .get(format!(
            "{}/api/admin/coordinators",
            edge.trim_end_matches('/')
        ))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
}

/// The SHA-256 of each installer, by name, size and modification time, so a listing hashes each file once.
type HashCache = HashMap<(String, u64, std::time::SystemTime), String>;

fn release_hashes() -> &'static Mutex<HashCache> {
    static CACHE: std::sync::OnceLock<Mutex<HashCache>> = std::sync::OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Whether a file name is one we serve: plain characters, no path.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
}

fn list_releases(dir: &FsPath) -> std::io::Result<Vec<Release>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = entry.metadata()?;
        if !meta.is_file()
            || !plain_name(&name)
            || name.ends_with(".sha256")
            || crate::updates::is_sidecar(&name)
        {
            continue;
        }
        let key = (name.clone(), meta.len(), meta.modified()?);
        let cached = release_hashes().lock().get(&key).cloned();
        let sha256 = match cached {
            Some(h) => h,
            None => {
                let mut hasher = Sha256::new();
                std::io::copy(&mut std::fs::File::open(entry.path())?, &mut hasher)?;
                let h = hex::encode(hasher.finalize());
                release_hashes().lock().insert(key, h.clone());
                h
            }
        };
        out.push(Release {
            version: release_version(&name).to_owned(),
            kind: release_kind(&name).to_owned(),
            size_bytes: meta.len(),
            sha256,
            url: format!("/releases/{name}"),
            file: name,
        });
        if out.len() >= MAX_RELEASES {
            break;
        }
    }
    out.sort_by(|a, b| {
        version_key(&b.version)
            .cmp(&version_key(&a.version))
            .then_with(|| a.file.cmp(&b.file))
    });
    Ok(out)
}

/// A release's version for sorting: semver, a short one ("1.2") read as "1.2.0"; a name without one sorts last.
fn version_key(v: &str) -> Option<semver::Version> {
    [v.to_owned(), format!("{v}.0"), format!("{v}.0.0")]
        .iter()
        .find_map(|v| semver::Version::parse(v).ok())
}

/// The installers in the releases directory, newest first, with size and SHA-256 (public: volunteers download them).
#[utoipa::path(get, path = "/api/releases", responses((status = 200, body = ReleaseList)))]
pub(crate) async fn releases(State(state): State<AppState>) -> ApiResult<Json<ReleaseList>> {
    let Some(dir) = state.config.releases_dir.clone() else {
        return Ok(Json(ReleaseList {
            releases: Vec::new(),
            headless_install: None,
        }));
    };
    let releases = tokio::task::spawn_blocking(move || list_releases(&dir))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(format!("cannot read the releases directory: {e}")))?;
    let headless_install = releases
        .iter()
        .find(|r| r.file.contains("agent") && r.file.ends_with(".deb"))
        .map(|r| {
            format!(
                "curl -fsSLO {base}{url} && echo '{sha}  {file}' | sha256sum -c && sudo apt install ./{file}",
                base = state.coordinator_url,
                url = r.url,
                sha = r.sha256,
                file = r.file
            )
        });
    Ok(Json(ReleaseList {
        releases,
        headless_install,
    }))
}

async fn release_file(
    State(state): State<AppState>,
    axum::extract::Path(file): axum::extract::Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let dir = state
        .config
        .releases_dir
        .clone()
        .ok_or_else(|| ApiError::NotFound("this coordinator hosts no installers".into()))?;
    if !plain_name(&file) {
        return Err(ApiError::NotFound(format!("no installer {file:?}")));
    }
    let res = ServeFile::new(dir.join(&file))
        .oneshot(req)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if res.status() == StatusCode::NOT_FOUND {
        return Err(ApiError::NotFound(format!("no installer {file:?}")));
    }
    Ok(res.map(axum::body::Body::new))
}

/// The portal: files from `portal_dir`, `index.html` for the app's own paths; an unknown `/api/...` path stays a
/// JSON 404.
async fn portal(State(state): State<AppState>, req: Request) -> Response {
    if req.uri().path().starts_with("/api/") {
        return ApiError::NotFound("no such endpoint; see /api/openapi.json".into())
            .into_response();
    }
    // Any method reaches here so that an unknown `/api/` path is a 404 whatever its method; the portal's files
    // are only read.
    if !matches!(req.method(), &Method::GET | &Method::HEAD) {
        return commons_server::method_not_allowed().await;
    }
    let Some(dir) = state.config.portal_dir.clone() else {
        return not_built(None);
    };
    let index = dir.join("index.html");
    if !index.is_file() {
        return not_built(Some(&dir));
    }
    let serve = ServeDir::new(&dir)
        .precompressed_gzip()
        .fallback(ServeFile::new(index).precompressed_gzip());
    match serve.oneshot(req).await {
        Ok(mut res) => {
            res.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            res.map(axum::body::Body::new)
        }
        Err(e) => ApiError::Internal(e.to_string()).into_response(),
    }
}

fn not_built(dir: Option<&PathBuf>) -> Response {
    let why = match dir {
        Some(d) => format!("{} has no index.html.", d.display()),
        None => "no portal_dir is configured.".into(),
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Html(format!(
            "<!doctype html><title>Commons</title><h1>The portal is not built</h1><p>{why}</p>\
             <p>Build it with <code>cargo xtask portal</code> and start the coordinator with \
             <code>--portal-dir portal/dist</code>. The API is served here meanwhile: <a href=\"/api/openapi.json\">/api/openapi.json</a>.</p>"
        )),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_installer_names_are_served() {
        assert!(plain_name("commons_0.1.0_amd64.deb"));
        assert!(!plain_name("../etc/passwd"));
        assert!(!plain_name(".hidden"));
        assert!(!plain_name("a/b"));
    }

    #[test]
    fn releases_are_listed_newest_first_with_their_hash() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("commons_0.1.0_amd64.deb"), b"old").unwrap();
        std::fs::write(dir.path().join("commons_0.10.0_amd64.deb"), b"new").unwrap();
        std::fs::write(dir.path().join(".partial"), b"x").unwrap();
        let list = list_releases(dir.path()).unwrap();
        assert_eq!(
            list.iter().map(|r| r.version.as_str()).collect::<Vec<_>>(),
            ["0.10.0", "0.1.0"]
        );
        assert_eq!(
            list[1].sha256,
            hex::encode(Sha256::digest(b"old")),
            "the SHA-256 of the file's bytes"
        );
        assert_eq!(list[0].size_bytes, 3);
    }
}
