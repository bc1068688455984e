//! Service routing: `ANY /api/service/{type}/{*path}` goes to a healthy worker offering that service.
//!
//! The worker is picked at random, weighted by [`commons_shared::routing::route_weight`] (health, inverse load,
//! latency EWMA, requests in flight). The TCP connection is opened first, so a worker that cannot be reached is
//! given up for another one (once) before any of the request body is read; the body is then streamed to the
//! worker and the answer streamed back.
//!
//! Where the request goes on the worker: with an `endpoint` (or tunnel URL), `{endpoint}/api/service/{type}/{path}`
//! (the agent's gateway speaks the same paths as the coordinator); a legacy worker with only an address gets
//! `http://{ip_address}:{service port}/{path}` (the container itself).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderName, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use commons_shared::WorkerId;
use commons_shared::routing::{pick_weighted, route_weight};
use hyper_util::rt::TokioIo;
use rand::Rng;
use tokio::net::TcpStream;

use crate::error::ApiError;
use crate::http::ClientIp;
use crate::registry::Worker;
use crate::state::AppState;

/// Where one request goes on one worker.
#[derive(Debug)]
struct Target {
    authority: String,
    path_and_query: String,
}

fn target(w: &Worker, service: &str, port: u16, rest: &str, query: Option<&str>) -> Option<Target> {
    let mut path = String::new();
    let authority = if let Some(base) = w.endpoint.as_deref() {
        let uri: Uri = base.parse().ok()?;
        if uri.scheme_str() != Some("http") {
            // TLS to workers arrives with the tunnel work; until then https endpoints are not routed to.
            return None;
        }
        let auth = uri.authority()?;
        let authority = match auth.port_u16() {
            Some(_) => auth.to_string(),
            None => format!("{}:80", auth.host()),
        };
        path.push_str(uri.path().trim_end_matches('/'));
        path.push_str("/api/service/");
        path.push_str(service);
        if !rest.is_empty() {
            path.push('/');
        }
        authority
    } else {
        let ip: std::net::IpAddr = w.ip_address.as_deref()?.parse().ok()?;
        path.push('/');
        std::net::SocketAddr::new(ip, port).to_string()
    };
    path.push_str(rest);
    if let Some(q) = query {
        path.push('?');
        path.push_str(q);
    }
    Some(Target {
        authority,
        path_and_query: path,
    })
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
            (live.status(now, state.liveness), live.load)
        };
        let weight = route_weight(
            status,
            load,
            w.latency_ms(),
            w.in_flight.load(Ordering::Relaxed),
        );
        if weight > 0.0
            && let Some(t) = target(&w, &spec.name, spec.port, rest, query)
        {
            cands.push((w, t));
            weights.push(weight);
        }
    }
    let i = pick_weighted(&weights, rand::rng().random::<f64>())?;
    Some(cands.swap_remove(i))
}

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

fn strip_hop_by_hop(h: &mut axum::http::HeaderMap) {
    for name in &HOP_BY_HOP {
        h.remove(name);
    }
    h.remove(header::TRANSFER_ENCODING);
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
        match tokio::time::timeout(connect_timeout, TcpStream::connect(&t.authority)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                let result = send(&state, &w, t, stream, req, client).await;
                let ok = matches!(&result, Ok(r) if !r.status().is_server_error());
                w.record(ok, start.elapsed());
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
            Ok(Err(e)) => {
                tracing::warn!(worker = %w.id, error = %e, "cannot connect to worker; trying another")
            }
            Err(_) => {
                tracing::warn!(worker = %w.id, "connecting to worker timed out; trying another")
            }
        }
        w.record(false, start.elapsed());
        tried.push(w.id);
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

async fn send(
    state: &AppState,
    w: &Worker,
    t: Target,
    stream: TcpStream,
    req: Request,
    client: std::net::IpAddr,
) -> Result<Response, ApiError> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ApiError::BadGateway(format!("the worker's connection failed: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "worker connection closed");
        }
    });
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(
        header::HOST,
        HeaderValue::from_str(&t.authority).map_err(|e| ApiError::Internal(e.to_string()))?,
    );
    let forwarded = match parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) => format!("{prev}, {client}"),
        None => client.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        parts.headers.insert("x-forwarded-for", v);
    }
    parts.uri = t
        .path_and_query
        .parse()
        .map_err(|_| ApiError::BadRequest("the request path cannot be forwarded".into()))?;
    parts.version = axum::http::Version::HTTP_11;
    let upstream = axum::http::Request::from_parts(parts, body);
    w.in_flight.fetch_add(1, Ordering::Relaxed);
    let answer = tokio::time::timeout(
        Duration::from_secs(state.config.proxy_timeout_secs),
        sender.send_request(upstream),
    )
    .await;
    w.in_flight.fetch_sub(1, Ordering::Relaxed);
    match answer {
        Ok(Ok(resp)) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(parts, Body::new(body)))
        }
        Ok(Err(e)) => Err(ApiError::BadGateway(format!(
            "the worker failed to answer: {e}"
        ))),
        Err(_) => Err(ApiError::GatewayTimeout(format!(
            "the worker did not answer within {} s",
            state.config.proxy_timeout_secs
        ))),
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
            endpoint: endpoint.map(Into::into),
            tunnel_url: None,
            legacy: false,
            registered_at_ms: 0,
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
                dirty: false,
            }),
            requests: Default::default(),
            errors: Default::default(),
            in_flight: Default::default(),
            latency_us: Default::default(),
        }
    }

    #[test]
    fn targets() {
        let t = target(
            &worker(Some("http://127.0.0.1:9000/base/"), None),
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
        let t = target(&worker(None, Some("10.1.2.3")), "ocr", 8884, "run", None).unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path_and_query.as_str()),
            ("10.1.2.3:8884", "/run")
        );
        assert!(
            target(
                &worker(Some("https://x.trycloudflare.com"), None),
                "ocr",
                1,
                "",
                None
            )
            .is_none()
        );
        assert!(target(&worker(None, None), "ocr", 1, "", None).is_none());
    }
}
