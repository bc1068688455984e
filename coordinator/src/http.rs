//! The HTTP API: routes, extractors, and the worker-facing handlers.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State,
};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use axum::{Json, Router};
use commons_shared::ErrorBody;
use commons_shared::api::{
    Health, HealthWorkers, HeartbeatResponse, RegisterRequest, RegisterResponse,
};
use commons_shared::validate::{MAX_BODY_BYTES, MAX_ID_LEN, parse_heartbeat, parse_registration};
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use utoipa::OpenApi;

use crate::auth::Bearer;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::{admin, proxy};

/// The client's address (from the connection; 0.0.0.0 when there is none, as in `oneshot` tests).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
                .unwrap_or(IpAddr::from([0, 0, 0, 0])),
        ))
    }
}

/// A request body within the route's limit; a larger one is a JSON 413, never a plain-text error.
#[derive(Debug)]
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(b) => Ok(Self(b)),
            Err(BytesRejection::FailedToBufferBody(e))
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::TooLarge(MAX_BODY_BYTES))
            }
            Err(e) => Err(ApiError::BadRequest(format!(
                "cannot read the request body: {e}"
            ))),
        }
    }
}

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
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    let service = Router::new()
        .route("/api/service/{service}", any(proxy::forward_root))
        .route("/api/service/{service}/{*path}", any(proxy::forward))
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(proxy_limit));
    api.merge(service)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a handler panicked");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(ErrorBody::new("internal", "internal error")),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint; see /api/openapi.json".into())
}

async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(ErrorBody::new(
            "method_not_allowed",
            "this endpoint does not take that method",
        )),
    )
        .into_response()
}

/// Registers a worker (Commons' shape or the legacy RMA shape).
#[utoipa::path(post, path = "/api/worker/register", request_body = RegisterRequest,
    responses((status = 200, body = RegisterResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 429, body = ErrorBody)))]
async fn register(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Body(body): Body,
) -> ApiResult<Json<RegisterResponse>> {
    state.check_register_rate(ip)?;
    let new = parse_registration(&body)?;
    Ok(Json(state.register(new).await?))
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
    Ok(Json(state.heartbeat(hb, token.token())?))
}

/// A worker leaves.
#[utoipa::path(delete, path = "/api/worker/unregister/{id}", params(("id" = String, Path)),
    responses((status = 200), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("worker_token" = [])))]
async fn unregister(
    State(state): State<AppState>,
    Path(id): Path<String>,
    token: Bearer,
) -> ApiResult<Json<serde_json::Value>> {
    if id.len() > MAX_ID_LEN {
        return Err(ApiError::Invalid {
            field: "id".into(),
            message: format!("at most {MAX_ID_LEN} characters"),
        });
    }
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
        crate::metrics::handle().render(),
    )
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        for name in ["worker_token", "admin_token"] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Commons coordinator", description = "Worker registry, assignment, heartbeats, routing and admin API."),
    paths(register, heartbeat, unregister, health, admin::workers, admin::worker, admin::stats, admin::admin_health,
          admin::services, admin::history, admin::create_enrollment, proxy::forward),
    modifiers(&SecurityAddon)
)]
struct ApiDoc;
