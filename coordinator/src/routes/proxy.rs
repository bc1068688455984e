//! Service routing: `ANY /api/service/{type}/{*path}` goes to a healthy worker offering that service.
//!
//! The worker is picked at random, weighted by [`commons_shared::routing::route_weight`] (health, inverse load,
//! latency EWMA, requests in flight). The TCP connection is opened first, so a worker that cannot be reached is
//! given up for another one (once) before any of the request body is read; the body is then streamed to the
//! worker and the answer streamed back ([`commons_server::forward`]).
//!
//! Where the request goes on the worker: with an `endpoint` (or tunnel URL), `{endpoint}/api/service/{type}/{path}`
//! (the agent's gateway speaks the same paths as the coordinator); a legacy worker with only an address gets
//! `http://{ip_address}:{service port}/{path}` (the container itself).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use commons_server::extract::ClientIp;
use commons_server::forward::{self, Target};
use commons_shared::WorkerId;
use commons_shared::routing::{pick_weighted, rendezvous_rank, route_weight};
use rand::Rng;

use crate::error::ApiError;
use crate::registry::Worker;
use crate::state::AppState;

fn target(
    w: &Worker,
    endpoint: Option<&str>,
    service: &str,
    port: u16,
    rest: &str,
    query: Option<&str>,
) -> Option<Target> {
    let sep = if rest.is_empty() { "" } else { "/" };
    if let Some(base) = endpoint {
        return Target::from_base(base, &format!("/api/service/{service}{sep}{rest}"), query);
    }
    let ip: std::net::IpAddr = w.ip_address.as_deref()?.parse().ok()?;
    let mut path_and_query = format!("/{rest}");
    if let Some(q) = query {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    Some(Target {
        authority: std::net::SocketAddr::new(ip, port).to_string(),
        path_and_query,
    })
}

/// Whether a worker can be reached at all: an http endpoint, or (legacy) an address.
fn reachable(w: &Worker, endpoint: Option<&str>) -> bool {
    match endpoint {
        Some(e) => e.starts_with("http://"),
        None => w.ip_address.is_some(),
    }
}

fn pick(
    state: &AppState,
    service: usize,
    skip: &[WorkerId],
    rest: &str,
    query: Option<&str>,
) -> Option<(Arc<Worker>, Target)> {
    let spec = state.catalogue.get(service)?;
    let now = Instant::now();
    let mut cands = Vec::new();
    let mut weights = Vec::new();
    for w in state.registry.providers(service) {
        if skip.contains(&w.id) {
            continue;
        }
        let (status, load) = {
            let live = w.live.lock();
            if !reachable(&w, live.endpoint.as_deref()) || !live.serves(spec) {
                continue;
            }
            (live.status(now, state.liveness), live.load)
        };
        let weight = route_weight(status, load, w.stats.latency_ms(), w.stats.in_flight());
        if weight > 0.0 {
            cands.push(w);
            weights.push(weight);
        }
    }
    // A key that names the replica's state (a rag collection): the candidate that ranks it highest (rendezvous
    // hashing), the same on every request while the candidates stay; the others keep their weights only as the
    // fallback when it cannot be reached.
    let sticky = spec.sticky_key(rest);
    let choose = |weights: &[f64]| match sticky {
        Some(key) => (0..cands.len())
            .filter(|&i| weights[i] > 0.0)
            .max_by_key(|&i| rendezvous_rank(key, cands[i].id.0)),
        None => pick_weighted(weights, rand::rng().random::<f64>()),
    };
    // Build the target for the chosen worker only, not for every candidate.
    while let Some(i) = choose(&weights) {
        let w = &cands[i];
        let endpoint = w.live.lock().endpoint.clone();
        match target(w, endpoint.as_deref(), &spec.name, spec.port, rest, query) {
            Some(t) => return Some((cands.swap_remove(i), t)),
            None => weights[i] = 0.0,
        }
    }
    None
}

/// The least loaded live worker offering `service` in the DHT (another coordinator's), as a target.
async fn dht_target(
    state: &AppState,
    service: &str,
    rest: &str,
    query: Option<&str>,
) -> Option<Target> {
    let endpoints = dht_endpoints(state, service).await?;
    let sep = if rest.is_empty() { "" } else { "/" };
    endpoints
        .iter()
        .find_map(|e| Target::from_base(e, &format!("/api/service/{service}{sep}{rest}"), query))
}

/// How long a DHT answer for a service is reused: a burst of requests for a service none of our workers offers
/// asks the DHT (16 shard lookups and a record read per provider) once, not once per request.
const DHT_ROUTE_TTL: Duration = Duration::from_secs(5);

/// Endpoints of the live workers offering `service` in the DHT, least loaded first.
async fn dht_endpoints(state: &AppState, service: &str) -> Option<Arc<[String]>> {
    let dht = state.dht.get()?;
    if let Some((at, list)) = state.dht_routes.lock().get(service)
        && at.elapsed() < DHT_ROUTE_TTL
    {
        return Some(list.clone());
    }
    let mut found: Vec<_> = dht
        .find_service(service)
        .await
        .into_iter()
        .filter_map(|f| Some((f.record.load, f.record.endpoint?)))
        .filter(|(_, e)| e.starts_with("http://"))
        .collect();
    found.sort_by(|a, b| a.0.total_cmp(&b.0));
    let list: Arc<[String]> = found.into_iter().map(|(_, e)| e).collect();
    // Keyed by catalogue service names only (unknown ones are refused before routing), so it stays small.
    state
        .dht_routes
        .lock()
        .insert(service.to_owned(), (Instant::now(), list.clone()));
    Some(list)
}

/// Forwards `ANY /api/service/{service}/{*path}`.
#[utoipa::path(post, path = "/api/service/{service}/{path}", params(("service" = String, Path), ("path" = String, Path)),
    responses((status = 200, description = "the worker's answer"), (status = 404, body = commons_shared::ErrorBody),
              (status = 502, body = commons_shared::ErrorBody), (status = 503, body = commons_shared::ErrorBody)))]
pub(crate) async fn forward(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Path((service, path)): Path<(String, String)>,
    req: Request,
) -> Response {
    route(state, ip, service, path, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Forwards `ANY /api/service/{service}`.
pub(crate) async fn forward_root(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Path(service): Path<String>,
    req: Request,
) -> Response {
    route(state, ip, service, String::new(), req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Forwards `ANY /v1/{*path}`, the OpenAI-compatible API, to the `llm` service (an OpenAI client's `base_url` is
/// the coordinator's `/v1`).
#[utoipa::path(post, path = "/v1/{path}", params(("path" = String, Path)),
    responses((status = 200, description = "the llm service's answer (an event stream when asked to stream)"),
              (status = 404, body = commons_shared::ErrorBody), (status = 502, body = commons_shared::ErrorBody),
              (status = 503, body = commons_shared::ErrorBody)))]
pub(crate) async fn forward_openai(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Path(path): Path<String>,
    req: Request,
) -> Response {
    let service = commons_shared::catalogue::OPENAI_SERVICE.to_owned();
    route(state, ip, service, format!("v1/{path}"), req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// The response header that names the worker that answered.
const WORKER_HEADER: &str = "x-commons-worker";

async fn route(
    state: AppState,
    client: std::net::IpAddr,
    service: String,
    rest: String,
    req: Request,
) -> Result<Response, ApiError> {
    let index = state.catalogue.index_of(&service).ok_or_else(|| {
        ApiError::NotFound(format!(
            "there is no service {service:?}; see /api/admin/services"
        ))
    })?;
    let start = Instant::now();
    state.requests_total.fetch_add(1, Ordering::Relaxed);
    let query = req.uri().query().map(str::to_owned);
    let connect_timeout = Duration::from_millis(state.config.proxy_connect_timeout_ms);
    let mut tried = Vec::new();
    // One try and one retry on another worker when the connection cannot be made.
    for _ in 0..2 {
        let Some((w, t)) = pick(&state, index, &tried, &rest, query.as_deref()) else {
            break;
        };
        match forward::connect(&t.authority, connect_timeout).await {
            Ok(stream) => {
                let in_flight = w.stats.start();
                let timeout = Duration::from_secs(state.config.proxy_timeout_secs);
                let result = forward::send(stream, &t, req, client, timeout)
                    .await
                    .map(|mut r| {
                        if let Ok(v) = axum::http::HeaderValue::from_str(&w.id.to_string()) {
                            r.headers_mut().insert(WORKER_HEADER, v);
                        }
                        r
                    });
                drop(in_flight);
                let ok = matches!(&result, Ok(r) if !r.status().is_server_error());
                w.stats.record(ok, start.elapsed());
                state
                    .metrics
                    .route_latency
                    .record(start.elapsed().as_secs_f64());
                if !ok {
                    state.errors_total.fetch_add(1, Ordering::Relaxed);
                    state.metrics.route_errors.increment(1);
                }
                return result;
            }
            Err(e) => {
                tracing::warn!(worker = %w.id, error = %e, "cannot connect to worker; trying another")
            }
        }
        w.stats.record(false, start.elapsed());
        tried.push(w.id);
    }
    // None of ours offers it: ask the DHT for a worker of another coordinator.
    if tried.is_empty()
        && let Some(t) = dht_target(&state, &service, &rest, query.as_deref()).await
    {
        match forward::connect(&t.authority, connect_timeout).await {
            Ok(stream) => {
                let timeout = Duration::from_secs(state.config.proxy_timeout_secs);
                let result = forward::send(stream, &t, req, client, timeout).await;
                state
                    .metrics
                    .route_latency
                    .record(start.elapsed().as_secs_f64());
                return result;
            }
            Err(e) => {
                tracing::warn!(target = %t.authority, error = %e, "cannot connect to a worker found in the DHT")
            }
        }
    }
    state.errors_total.fetch_add(1, Ordering::Relaxed);
    state.metrics.route_errors.increment(1);
    if tried.is_empty() {
        Err(ApiError::NoWorker(service))
    } else {
        Err(ApiError::Unreachable {
            service,
            tried: tried.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(endpoint: Option<&str>, ip: Option<&str>) -> Worker {
        Worker {
            id: WorkerId(1),
            token_hash: [0; 32],
            tier: commons_shared::tier::Tier::Service,
            roles: Default::default(),
            caps: Default::default(),
            ip_address: ip.map(Into::into),
            tunnel_url: None,
            legacy: false,
            registered_at_ms: 0,
            peer_id: None,
            live: parking_lot::Mutex::new(crate::registry::Live {
                reported: commons_shared::api::ReportedStatus::Healthy,
                load: 0.0,
                free_memory: 0,
                last_seen: Instant::now(),
                last_heartbeat_ms: None,
                gpus: vec![],
                containers: vec![],
                services: vec![],
                assignment_version: 1,
                agent_version: "".into(),
                endpoint: endpoint.map(Into::into),
                dirty: false,
            }),
            stats: Default::default(),
        }
    }

    #[test]
    fn targets() {
        let t = target(
            &worker(Some("http://127.0.0.1:9000/base/"), None),
            Some("http://127.0.0.1:9000/base/"),
            "ocr",
            8884,
            "v1/run",
            Some("x=1"),
        )
        .unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path_and_query.as_str()),
            ("127.0.0.1:9000", "/base/api/service/ocr/v1/run?x=1")
        );
        let t = target(
            &worker(Some("http://w.example"), None),
            Some("http://w.example"),
            "ocr",
            8884,
            "",
            None,
        )
        .unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path_and_query.as_str()),
            ("w.example:80", "/api/service/ocr")
        );
        let t = target(
            &worker(None, Some("10.1.2.3")),
            None,
            "ocr",
            8884,
            "run",
            None,
        )
        .unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path_and_query.as_str()),
            ("10.1.2.3:8884", "/run")
        );
        assert!(
            target(
                &worker(Some("https://x.trycloudflare.com"), None),
                Some("https://x.trycloudflare.com"),
                "ocr",
                1,
                "",
                None
            )
            .is_none()
        );
        assert!(target(&worker(None, None), None, "ocr", 1, "", None).is_none());
    }
}
