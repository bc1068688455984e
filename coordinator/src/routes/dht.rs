//! The DHT's views: `GET /api/dht/stats` and `GET /api/dht/topology` (admin).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use commons_shared::dht::{DhtStats, DhtTopology};

use crate::access::Admin;
use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/dht/topology", get(topology))
        .route("/api/dht/stats", get(stats))
}

/// `GET /api/dht/stats`: this coordinator's node.
#[utoipa::path(get, path = "/api/dht/stats", responses((status = 200, body = DhtStats), (status = 401, body = commons_shared::ErrorBody)),
    security(("admin_token" = [])))]
pub(crate) async fn stats(State(state): State<AppState>, _: Admin) -> Json<DhtStats> {
    Json(match state.dht.get() {
        Some(d) => d.snapshot().await.stats,
        None => DhtStats::default(),
    })
}

/// `GET /api/dht/topology` (seed shape): this coordinator, the peers in its routing table, and the workers
/// registered here, with routing-table links and each worker's link to this coordinator.
#[utoipa::path(get, path = "/api/dht/topology", responses((status = 200, body = DhtTopology), (status = 401, body = commons_shared::ErrorBody)),
    security(("admin_token" = [])))]
pub(crate) async fn topology(State(state): State<AppState>, _: Admin) -> Json<DhtTopology> {
    Json(crate::topology::build(&state).await)
}
