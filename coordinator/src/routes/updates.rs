//! What clients check against the keys they carry: the update feed `GET /api/updates/{product}/{channel}/{platform}`
//! and the operator's catalogue `GET /api/catalogue`.

use axum::extract::{Path as UrlPath, State};
use axum::routing::get;
use axum::{Json, Router};
use commons_shared::release::{CHANNELS, PRODUCTS, UpdateFeed};

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::updates::{feed, plain};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/updates/{product}/{channel}/{platform}", get(updates))
        .route("/api/catalogue", get(catalogue))
}

/// The operator's catalogue and its minisign signature (both absent with the shipped catalogue). Workers check the
/// signature against the keys their volunteers trust and run only what a trusted catalogue says.
#[utoipa::path(get, path = "/api/catalogue",
    responses((status = 200, body = commons_shared::catalogue::CatalogueOffer)))]
pub(crate) async fn catalogue(
    State(state): State<AppState>,
) -> Json<commons_shared::catalogue::CatalogueOffer> {
    Json(state.catalogue_offer.clone())
}

/// The newest release for a client: its version, notes, download URL, size, SHA-256 and minisign signature. Clients
/// check the signature against the key they carry; this server is not trusted for it.
#[utoipa::path(get, path = "/api/updates/{product}/{channel}/{platform}",
    params(("product" = String, Path, description = "agent or desktop"),
           ("channel" = String, Path, description = "stable or beta"),
           ("platform" = String, Path, description = "e.g. linux-x86_64")),
    responses((status = 200, body = UpdateFeed), (status = 404, body = commons_shared::ErrorBody)))]
pub(crate) async fn updates(
    State(state): State<AppState>,
    UrlPath((product, channel, platform)): UrlPath<(String, String, String)>,
) -> ApiResult<Json<UpdateFeed>> {
    if !PRODUCTS.contains(&product.as_str()) {
        return Err(ApiError::NotFound(format!(
            "no product {product:?} (one of {})",
            PRODUCTS.join(", ")
        )));
    }
    if !CHANNELS.contains(&channel.as_str()) {
        return Err(ApiError::NotFound(format!(
            "no channel {channel:?} (one of {})",
            CHANNELS.join(", ")
        )));
    }
    if !plain(&platform) {
        return Err(ApiError::NotFound(format!(
            "{platform:?} is not a platform name"
        )));
    }
    let Some(dir) = state.config.releases_dir.clone() else {
        return Ok(Json(UpdateFeed {
            latest: None,
            package: None,
        }));
    };
    let f = tokio::task::spawn_blocking(move || feed(&dir, &product, &channel, &platform))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(format!("cannot read the releases directory: {e}")))?;
    Ok(Json(f))
}
