//! The admin API: workers (and their trust), stats, health, services, history, enrollment tokens. Every route needs the admin token.

use std::time::Instant;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use commons_server::extract::{Body, Id, Query};
use commons_shared::ErrorBody;
use commons_shared::api::{
    AdminHealth, EnrollmentToken, EnrollmentTokenRequest, History, HistoryPoint, ServiceCoverage,
    ServicesReport, SetTrust, Stats, WorkerList, WorkerStatus, WorkerSummary,
};
use commons_shared::tier::Tier;
use serde::Deserialize;

use crate::access::Admin;
use crate::error::{ApiError, ApiResult};
use crate::registry::Worker;
use crate::state::{AppState, now_ms, rfc3339};
use crate::stats::snapshot;
use commons_server::tokens::admin_routes;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/admin/workers", get(workers))
        .route("/api/admin/workers/{id}", get(worker))
        .route(
            "/api/admin/workers/{id}/trust",
            axum::routing::put(set_trust),
        )
        .route("/api/admin/stats", get(stats))
        .route("/api/admin/health", get(admin_health))
        .route("/api/admin/services", get(services))
        .route("/api/admin/gaps", get(services))
        .route("/api/admin/history", get(history))
        .merge(admin_routes::<_, Admin>(
            "/api/admin/enrollment-tokens",
            |s: &AppState| &s.enrollments,
        ))
        .merge(commons_server::consumers::admin_routes::<_, Admin>(
            "/api/admin/keys",
            |s: &AppState| &s.consumers,
        ))
}

/// The worker with this id, or 404.
fn find(state: &AppState, id: &str) -> ApiResult<std::sync::Arc<Worker>> {
    id.parse()
        .ok()
        .and_then(|i| state.registry.get(i))
        .ok_or_else(|| ApiError::NotFound(format!("no worker {id:?}")))
}

fn summary(state: &AppState, w: &Worker, now: Instant) -> WorkerSummary {
    let live = w.live.lock();
    let requests = w.stats.requests();
    let errors = w.stats.errors();
    WorkerSummary {
        worker_id: w.id,
        tier: w.tier,
        roles: w.roles,
        status: live.status(now, state.liveness),
        current_load: live.load,
        free_memory_bytes: live.free_memory,
        tasks_completed: requests - errors.min(requests),
        requests,
        errors,
        latency_ms: w.stats.latency_ms(),
        services: state.service_names(&live.services),
        assigned_containers: state.containers(&live.services),
        containers: live.containers.to_vec(),
        gpu_samples: live.gpus.to_vec(),
        last_heartbeat: live.last_heartbeat_ms.map(rfc3339),
        registered_at: rfc3339(w.registered_at_ms),
        ip_address: w.ip_address.as_deref().map(str::to_owned),
        endpoint: live.endpoint.as_deref().map(str::to_owned),
        agent_version: live.agent_version.to_string(),
        legacy: w.legacy,
        capabilities: w.machine.capabilities(),
        trust: live.trust,
        drained: state.drained(live.trust),
        path: w.path(live.endpoint.as_deref()),
        rtt_ms: live.rtt_ms,
        nat: live.nat,
        paths: live.paths.to_vec(),
    }
}

/// Filters and page of `/api/admin/workers`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkerQuery {
    /// 1, 2 or 3.
    #[param(minimum = 1, maximum = 3)]
    tier: Option<u8>,
    /// healthy | degraded | paused | busy | stale | offline.
    #[param(value_type = Option<WorkerStatus>)]
    status: Option<String>,
    /// A service name.
    #[param(max_length = 32)]
    service: Option<String>,
    /// Page size, at most 1000 (default 100).
    #[param(minimum = 0, maximum = 1000)]
    limit: Option<u64>,
    /// Offset.
    #[param(minimum = 0)]
    offset: Option<u64>,
}

/// Workers, filtered and paginated.
#[utoipa::path(get, path = "/api/admin/workers", params(WorkerQuery),
    responses((status = 200, body = WorkerList), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("admin_token" = [])))]
pub(crate) async fn workers(
    State(state): State<AppState>,
    _: Admin,
    Query(q): Query<WorkerQuery>,
) -> ApiResult<Json<WorkerList>> {
    let tier = q
        .tier
        .map(|t| {
            Tier::from_number(t).ok_or_else(|| ApiError::Invalid {
                field: "tier".into(),
                message: "must be 1, 2 or 3".into(),
            })
        })
        .transpose()?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            WorkerStatus::parse(s).ok_or_else(|| ApiError::Invalid {
                field: "status".into(),
                message: "must be healthy, degraded, paused, busy, stale or offline".into(),
            })
        })
        .transpose()?;
    let service = q
        .service
        .as_deref()
        .map(|s| {
            state
                .catalogue
                .index_of(s)
                .ok_or_else(|| ApiError::Invalid {
                    field: "service".into(),
                    message: format!("no service {s:?}"),
                })
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let offset = q.offset.unwrap_or(0);
    let now = Instant::now();
    let mut all: Vec<_> = state
        .registry
        .all()
        .into_iter()
        .filter(|w| tier.is_none_or(|t| w.tier == t))
        .filter(|w| {
            let live = w.live.lock();
            status.is_none_or(|s| live.status(now, state.liveness) == s)
                && service.is_none_or(|s| live.services.contains(&(s as u16)))
        })
        .collect();
    all.sort_by_key(|w| (w.registered_at_ms, w.id));
    let total = all.len() as u64;
    let workers = all
        .iter()
        .skip(offset as usize)
        .take(limit as usize)
        .map(|w| summary(&state, w, now))
        .collect();
    Ok(Json(WorkerList {
        workers,
        total,
        offset,
        limit,
    }))
}

/// One worker.
#[utoipa::path(get, path = "/api/admin/workers/{id}", params(("id" = String, Path)),
    responses((status = 200, body = WorkerSummary), (status = 404, body = ErrorBody)), security(("admin_token" = [])))]
pub(crate) async fn worker(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<WorkerSummary>> {
    let w = find(&state, &id)?;
    Ok(Json(summary(&state, &w, Instant::now())))
}

/// Sets a worker's trust: a drained worker whose volunteer fixed the fault serves again.
#[utoipa::path(put, path = "/api/admin/workers/{id}/trust", params(("id" = String, Path)), request_body = SetTrust,
    responses((status = 200, body = WorkerSummary), (status = 404, body = ErrorBody)), security(("admin_token" = [])))]
pub(crate) async fn set_trust(
    State(state): State<AppState>,
    _: Admin,
    Id(id): Id,
    Body(body): Body,
) -> ApiResult<Json<WorkerSummary>> {
    let SetTrust { trust } = commons_shared::validate::parse_json(&body)?;
    if !(0.0..=1.0).contains(&trust) {
        return Err(ApiError::Invalid {
            field: "trust".into(),
            message: format!("must be from 0 to 1, got {trust}"),
        });
    }
    let w = find(&state, &id)?;
    state.set_trust(&w, trust);
    Ok(Json(summary(&state, &w, Instant::now())))
}

/// Totals (seed shape, extended).
#[utoipa::path(get, path = "/api/admin/stats", responses((status = 200, body = Stats)), security(("admin_token" = [])))]
pub(crate) async fn stats(State(state): State<AppState>, _: Admin) -> Json<Stats> {
    Json(snapshot(&state).0)
}

fn coverage(state: &AppState) -> ServicesReport {
    let now = Instant::now();
    let services: Vec<ServiceCoverage> = state
        .catalogue
        .services()
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let providers = state.registry.providers(i);
            let healthy = providers
                .iter()
                .filter(|w| {
                    let live = w.live.lock();
                    live.status(now, state.liveness).is_routable() && live.serves(spec)
                })
                .count() as u32;
            ServiceCoverage {
                name: spec.name.clone(),
                wanted: spec.replicas,
                assigned: providers.len() as u32,
                healthy,
                gap: spec.replicas.saturating_sub(healthy),
                requires_gpu: spec.requires_gpu,
                queued: u32::try_from(state.queues.waiting(i)).unwrap_or(u32::MAX),
                requests: state.metrics.services.get(i).map_or(0, |m| m.requests()),
            }
        })
        .collect();
    let gaps = services
        .iter()
        .filter(|s| s.gap > 0)
        .map(|s| s.name.clone())
        .collect();
    ServicesReport { services, gaps }
}

/// Overall health (seed shape, extended).
#[utoipa::path(get, path = "/api/admin/health", responses((status = 200, body = AdminHealth)), security(("admin_token" = [])))]
pub(crate) async fn admin_health(State(state): State<AppState>, _: Admin) -> Json<AdminHealth> {
    let (s, minimum) = snapshot(&state);
    let overall = if minimum.gpu_workers && minimum.service_workers {
        "healthy"
    } else if s.workers_by_tier.gpu_workers
        + s.workers_by_tier.service_workers
        + s.workers_by_tier.data_workers
        > 0
    {
        "degraded"
    } else {
        "critical"
    };
    Json(AdminHealth {
        overall_status: overall.into(),
        workers_by_status: s.workers_by_status,
        has_minimum_workers: minimum,
        service_gaps: coverage(&state).gaps,
    })
}

/// Coverage per service and the gaps.
#[utoipa::path(get, path = "/api/admin/services", responses((status = 200, body = ServicesReport)), security(("admin_token" = [])))]
pub(crate) async fn services(State(state): State<AppState>, _: Admin) -> Json<ServicesReport> {
    Json(coverage(&state))
}

/// History range.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct HistoryQuery {
    /// 1h (default), 24h or 7d.
    range: Option<String>,
}

/// Per-minute time series (kept 7 days).
#[utoipa::path(get, path = "/api/admin/history", params(HistoryQuery),
    responses((status = 200, body = History), (status = 422, body = ErrorBody)), security(("admin_token" = [])))]
pub(crate) async fn history(
    State(state): State<AppState>,
    _: Admin,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<Json<History>> {
    let range = q.range.unwrap_or_else(|| "1h".into());
    let ms: i64 = match range.as_str() {
        "1h" => 3_600_000,
        "24h" => 86_400_000,
        "7d" => 7 * 86_400_000,
        _ => {
            return Err(ApiError::Invalid {
                field: "range".into(),
                message: "must be 1h, 24h or 7d".into(),
            });
        }
    };
    let rows = state.store.history(now_ms() - ms, 20_000).await?;
    let points = rows
        .into_iter()
        .filter_map(|(_, data)| serde_json::from_str::<HistoryPoint>(&data).ok())
        .collect();
    Ok(Json(History { range, points }))
}

/// Creates an enrollment token (shown once). The handlers of the enrollment tokens are
/// [`commons_server::tokens::admin_routes`]; these document them.
#[utoipa::path(post, path = "/api/admin/enrollment-tokens", request_body = EnrollmentTokenRequest,
    responses((status = 200, body = EnrollmentToken)), security(("admin_token" = [])))]
#[allow(dead_code)]
pub(crate) fn create_enrollment() {}

/// Lists the enrollment tokens (never the tokens themselves).
#[utoipa::path(get, path = "/api/admin/enrollment-tokens",
    responses((status = 200, body = commons_shared::api::EnrollmentTokenList)), security(("admin_token" = [])))]
#[allow(dead_code)]
pub(crate) fn list_enrollments() {}

/// Revokes an enrollment token: registrations with it are refused from now on.
#[utoipa::path(delete, path = "/api/admin/enrollment-tokens/{id}",
    params(("id" = String, Path, max_length = 64)),
    responses((status = 200, body = commons_shared::api::Revoked), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)),
    security(("admin_token" = [])))]
#[allow(dead_code)]
pub(crate) fn revoke_enrollment() {}
