//! The HTTP API: one module per area, each registering its own routes (`admin`, `dht`, `portal`, `proxy`,
//! `updates`, `usage`), assembled here with the worker-facing routes (register, heartbeat, unregister, health, metrics) and the
//! OpenAPI document. Handlers reach what lies below them (state, queries, the store); no module outside `routes`
//! imports one of them (`.ci/layers` checks it).

mod admin;
mod channel;
mod dht;
mod portal;
mod proxy;
mod updates;
mod usage;

use axum::extract::{DefaultBodyLimit, State};
use axum::response::IntoResponse;
use axum::routing::{any, delete, get, post};
use axum::{Json, Router};
use commons_server::extract::{Body, ClientIp, Id};
use commons_shared::ErrorBody;
use commons_shared::api::{
    Health, HealthWorkers, HeartbeatResponse, RegisterRequest, RegisterResponse,
};
use commons_shared::validate::{MAX_BODY_BYTES, parse_heartbeat, parse_registration};
use serde_json::json;
use tower_http::limit::RequestBodyLimitLayer;
use utoipa::OpenApi;

use crate::auth::Bearer;
use crate::error::ApiResult;
use crate::state::AppState;
use commons_server::consumers::doc as keys;
use commons_server::openapi::{Conventions, services};

/// The whole API.
pub fn router(state: AppState) -> Router {
    let proxy_limit = state.config.proxy_body_limit_bytes;
    let api = Router::new()
        .route("/api/worker/register", post(register))
        .route("/api/worker/heartbeat", post(heartbeat))
        .route("/api/worker/unregister/{id}", delete(unregister))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/openapi.json", get(openapi))
        .merge(admin::routes())
        .merge(channel::routes())
        .merge(dht::routes())
        .merge(updates::routes())
        .merge(portal::routes())
        .merge(usage::routes())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    let service = Router::new()
        .route("/api/service/{service}", any(proxy::forward_root))
        .route("/api/service/{service}/{*path}", any(proxy::forward))
        .route("/v1/{*path}", any(proxy::forward_openai))
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(proxy_limit));
    commons_server::finish(api.merge(service).with_state(state))
}

/// Registers a worker (Commons' shape or the legacy RMA shape).
#[utoipa::path(post, path = "/api/worker/register", request_body = RegisterRequest,
    responses((status = 200, body = RegisterResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 429, body = ErrorBody)))]
async fn register(
    State(state): State<AppState>,
    ClientIp(peer): ClientIp,
    headers: axum::http::HeaderMap,
    Body(body): Body,
) -> ApiResult<Json<RegisterResponse>> {
    state.check_register_rate(client_ip(&state, peer, &headers))?;
    let new = parse_registration(&body)?;
    check_endpoint(&state, "endpoint", new.endpoint.as_deref()).await?;
    check_endpoint(&state, "tunnel_url", new.tunnel_url.as_deref()).await?;
    Ok(Json(state.register(new).await?))
}

/// Refuses a worker's endpoint that requests could not be forwarded to (this coordinator itself, or a private
/// address on a public coordinator): 422 naming the field, so the volunteer hears what is wrong at once.
async fn check_endpoint(state: &AppState, field: &str, url: Option<&str>) -> ApiResult<()> {
    let Some(url) = url else { return Ok(()) };
    state
        .upstreams
        .check_url(url)
        .await
        .map_err(|e| e.in_field(field))
}

/// The client's address: the peer's, or, when the peer is a trusted proxy (the edge), the last address it put in
/// `X-Forwarded-For`.
fn client_ip(
    state: &AppState,
    peer: std::net::IpAddr,
    headers: &axum::http::HeaderMap,
) -> std::net::IpAddr {
    if !state.config.trusted_proxies.contains(&peer) {
        return peer;
    }
    headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(peer)
}

/// A worker's heartbeat.
#[utoipa::path(post, path = "/api/worker/heartbeat", request_body = commons_shared::api::HeartbeatRequest,
    responses((status = 200, body = HeartbeatResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("worker_token" = [])))]
async fn heartbeat(
    State(state): State<AppState>,
    token: Bearer,
    Body(body): Body,
) -> ApiResult<Json<HeartbeatResponse>> {
    let hb = parse_heartbeat(&body)?;
    let w = state.heartbeat_sender(&hb.worker_id, token.token())?;
    // A new endpoint is checked before it is taken, and only once its worker's token is: nobody else gets a name
    // resolved by sending heartbeats (an unchanged one is resolved again on every connection anyway).
    let moved = hb
        .endpoint
        .as_deref()
        .filter(|e| w.live.lock().endpoint.as_deref() != Some(*e));
    check_endpoint(&state, "endpoint", moved).await?;
    Ok(Json(state.apply_heartbeat(&w, hb)))
}

/// A worker leaves.
#[utoipa::path(delete, path = "/api/worker/unregister/{id}", params(("id" = String, Path, max_length = 64)),
    responses((status = 200), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)),
    security(("worker_token" = [])))]
async fn unregister(
    State(state): State<AppState>,
    Id(id): Id,
    token: Bearer,
) -> ApiResult<Json<serde_json::Value>> {
    let id = state.unregister(&id, token.token()).await?;
    Ok(Json(json!({ "status": "unregistered", "worker_id": id })))
}

/// Liveness and worker counts (seed shape).
#[utoipa::path(get, path = "/health", responses((status = 200, body = Health)))]
async fn health(State(state): State<AppState>) -> Json<Health> {
    let now = std::time::Instant::now();
    let mut workers = HealthWorkers::default();
    for w in state.registry.all() {
        workers.total += 1;
        if w.live.lock().status(now, state.liveness).is_live() {
            workers.active += 1;
        } else {
            workers.stale += 1;
        }
    }
    Json(Health {
        status: "healthy".into(),
        coordinator: state.config.name.clone(),
        workers,
    })
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    crate::tasks::update_gauges(&state);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        commons_server::metrics::handle().render(),
    )
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Commons coordinator", description = "Worker registry, assignment, heartbeats, routing and admin API."),
    paths(register, heartbeat, unregister, channel::open, health, admin::workers, admin::worker, admin::set_trust, admin::stats, admin::admin_health,
          admin::services, admin::history, admin::create_enrollment, admin::list_enrollments, admin::revoke_enrollment,
          keys::list_keys, keys::create_key, keys::revoke_key, keys::rotate_key, services::service,
          services::service_root, services::openai, services::metrics, dht::topology, dht::stats, portal::login,
          portal::logout, portal::session, portal::live, portal::coordinators, portal::releases, updates::updates,
          updates::catalogue, usage::usage, usage::volunteers, usage::contribution),
    modifiers(&Conventions)
)]
struct ApiDoc;
