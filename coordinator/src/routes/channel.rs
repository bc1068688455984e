//! `GET /api/worker/channel`: a worker opens its reverse path ([`commons_server::channel`]), over which this
//! coordinator then sends it service requests (`proxy` prefers it to the worker's endpoint).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use commons_server::channel::{self, PROTOCOL};
use commons_server::extract::Query;
use commons_shared::ErrorBody;
use serde::Deserialize;

use crate::auth::Bearer;
use crate::error::{ApiError, ApiResult};
use crate::registry::{Channel, Worker};
use crate::state::AppState;

/// The channel's routes.
pub(super) fn routes() -> Router<AppState> {
    Router::new().route(channel::PATH, get(open))
}

/// Which worker opens it.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct Opener {
    /// The worker's id (its own token goes in `Authorization`).
    #[param(max_length = 64)]
    worker_id: String,
}

/// Each opening's number: a closing channel forgets itself only while it is still the worker's.
static SERIAL: AtomicU64 = AtomicU64::new(1);

/// Opens a worker's reverse path: answers 101 and, on the upgraded connection, becomes the HTTP/2 client of the
/// worker's gateway. A newer channel replaces an older one of the same worker.
#[utoipa::path(get, path = "/api/worker/channel", params(Opener),
    responses((status = 101, description = "switching to the channel (`Upgrade: commons-channel`)"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 426, body = ErrorBody)),
    security(("worker_token" = [])))]
pub(super) async fn open(
    State(state): State<AppState>,
    token: Bearer,
    Query(opener): Query<Opener>,
    mut req: Request,
) -> ApiResult<Response> {
    let w = state.heartbeat_sender(&opener.worker_id, token.token())?;
    let asked = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(PROTOCOL));
    let upgrade = req
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
        .filter(|_| asked)
        .ok_or_else(|| {
            ApiError::UpgradeRequired(format!(
                "open the channel over HTTP/1.1 with Connection: upgrade and Upgrade: {PROTOCOL}"
            ))
        })?;
    let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let io = match upgrade.await {
            Ok(io) => io,
            Err(e) => {
                return tracing::debug!(worker = %w.id, error = %e, "a channel's upgrade failed");
            }
        };
        match channel::open(io).await {
            Ok((sender, driver)) => {
                *w.channel.lock() = Some(Channel { sender, serial });
                tracing::info!(worker = %w.id, "channel open");
                driver.await;
                forget(&w, serial);
                tracing::info!(worker = %w.id, "channel closed");
            }
            Err(e) => tracing::warn!(worker = %w.id, error = %e, "a channel failed to open"),
        }
    });
    Ok((
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static(PROTOCOL)),
        ],
    )
        .into_response())
}

/// Forgets the worker's channel `serial` (not a newer one that replaced it).
fn forget(w: &Arc<Worker>, serial: u64) {
    let mut c = w.channel.lock();
    if c.as_ref().is_some_and(|c| c.serial == serial) {
        *c = None;
    }
}
