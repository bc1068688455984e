//! The edge's HTTP API.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body as AxumBody;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use axum::{Json, Router};
use commons_server::auth::Bearer;
use commons_server::consumers::doc as keys;
use commons_server::error::{ApiError, ApiResult};
use commons_server::extract::{Body, ClientIp, Id};
use commons_server::forward::Target;
use commons_server::openapi::{Conventions, services};
use commons_server::tokens::admin_routes;
use commons_shared::ErrorBody;
use commons_shared::edge::{
    Bootstrap, CoordinatorList, DayCounts, EdgeAck, EdgeHealth, EdgeMetrics, EdgeRegisterRequest,
    EdgeTopology, Seed,
};
use commons_shared::validate::{
    MAX_BODY_BYTES, MAX_STRING_LEN, parse_edge_heartbeat, parse_edge_register,
};
use serde_json::json;
use tower_http::limit::RequestBodyLimitLayer;
use utoipa::OpenApi;

use crate::state::{Coordinator, EdgeState};

/// The kind of an edge request, for the per-day counts.
pub fn kind_of(path: &str) -> &'static str {
    if path == "/api/dht/bootstrap" {
        "bootstrap"
    } else if path == "/api/worker/register" {
        "registration"
    } else if path.starts_with("/api/service/") {
        "service"
    } else if path.starts_with("/api/edge/") {
        "federation"
    } else if path.starts_with("/api/admin/") {
        "admin"
    } else {
        "other"
    }
}

async fn count(State(state): State<EdgeState>, req: Request, next: Next) -> Response {
    let kind = kind_of(req.uri().path());
    state.count(kind);
    metrics::counter!("commons_edge_requests_total", "kind" => kind).increment(1);
    next.run(req).await
}

/// The whole API.
pub fn router(state: EdgeState) -> Router {
    let api = Router::new()
        .route("/api/edge/register", post(register))
        .route("/api/edge/heartbeat", post(heartbeat))
        .route("/api/edge/coordinators/{id}", delete(deregister))
        .route("/api/worker/register", post(register_worker))
        .route("/api/dht/bootstrap", get(bootstrap))
        .route("/health", get(health))
        .route("/metrics", get(prometheus))
        .route("/api/openapi.json", get(openapi))
        .route("/api/admin/coordinators", get(coordinators))
        .route("/api/admin/topology", get(topology))
        .route("/api/admin/metrics", get(request_metrics))
        .route("/api/edge/keys", get(shared_keys))
        .merge(admin_routes::<_, Admin>(
            "/api/admin/federation-keys",
            |s: &EdgeState| &s.keys,
        ))
        .merge(commons_server::consumers::admin_routes::<_, Admin>(
            "/api/admin/keys",
            |s: &EdgeState| &s.consumers,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    let service = Router::new()
        .route("/api/service/{service}", any(forward_root))
        .route("/api/service/{service}/{*path}", any(forward_service))
        .route("/v1/{*path}", any(forward_openai))
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(
            state.config.proxy_body_limit_bytes,
        ));
    commons_server::finish(
        api.merge(service)
            .layer(middleware::from_fn_with_state(state.clone(), count))
            .with_state(state),
    )
}

/// Admin credentials, checked as an extractor.
struct Admin;

impl axum::extract::FromRequestParts<EdgeState> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &EdgeState,
    ) -> Result<Self, ApiError> {
        let ClientIp(ip) = ClientIp::from_request_parts(parts, state)
            .await
            .unwrap_or(ClientIp([0, 0, 0, 0].into()));
        state.check_admin(commons_server::auth::bearer(&parts.headers), ip)?;
        Ok(Admin)
    }
}

fn ack(state: &EdgeState, id: String) -> Json<EdgeAck> {
    let (heartbeat_interval, ttl) = state.timing(&id);
    Json(EdgeAck {
        status: "ok".into(),
        id,
        heartbeat_interval,
        ttl,
        keys_version: state.consumers.version(),
    })
}

/// The federation's consumer API keys (their hashes and what each may do; revoked ones left out), for its
/// coordinators, which check them. Fetched when the version in a heartbeat's answer changes.
#[utoipa::path(get, path = "/api/edge/keys",
    responses((status = 200, body = commons_shared::consumers::SharedKeys)), security(("federation_key" = [])))]
async fn shared_keys(
    State(state): State<EdgeState>,
    token: Bearer,
) -> ApiResult<Json<commons_shared::consumers::SharedKeys>> {
    Ok(Json(state.shared_keys(token.token())?))
}

/// A coordinator registers (federation key as Bearer).
#[utoipa::path(post, path = "/api/edge/register", request_body = EdgeRegisterRequest,
    responses((status = 200, body = EdgeAck), (status = 403, body = ErrorBody)), security(("federation_key" = [])))]
async fn register(
    State(state): State<EdgeState>,
    token: Bearer,
    Body(body): Body,
) -> ApiResult<Json<EdgeAck>> {
    let (req, url) = parse_edge_register(&body)?;
    let id = state.register(req, url, token.token()).await?;
    Ok(ack(&state, id))
}

/// A coordinator's heartbeat: refreshes its last-seen time and figures.
#[utoipa::path(post, path = "/api/edge/heartbeat", request_body = commons_shared::edge::EdgeHeartbeat,
    responses((status = 200, body = EdgeAck), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("federation_key" = [])))]
async fn heartbeat(
    State(state): State<EdgeState>,
    token: Bearer,
    Body(body): Body,
) -> ApiResult<Json<EdgeAck>> {
    let hb = parse_edge_heartbeat(&body)?;
    let id = hb.id.clone();
    state.heartbeat(hb, token.token()).await?;
    Ok(ack(&state, id))
}

/// A coordinator leaves (with its own federation key).
#[utoipa::path(delete, path = "/api/edge/coordinators/{id}", params(("id" = String, Path, max_length = 64)),
    responses((status = 200, body = commons_shared::api::Revoked), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("federation_key" = [])))]
async fn deregister(
    State(state): State<EdgeState>,
    token: Bearer,
    Id(id): Id,
) -> ApiResult<Json<serde_json::Value>> {
    state.deregister(&id, token.token()).await?;
    Ok(Json(json!({"status": "deregistered", "id": id})))
}

/// Tries up to two coordinators: connects first (or takes a connection kept alive from an earlier request), so an
/// unreachable one is skipped (and avoided for a while) before the request is spent.
async fn forward_to(
    state: &EdgeState,
    client: IpAddr,
    location: Option<&str>,
    service: Option<&str>,
    path: &str,
    mut req: Request,
) -> ApiResult<Response> {
    state.upstreams.enter(req.headers_mut())?;
    let query = req.uri().query().map(str::to_owned);
    let suspect = Duration::from_secs(state.config.suspect_secs);
    let mut tried: Vec<String> = Vec::new();
    for _ in 0..2 {
        let Some(c) = state.choose(&tried, location, service) else {
            break;
        };
        let Some(target) = Target::from_base(&c.url, path, query.as_deref()) else {
            tried.push(c.id.clone());
            continue;
        };
        let start = Instant::now();
        // A connection kept from an earlier request to that coordinator, else a new one.
        match state.upstreams.open(&target).await {
            Ok(conn) => {
                let timeout = Duration::from_secs(state.config.proxy_timeout_secs);
                let result = state
                    .upstreams
                    .send(conn, &target, req, client, timeout)
                    .await;
                let ok = matches!(&result, Ok(r) if !r.status().is_server_error());
                c.record(ok, start.elapsed(), None);
                return result;
            }
            Err(e) => {
                tracing::warn!(coordinator = %c.id, error = %e, "cannot reach coordinator; avoiding it and trying another");
                c.record(false, start.elapsed(), Some(suspect));
                tried.push(c.id.clone());
            }
        }
    }
    let what = service.map_or("registrations".to_owned(), |s| format!("the service {s:?}"));
    Err(ApiError::Unavailable(format!(
        "no coordinator can take {what} right now ({} tried); try again shortly",
        tried.len()
    )))
}

/// Forwards a worker's registration to a coordinator, whose answer says where to heartbeat.
#[utoipa::path(post, path = "/api/worker/register", request_body = commons_shared::api::RegisterRequest,
    responses((status = 200, body = commons_shared::api::RegisterResponse), (status = 503, body = ErrorBody)))]
async fn register_worker(
    State(state): State<EdgeState>,
    ClientIp(ip): ClientIp,
    req: Request,
) -> ApiResult<Response> {
    state.check_register_rate(ip)?;
    let (parts, body) = req.into_parts();
    let Body(bytes) = Body::from_request(Request::from_parts(parts.clone(), body), &state).await?;
    // Prefer a coordinator near the worker when it says where it is; the coordinator validates the rest.
    let region = serde_json::from_slice::<serde_json::Value>(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))?
        .pointer("/capabilities/region")
        .and_then(|v| v.as_str())
        .filter(|r| !r.is_empty() && r.len() <= MAX_STRING_LEN)
        .map(str::to_owned);
    let req = Request::from_parts(parts, AxumBody::from(bytes));
    forward_to(
        &state,
        ip,
        region.as_deref(),
        None,
        "/api/worker/register",
        req,
    )
    .await
}

use axum::extract::FromRequest;

async fn forward_service(
    State(state): State<EdgeState>,
    ClientIp(ip): ClientIp,
    Path((service, path)): Path<(String, String)>,
    req: Request,
) -> Response {
    if !commons_shared::catalogue::is_service_name(&service) {
        return no_service(&service);
    }
    let full = format!("/api/service/{service}/{path}");
    forward_to(&state, ip, None, Some(&service), &full, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn forward_root(
    State(state): State<EdgeState>,
    ClientIp(ip): ClientIp,
    Path(service): Path<String>,
    req: Request,
) -> Response {
    if !commons_shared::catalogue::is_service_name(&service) {
        return no_service(&service);
    }
    let full = format!("/api/service/{service}");
    forward_to(&state, ip, None, Some(&service), &full, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// A name that cannot be a service's: 404, as a coordinator answers for a service it does not have.
fn no_service(service: &str) -> Response {
    ApiError::NotFound(format!("there is no service {service:?}")).into_response()
}

/// `ANY /v1/{path}`: the OpenAI-compatible API, which the `llm` service serves (an OpenAI client's `base_url` is
/// the edge's `/v1`).
async fn forward_openai(
    State(state): State<EdgeState>,
    ClientIp(ip): ClientIp,
    Path(path): Path<String>,
    req: Request,
) -> Response {
    let service = commons_shared::catalogue::OPENAI_SERVICE;
    let full = format!("/api/service/{service}/v1/{path}");
    forward_to(&state, ip, None, Some(service), &full, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// DHT bootstrap seeds: live coordinators with DHT addresses.
#[utoipa::path(get, path = "/api/dht/bootstrap", responses((status = 200, body = Bootstrap)))]
async fn bootstrap(State(state): State<EdgeState>) -> Json<Bootstrap> {
    let seeds: Vec<Seed> = state
        .all()
        .iter()
        .filter(|c| !c.dht_addrs.is_empty())
        .take(16)
        .map(|c| Seed {
            node_id: c.id.clone(),
            multiaddrs: c.dht_addrs.clone(),
            location: c.location.clone().or(c.region.clone()),
        })
        .collect();
    Json(Bootstrap {
        count: seeds.len(),
        seeds,
        ttl: state.config.bootstrap_ttl_secs,
    })
}

/// Seed shape: `{status, coordinators, message}`.
#[utoipa::path(get, path = "/health", responses((status = 200, body = EdgeHealth)))]
async fn health(State(state): State<EdgeState>) -> Json<EdgeHealth> {
    let n = state.healthy_count();
    Json(EdgeHealth {
        status: if n > 0 { "healthy" } else { "degraded" }.into(),
        coordinators: n,
        message: if n > 0 {
            "Edge router operational".into()
        } else {
            "no coordinator is registered yet".into()
        },
    })
}

async fn prometheus(State(state): State<EdgeState>) -> impl IntoResponse {
    metrics::gauge!("commons_edge_coordinators").set(state.all().len() as f64);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        commons_server::metrics::handle().render(),
    )
}

fn infos(state: &EdgeState) -> Vec<commons_shared::edge::CoordinatorInfo> {
    let now = Instant::now();
    state
        .all()
        .iter()
        .map(|c: &Arc<Coordinator>| c.info(now))
        .collect()
}

/// Registered coordinators.
#[utoipa::path(get, path = "/api/admin/coordinators", responses((status = 200, body = CoordinatorList)),
    security(("admin_token" = [])))]
async fn coordinators(State(state): State<EdgeState>, _: Admin) -> Json<CoordinatorList> {
    let coordinators = infos(&state);
    Json(CoordinatorList {
        total: coordinators.len(),
        coordinators,
    })
}

/// The global view: coordinators with their worker counts and load.
#[utoipa::path(get, path = "/api/admin/topology", responses((status = 200, body = EdgeTopology)),
    security(("admin_token" = [])))]
async fn topology(State(state): State<EdgeState>, _: Admin) -> Json<EdgeTopology> {
    let coordinators = infos(&state);
    let mut services = std::collections::BTreeMap::new();
    for c in &coordinators {
        for (s, n) in &c.figures.services {
            *services.entry(s.clone()).or_insert(0u64) += u64::from(*n);
        }
    }
    let total_workers = coordinators
        .iter()
        .map(|c| u64::from(c.figures.workers))
        .sum();
    Json(EdgeTopology {
        coordinators,
        total_workers,
        services,
    })
}

/// Requests per kind per day, 30 days.
#[utoipa::path(get, path = "/api/admin/metrics", responses((status = 200, body = EdgeMetrics)),
    security(("admin_token" = [])))]
async fn request_metrics(State(state): State<EdgeState>, _: Admin) -> Json<EdgeMetrics> {
    let days = state
        .counts()
        .into_iter()
        .map(|(day, counts)| DayCounts {
            total: counts.values().sum(),
            day,
            counts,
        })
        .collect();
    Json(EdgeMetrics { days })
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Commons edge router",
        description = "Registry of coordinators, DHT bootstrap, routing to coordinators."
    ),
    paths(
        register,
        heartbeat,
        shared_keys,
        register_worker,
        bootstrap,
        health,
        coordinators,
        topology,
        request_metrics,
        deregister,
        keys::list_keys,
        keys::create_key,
        keys::revoke_key,
        keys::rotate_key,
        list_federation_keys,
        create_federation_key,
        revoke_federation_key,
        services::service,
        services::service_root,
        services::openai,
        services::metrics
    ),
    modifiers(&Conventions)
)]
struct ApiDoc;

/// Lists the federation keys (never the keys themselves). The handlers are
/// [`commons_server::tokens::admin_routes`]; these document them.
#[utoipa::path(get, path = "/api/admin/federation-keys",
    responses((status = 200, body = commons_shared::edge::FederationKeyList)), security(("admin_token" = [])))]
#[allow(dead_code)]
fn list_federation_keys() {}

/// Creates a federation key for a coordinator (shown once).
#[utoipa::path(post, path = "/api/admin/federation-keys", request_body = commons_shared::api::EnrollmentTokenRequest,
    responses((status = 200, body = commons_shared::edge::FederationKey)), security(("admin_token" = [])))]
#[allow(dead_code)]
fn create_federation_key() {}

/// Revokes a federation key: its coordinators can no longer register or heartbeat.
#[utoipa::path(delete, path = "/api/admin/federation-keys/{id}", params(("id" = String, Path, max_length = 64)),
    responses((status = 200, body = commons_shared::api::Revoked), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)),
    security(("admin_token" = [])))]
#[allow(dead_code)]
fn revoke_federation_key() {}

#[cfg(test)]
mod tests {
    use super::kind_of;

    #[test]
    fn kinds() {
        for (path, kind) in [
            ("/api/dht/bootstrap", "bootstrap"),
            ("/api/worker/register", "registration"),
            ("/api/service/ocr/x", "service"),
            ("/api/edge/heartbeat", "federation"),
            ("/api/admin/metrics", "admin"),
            ("/health", "other"),
        ] {
            assert_eq!(kind_of(path), kind);
        }
    }
}
