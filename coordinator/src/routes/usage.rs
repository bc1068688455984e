//! What the pool served and who served it, from the usage ledger: the admin's usage report per consumer key, the
//! public leaderboard of volunteers, and a worker's own contribution (for its window and `commons-agent status`).

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use commons_server::extract::Query;
use commons_shared::ErrorBody;
use commons_shared::usage::{
    Contribution, Leaderboard, Served, UsageQuery, UsageReport, Volunteer,
};
use serde::Deserialize;

use crate::access::Admin;
use crate::auth::Bearer;
use crate::error::{ApiError, ApiResult};
use crate::state::{AppState, now_ms};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/admin/usage", get(usage))
        .route("/api/volunteers", get(volunteers))
        .route("/api/worker/{id}/contribution", get(contribution))
}

/// Each consumer key's use over the last `hours`, per bucket of `bucket_minutes`, with its top services and the
/// top services over all keys.
#[utoipa::path(get, path = "/api/admin/usage", params(UsageQuery),
    responses((status = 200, body = UsageReport), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("admin_token" = [])))]
pub(crate) async fn usage(
    State(state): State<AppState>,
    _: Admin,
    Query(q): Query<UsageQuery>,
) -> ApiResult<Json<UsageReport>> {
    q.check()?;
    let bucket_ms = i64::from(q.bucket_minutes) * 60_000;
    let since_ms = (now_ms() - i64::from(q.hours) * 3_600_000).div_euclid(bucket_ms) * bucket_ms;
    let (keys, services) = state.store.usage_report(since_ms, bucket_ms).await?;
    Ok(Json(UsageReport {
        since_ms,
        bucket_ms,
        keys,
        services,
    }))
}

/// How many volunteers a leaderboard lists.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LeaderboardQuery {
    /// 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// The volunteers' leaderboard, best first: credit from the coordinator's own records, with the display name each
/// volunteer chose (none: anonymous). Public.
#[utoipa::path(get, path = "/api/volunteers", params(LeaderboardQuery),
    responses((status = 200, body = Leaderboard), (status = 422, body = ErrorBody)))]
pub(crate) async fn volunteers(
    State(state): State<AppState>,
    Query(q): Query<LeaderboardQuery>,
) -> ApiResult<Json<Leaderboard>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::Invalid {
            field: "limit".into(),
            message: "1 to 1000".into(),
        });
    }
    let rows = state.store.leaderboard(limit as usize).await?;
    let volunteers = rows
        .into_iter()
        .zip(1..)
        .map(|((worker_id, display_name, credit), rank)| Volunteer {
            rank,
            worker_id,
            display_name,
            points: credit.points(),
            credit,
        })
        .collect();
    Ok(Json(Leaderboard { volunteers }))
}

/// What this worker served today and donated this week, and its credit: for its volunteer's window and
/// `commons-agent status`. The worker's own token (or the admin's).
#[utoipa::path(get, path = "/api/worker/{id}/contribution", params(("id" = String, Path)),
    responses((status = 200, body = Contribution), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("worker_token" = [])))]
pub(crate) async fn contribution(
    State(state): State<AppState>,
    Path(id): Path<String>,
    token: Bearer,
) -> ApiResult<Json<Contribution>> {
    let (w, _) = state.authorize_worker(&id, token.token())?;
    let record = state
        .store
        .worker_record(w.id.to_string(), now_ms())
        .await?;
    let today = record
        .today
        .into_iter()
        .map(|(service, requests)| Served {
            unit: state
                .catalogue
                .index_of(&service)
                .and_then(|i| state.catalogue.get(i))
                .map(|s| s.unit.clone())
                .unwrap_or_default(),
            service,
            requests,
        })
        .collect();
    Ok(Json(Contribution {
        today,
        week_hours: record.week_ms as f64 / 3_600_000.0,
        credit: record.credit,
    }))
}
