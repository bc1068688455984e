//! Service routing: `ANY /api/service/{type}/{*path}` goes to a healthy worker offering that service.
//!
//! The worker is picked at random, weighted by [`commons_shared::routing::route_weight`] (health, inverse load,
//! latency EWMA, requests in flight) and by its trust; a drained worker gets none. The way to it is opened first
//! (its channel, or a TCP connection), so a worker that cannot be reached is given up for another one (once)
//! before any of the request body is read; the body is then streamed to the worker and the answer streamed back
//! ([`commons_server::forward`]).
//!
//! How the request reaches the worker ([`ReachPath`], told in `X-Commons-Path`): over its channel when it holds
//! one open (the reverse path, [`commons_server::channel`]: HTTP/2 back over the agent's own connection), to its
//! gateway's path `/api/service/{type}/{path}`; else at its `endpoint`, `{endpoint}/api/service/{type}/{path}`,
//! with the gateway's key ([`commons_server::auth::gateway_key`]); a legacy worker with only an address gets
//! `http://{ip_address}:{service port}/{path}` (the container itself). A service none of ours offers goes to the
//! coordinator of a worker the DHT knows.
//!
//! A sample of deterministic requests (the catalogue's `verify`) is held whole and, once the worker has answered,
//! sent to a second worker, and a third when the two answers differ ([`cross_check`]); [`crate::verify`] judges.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use commons_server::auth;
use commons_server::extract::ClientIp;
use commons_server::forward::{self, Target};
use commons_shared::WorkerId;
use commons_shared::api::ReachPath;
use commons_shared::routing::{pick_weighted, rendezvous_rank, route_weight};
use rand::Rng;

use crate::accounting::Record;
use crate::error::ApiError;
use crate::registry::Worker;
use crate::state::AppState;

fn target(
    w: &Worker,
    channel: bool,
    endpoint: Option<&str>,
    service: &str,
    port: u16,
    rest: &str,
    query: Option<&str>,
) -> Option<Target> {
    let sep = if rest.is_empty() { "" } else { "/" };
    if channel {
        // Over the worker's channel the agent's gateway answers, whatever its endpoint.
        return Target::from_base(
            "http://worker",
            &format!("/api/service/{service}{sep}{rest}"),
            query,
        );
    }
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
        tls: false,
    })
}

/// Whether a worker can be reached at all: its channel, an http endpoint, a tunnel's https endpoint, or (legacy)
/// an address.
fn reachable(w: &Worker, endpoint: Option<&str>) -> bool {
    w.path(endpoint) != ReachPath::None
}

/// How a request reaches the worker picked for it: where on the worker, and over its channel when it has one
/// open (the reverse path, preferred: already connected, and the only way to a worker behind a NAT), else over an
/// HTTP/1.1 connection to its endpoint (one kept from an earlier request, or a new one).
struct Way {
    target: Target,
    channel: Option<commons_server::channel::Sender>,
    /// To an agent's gateway at its endpoint: the proof that the request comes from its coordinator.
    key: Option<axum::http::HeaderValue>,
}

/// An open way to a worker.
enum Link {
    Channel(commons_server::channel::Sender),
    Http(forward::Conn, Option<axum::http::HeaderValue>),
}

impl Way {
    /// The way to `w` at `target`: over `channel` when there is one, else to its endpoint (with the gateway's
    /// key) or, legacy, its address.
    fn to(
        w: &Worker,
        target: Target,
        channel: Option<commons_server::channel::Sender>,
        endpoint: bool,
    ) -> Self {
        let key = (channel.is_none() && endpoint)
            .then(|| axum::http::HeaderValue::from_str(&auth::gateway_key(&w.token_hash)).ok())
            .flatten();
        Self {
            target,
            channel,
            key,
        }
    }

    /// The path it takes.
    fn path(&self) -> ReachPath {
        if self.channel.is_some() {
            ReachPath::Reverse
        } else if self.target.tls {
            ReachPath::Tunnel
        } else {
            ReachPath::Direct
        }
    }

    /// Opens the way: the channel as it is, or a connection kept from an earlier request, or a new connection
    /// (TCP, with TLS to a tunnel's endpoint; failing when the worker cannot be reached).
    async fn open(self, state: &AppState) -> std::io::Result<(Link, Target)> {
        let link = match self.channel {
            Some(c) => Link::Channel(c),
            None => Link::Http(state.upstreams.open(&self.target).await?, self.key),
        };
        Ok((link, self.target))
    }
}

impl Link {
    async fn send(
        self,
        state: &AppState,
        t: &Target,
        req: Request,
        client: std::net::IpAddr,
        timeout: Duration,
    ) -> Result<Response, ApiError> {
        match self {
            Self::Channel(c) => forward::send_on(&c, t, req, client, timeout).await,
            Self::Http(conn, key) => {
                let mut req = req;
                if let Some(k) = key {
                    req.headers_mut().insert(auth::GATEWAY_KEY_HEADER, k);
                }
                state.upstreams.send(conn, t, req, client, timeout).await
            }
        }
    }
}

/// The workers that can take a request for `service` now, with their routing weights; `skip` are left out, and
/// so, with `room`, are those already serving as many requests as the service's `concurrency`.
fn candidates(
    state: &AppState,
    service: usize,
    skip: &[WorkerId],
    room: bool,
) -> (Vec<Arc<Worker>>, Vec<f64>) {
    let Some(spec) = state.catalogue.get(service) else {
        return (Vec::new(), Vec::new());
    };
    let now = Instant::now();
    let mut cands = Vec::new();
    let mut weights = Vec::new();
    for w in state.registry.providers(service) {
        if skip.contains(&w.id) || (room && w.stats.in_flight() >= spec.concurrency) {
            continue;
        }
        if let Some(weight) = weight(state, spec, &w, now) {
            cands.push(w);
            weights.push(weight);
        }
    }
    (cands, weights)
}

/// A worker's routing weight for the service, when it can take a request for it now.
fn weight(
    state: &AppState,
    spec: &commons_shared::catalogue::ServiceSpec,
    w: &Worker,
    now: Instant,
) -> Option<f64> {
    let (status, load, trust) = {
        let live = w.live.lock();
        // A drained worker (its answers outvoted, see `crate::verify`) gets nothing.
        if !reachable(w, live.endpoint.as_deref())
            || !live.serves(spec)
            || state.drained(live.trust)
        {
            return None;
        }
        (live.status(now, state.liveness), live.load, live.trust)
    };
    // Trust scales the share: a new worker gets half a proven one's until others confirm its answers.
    Some(
        route_weight(status, load, w.stats.latency_ms(), w.stats.in_flight())
            * trust.max(f64::MIN_POSITIVE),
    )
    .filter(|&x| x > 0.0)
}

/// How many requests the service's workers serve at once together (0: none can be reached), and their mean
/// latency, ms. Counted, without the candidate and weight lists `pick` builds: this runs on every request.
fn capacity(state: &AppState, service: usize) -> (u32, f64) {
    let Some(spec) = state.catalogue.get(service) else {
        return (0, 0.0);
    };
    let now = Instant::now();
    let (n, latency) = state
        .registry
        .providers(service)
        .iter()
        .filter(|w| weight(state, spec, w, now).is_some())
        .fold((0u32, 0.0), |(n, sum), w| {
            (n + 1, sum + w.stats.latency_ms())
        });
    (
        n.saturating_mul(spec.concurrency),
        latency / f64::from(n.max(1)),
    )
}

fn pick(
    state: &AppState,
    service: usize,
    skip: &[WorkerId],
    rest: &str,
    query: Option<&str>,
) -> Option<(Arc<Worker>, Way)> {
    let spec = state.catalogue.get(service)?;
    let sticky = spec.sticky_key(rest);
    // A keyed request goes to its key's worker even when that one is full; the others go to one with room (the
    // queue lets in no more than the workers serve together, so one has room), or any when none is left.
    let (mut cands, mut weights) = candidates(state, service, skip, sticky.is_none());
    if cands.is_empty() && sticky.is_none() {
        (cands, weights) = candidates(state, service, skip, false);
    }
    // A key that names the replica's state (a rag collection): the candidate that ranks it highest (rendezvous
    // hashing), the same on every request while the candidates stay; the others keep their weights only as the
    // fallback when it cannot be reached.
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
        let channel = w.channel();
        let t = target(
            w,
            channel.is_some(),
            endpoint.as_deref(),
            &spec.name,
            spec.port,
            rest,
            query,
        );
        match t {
            Some(target) => {
                let way = Way::to(w, target, channel, endpoint.is_some());
                return Some((cands.swap_remove(i), way));
            }
            None => weights[i] = 0.0,
        }
    }
    None
}

/// The coordinator of the least loaded live worker offering `service` in the DHT (another coordinator's), as a
/// target: that coordinator reaches its worker (over its channel, or with its gateway's key); a gateway serves
/// no one else.
async fn dht_target(
    state: &AppState,
    service: &str,
    rest: &str,
    query: Option<&str>,
) -> Option<Target> {
    let endpoints = dht_coordinators(state, service).await?;
    let sep = if rest.is_empty() { "" } else { "/" };
    endpoints
        .iter()
        .find_map(|e| Target::from_base(e, &format!("/api/service/{service}{sep}{rest}"), query))
}

/// How long a DHT answer for a service is reused: a burst of requests for a service none of our workers offers
/// asks the DHT (16 shard lookups and a record read per provider) once, not once per request.
const DHT_ROUTE_TTL: Duration = Duration::from_secs(5);

/// The coordinators of the live workers offering `service` in the DHT, each once, that of the least loaded
/// worker first.
async fn dht_coordinators(state: &AppState, service: &str) -> Option<Arc<[String]>> {
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
        .filter_map(|f| Some((f.record.load, f.record.coordinator_url?)))
        .filter(|(_, c)| c.starts_with("http://") || c.starts_with("https://"))
        .collect();
    found.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut list = Vec::new();
    for (_, c) in found {
        if !list.contains(&c) {
            list.push(c);
        }
    }
    let list: Arc<[String]> = list.into();
    // Keyed by catalogue service names only (unknown ones are refused before routing), so it stays small.
    state
        .dht_routes
        .lock()
        .insert(service.to_owned(), (Instant::now(), list.clone()));
    Some(list)
}

/// Forwards `ANY /api/service/{service}/{*path}` (described in [`commons_server::openapi::services`]).
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
/// How the answer came from the worker: [`ReachPath`]'s name.
const PATH_HEADER: &str = "x-commons-path";
/// The response header that says how long a request waited in its service's queue, ms (absent: it did not wait).
const QUEUED_HEADER: &str = "x-commons-queued-ms";

/// A request being served by a worker: its count in flight and its queue slot, until the answer has been sent;
/// then its record for the accounting.
struct Serving {
    state: AppState,
    /// Ours that serves it (none: a worker of another coordinator, or none at all).
    worker: Option<Arc<Worker>>,
    slot: Option<crate::queue::Slot>,
    record: Record,
    /// When the worker was reached.
    since: Instant,
    /// What the client sent, counted as it goes to the worker.
    uploaded: Arc<AtomicU64>,
    status: StatusCode,
    /// The end of an llm answer, to read its token counts from (none: not counted).
    tail: Option<Vec<u8>>,
    /// The stream ended with the event of a worker that failed in the middle.
    cut: bool,
    /// The answer kept for comparison with another worker's, when this request is checked.
    capture: Option<Capture>,
}

/// An answer being kept for [`cross_check`]: it is handed over whole, or not at all (cut, failed, too long).
struct Capture {
    body: Vec<u8>,
    too_long: bool,
    done: tokio::sync::oneshot::Sender<Vec<u8>>,
}

impl Serving {
    /// A request of `consumer` for the service `index`, arrived at `at_ms`, not yet given to a worker.
    fn new(
        state: &AppState,
        consumer: &commons_server::consumers::Consumer,
        index: usize,
        at_ms: i64,
        uploaded: Arc<AtomicU64>,
    ) -> Self {
        let metered = state.accounting.on()
            && state.catalogue.get(index).map(|s| s.name.as_str())
                == Some(commons_shared::catalogue::OPENAI_SERVICE);
        Self {
            state: state.clone(),
            worker: None,
            slot: None,
            record: Record {
                at_ms,
                key: consumer.id().to_owned(),
                service: index,
                worker: None,
                weight: 0.0,
                totals: commons_shared::usage::Totals {
                    requests: 1,
                    ..Default::default()
                },
            },
            since: Instant::now(),
            uploaded,
            status: StatusCode::BAD_GATEWAY,
            tail: metered.then(Vec::new),
            cut: false,
            capture: None,
        }
    }

    /// Given to our worker `w` (it counts in flight until this is dropped).
    fn to(mut self, w: &Arc<Worker>) -> Self {
        w.stats.enter();
        self.record.worker = Some(w.id);
        self.record.weight = commons_shared::usage::compute_weight(w.tier);
        self.worker = Some(w.clone());
        self.since = Instant::now();
        self
    }

    /// The request ends without an answer from a worker: recorded with the status the client gets.
    fn failed(mut self, e: ApiError) -> ApiError {
        self.status = e.status();
        self.account(false);
        e
    }

    /// Sends the record (and counts an llm answer's tokens against its key's quota).
    fn account(&mut self, complete: bool) {
        if !self.state.accounting.on() {
            return;
        }
        let t = &mut self.record.totals;
        t.bytes_in = self.uploaded.load(Ordering::Relaxed);
        t.duration_ms = self.since.elapsed().as_millis() as u64;
        let ok =
            complete && !self.cut && (self.status.is_success() || self.status.is_redirection());
        t.completed = u64::from(ok);
        if let Some(tail) = &self.tail {
            (t.prompt_tokens, t.completion_tokens) = crate::accounting::tokens(tail);
            let used = t.prompt_tokens + t.completion_tokens;
            if used > 0 && !self.record.key.is_empty() {
                self.state
                    .consumers
                    .spend_tokens(&self.record.key, used, self.record.at_ms);
            }
        }
        // Called once (the body ends once; `failed` consumes the request): the record can be taken.
        self.state.accounting.send(std::mem::take(&mut self.record));
    }
}

impl forward::Watch for Serving {
    fn data(&mut self, chunk: &bytes::Bytes) {
        self.record.totals.bytes_out += chunk.len() as u64;
        self.cut = forward::is_error_event(chunk);
        if let Some(tail) = &mut self.tail {
            crate::accounting::keep_tail(tail, chunk);
        }
        if let Some(c) = &mut self.capture {
            c.too_long |= c.body.len() + chunk.len() > crate::verify::MAX_ANSWER_BYTES;
            if !c.too_long {
                c.body.extend_from_slice(chunk);
            }
        }
    }

    fn end(&mut self, complete: bool) {
        if let Some(c) = self.capture.take()
            && complete
            && !self.cut
            && !c.too_long
            && self.status.is_success()
        {
            let _ = c.done.send(c.body);
        }
        self.account(complete);
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(w) = &self.worker {
            w.stats.leave();
        }
    }
}

/// Counts what a client uploads.
struct Uploaded(Arc<AtomicU64>);

impl forward::Watch for Uploaded {
    fn data(&mut self, chunk: &bytes::Bytes) {
        self.0.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
}

/// A turn in the service's fair queue for `consumer`: at once while its workers have room, else when the queue
/// gives one. A full queue is 429 (with a wait estimated from the workers' latency), a wait too long 503.
async fn admit(
    state: &AppState,
    index: usize,
    service: &str,
    consumer: &commons_server::consumers::Consumer,
    capacity: u32,
    latency_ms: f64,
) -> Result<crate::queue::Slot, ApiError> {
    use crate::queue::{Refused, Tenant};
    let queue = state.queues.of(index);
    let tenant = Tenant {
        id: consumer.id().to_owned(),
        weight: consumer.weight(),
    };
    let patience = Duration::from_secs(state.config.queue_wait_secs);
    let result = queue.admit(&tenant, capacity, patience).await;
    let meters = &state.metrics.services[index];
    meters.queue_length.set(queue.waiting() as f64);
    result.map_err(|refused| {
        meters.rejections.increment(1);
        match refused {
            Refused::Full { waiting } => ApiError::TooMany {
                message: format!(
                    "every worker of the {service} service is busy and {waiting} requests wait already; try again shortly"
                ),
                // The queue drains at about `capacity` requests per mean latency.
                retry_after_secs: ((waiting as f64 * latency_ms / f64::from(capacity) / 1000.0).ceil() as u64).max(1),
                quota: false,
            },
            Refused::TimedOut(waited) => ApiError::Unavailable(format!(
                "waited {} s for a worker of the {service} service, and every one is still busy; try again later",
                waited.as_secs()
            )),
        }
    })
}

/// Whether this request to `w` is checked against another worker's answer, and then what its answers may differ
/// in: a deterministic request (the catalogue's `verify`) with a known, small body, drawn with a probability that
/// grows as the worker's trust falls.
fn sample(
    state: &AppState,
    index: usize,
    rest: &str,
    req: &Request,
    w: &Worker,
) -> Option<Arc<[String]>> {
    let verify = state.catalogue.get(index)?.verifies(rest)?;
    let fraction = state.config.verify_fraction;
    if fraction <= 0.0 {
        return None;
    }
    let small = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n <= crate::verify::MAX_REQUEST_BYTES);
    let p = crate::verify::probability(fraction, w.live.lock().trust);
    (small && rand::rng().random::<f64>() < p).then(|| verify.ignore.clone().into())
}

/// A request as it is sent to another worker: its head and its whole body.
struct Held {
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: bytes::Bytes,
}

impl Held {
    fn request(&self) -> Request {
        let mut req = Request::new(axum::body::Body::from(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Reads a request's whole body (within the route's limit, and the server's body timeout), to send it twice.
async fn hold(req: Request) -> Result<(Held, Request), ApiError> {
    use axum::extract::FromRequest;
    let (method, uri, headers) = (
        req.method().clone(),
        req.uri().clone(),
        req.headers().clone(),
    );
    let commons_server::extract::Body(body) =
        commons_server::extract::Body::from_request(req, &()).await?;
    let copy = Held {
        method,
        uri,
        headers,
        body,
    };
    let req = copy.request();
    Ok((copy, req))
}

/// A checked request: where it goes, who answered first, and what its answers may differ in.
struct Checked {
    index: usize,
    rest: String,
    query: Option<String>,
    client: std::net::IpAddr,
    first: WorkerId,
    ignore: Arc<[String]>,
}

/// Once the first worker's answer is complete, asks a second worker the same, and a third when they differ; then
/// lets the state judge ([`crate::verify`]). These requests are the coordinator's own: no queue slot, no consumer's
/// record; the workers count them as served.
async fn cross_check(
    state: AppState,
    c: Checked,
    copy: Held,
    answer: tokio::sync::oneshot::Receiver<Vec<u8>>,
) {
    // Nothing to compare when the first answer failed, was cut or was too long.
    let Ok(first) = answer.await else {
        return;
    };
    let mut asked = vec![c.first];
    let Some((second, second_answer)) = ask_another(&state, &c, &copy, &mut asked).await else {
        return;
    };
    let third = if crate::verify::agree(&first, &second_answer, &c.ignore) {
        None
    } else {
        ask_another(&state, &c, &copy, &mut asked).await
    };
    let verdict = crate::verify::judge(
        (c.first, &first),
        (second, &second_answer),
        third.as_ref().map(|(id, a)| (*id, a.as_slice())),
        &c.ignore,
    );
    tracing::debug!(service = c.index, ?verdict, "answers compared");
    state.judged(&verdict);
}

/// The whole 2xx answer of a worker not in `asked` (which it joins), or none when no other worker can answer.
async fn ask_another(
    state: &AppState,
    c: &Checked,
    copy: &Held,
    asked: &mut Vec<WorkerId>,
) -> Option<(WorkerId, Vec<u8>)> {
    let (w, way) = pick(state, c.index, asked, &c.rest, c.query.as_deref())?;
    asked.push(w.id);
    let start = Instant::now();
    w.stats.enter();
    let answer = async {
        let (link, t) = way.open(state).await.ok()?;
        let timeout = Duration::from_secs(state.config.proxy_timeout_secs);
        let resp = link
            .send(state, &t, copy.request(), c.client, timeout)
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        axum::body::to_bytes(resp.into_body(), crate::verify::MAX_ANSWER_BYTES)
            .await
            .ok()
    }
    .await;
    w.stats.leave();
    w.stats.record(answer.is_some(), start.elapsed());
    Some((w.id, answer?.to_vec()))
}

async fn route(
    state: AppState,
    client: std::net::IpAddr,
    service: String,
    rest: String,
    mut req: Request,
) -> Result<Response, ApiError> {
    state.upstreams.enter(req.headers_mut())?;
    let index = state.catalogue.index_of(&service).ok_or_else(|| {
        ApiError::NotFound(format!(
            "there is no service {service:?}; see /api/admin/services"
        ))
    })?;
    // The consumer's key: checked (and counted) here; never sent on to a volunteer's machine.
    let consumer = state.consumers.check(
        commons_server::auth::bearer(req.headers()),
        &service,
        crate::state::now_ms(),
    )?;
    req.headers_mut().remove(axum::http::header::AUTHORIZATION);
    // Only this coordinator proves itself to a gateway.
    req.headers_mut().remove(auth::GATEWAY_KEY_HEADER);
    tracing::debug!(?consumer, %service, "service request");
    let start = Instant::now();
    state.requests_total.fetch_add(1, Ordering::Relaxed);
    let meters = &state.metrics.services[index];
    meters.request();
    let uploaded = Arc::new(AtomicU64::new(0));
    if state.accounting.on() {
        req = forward::watch_request(req, Uploaded(uploaded.clone()));
    }
    // Recorded however it ends, once past the key.
    let mut serving = Serving::new(&state, &consumer, index, crate::state::now_ms(), uploaded);
    // Every worker busy: wait for a turn in the service's fair queue (none when no worker can be reached: that is
    // answered below).
    if let (capacity @ 1.., latency_ms) = capacity(&state, index) {
        match admit(&state, index, &service, &consumer, capacity, latency_ms).await {
            Ok(slot) => serving.slot = Some(slot),
            Err(e) => return Err(serving.failed(e)),
        }
    }
    let query = req.uri().query().map(str::to_owned);
    let timeout = Duration::from_secs(state.config.proxy_timeout_secs);
    let mut tried = Vec::new();
    // One try and one retry on another worker when the connection cannot be made.
    for _ in 0..2 {
        let Some((w, way)) = pick(&state, index, &tried, &rest, query.as_deref()) else {
            break;
        };
        let path = way.path();
        match way.open(&state).await {
            Ok((link, t)) => {
                // The worker's request in flight and the queue's slot last as long as the answer's body.
                let mut serving = serving.to(&w);
                let waited = serving.slot.as_ref().map_or(Duration::ZERO, |s| s.waited);
                // A sampled deterministic request: its body is held, to be sent to a second worker once this one
                // has answered, and the answer kept to compare.
                if let Some(check) = sample(&state, index, &rest, &req, &w) {
                    let (copy, held) = match hold(req).await {
                        Ok(held) => held,
                        Err(e) => return Err(serving.failed(e)),
                    };
                    req = held;
                    let (done, answer) = tokio::sync::oneshot::channel();
                    serving.capture = Some(Capture {
                        body: Vec::new(),
                        too_long: false,
                        done,
                    });
                    tokio::spawn(cross_check(
                        state.clone(),
                        Checked {
                            index,
                            rest: rest.clone(),
                            query: query.clone(),
                            client,
                            first: w.id,
                            ignore: check,
                        },
                        copy,
                        answer,
                    ));
                }
                let result = match link.send(&state, &t, req, client, timeout).await {
                    Ok(mut r) => {
                        if let Ok(v) = axum::http::HeaderValue::from_str(&w.id.to_string()) {
                            r.headers_mut().insert(WORKER_HEADER, v);
                        }
                        r.headers_mut().insert(
                            PATH_HEADER,
                            axum::http::HeaderValue::from_static(path.as_str()),
                        );
                        if !waited.is_zero() {
                            r.headers_mut().insert(
                                QUEUED_HEADER,
                                axum::http::HeaderValue::from(waited.as_millis() as u64),
                            );
                        }
                        serving.status = r.status();
                        Ok(forward::watch(r, serving))
                    }
                    Err(e) => Err(serving.failed(e)),
                };
                let ok = matches!(&result, Ok(r) if !r.status().is_server_error());
                w.stats.record(ok, start.elapsed());
                let seconds = start.elapsed().as_secs_f64();
                state.metrics.route_latency.record(seconds);
                meters.answered(ok, seconds);
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
    // None of ours offers it: ask the DHT for a worker of another coordinator, and send it there (the hop header
    // stops a request that would come back).
    if tried.is_empty()
        && let Some(t) = dht_target(&state, &service, &rest, query.as_deref()).await
    {
        match state.upstreams.open(&t).await {
            Ok(conn) => {
                let result = match state.upstreams.send(conn, &t, req, client, timeout).await {
                    Ok(r) => {
                        serving.status = r.status();
                        Ok(forward::watch(r, serving))
                    }
                    Err(e) => Err(serving.failed(e)),
                };
                state
                    .metrics
                    .route_latency
                    .record(start.elapsed().as_secs_f64());
                return result;
            }
            Err(e) => {
                tracing::warn!(target = %t.authority, error = %e, "cannot connect to the coordinator of a worker found in the DHT")
            }
        }
    }
    state.errors_total.fetch_add(1, Ordering::Relaxed);
    state.metrics.route_errors.increment(1);
    meters.answered(false, start.elapsed().as_secs_f64());
    Err(serving.failed(if tried.is_empty() {
        ApiError::NoWorker(service)
    } else {
        ApiError::Unreachable {
            service,
            tried: tried.len(),
        }
    }))
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
            machine: crate::machine::Kinds::default().machine(Default::default()),
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
                gpus: Box::default(),
                containers: Box::default(),
                services: vec![],
                assignment_version: 1,
                agent_version: "".into(),
                endpoint: endpoint.map(Into::into),
                display_name: None,
                name_unbooked: false,
                unbooked_ms: 0,
                trust: crate::verify::NEW_TRUST,
                rtt_ms: None,
                nat: None,
                paths: Box::default(),
                dirty: false,
            }),
            stats: Default::default(),
            channel: Default::default(),
        }
    }

    /// Where `target` sends an ocr request for a worker with this endpoint and address, its channel open or not:
    /// (authority, path and query).
    fn at(
        endpoint: Option<&str>,
        ip: Option<&str>,
        channel: bool,
        rest: &str,
        query: Option<&str>,
    ) -> Option<(String, String)> {
        target(
            &worker(endpoint, ip),
            channel,
            endpoint,
            "ocr",
            8884,
            rest,
            query,
        )
        .map(|t| (t.authority, t.path_and_query))
    }

    #[test]
    fn targets() {
        let local = Some("http://127.0.0.1:9000/base/");
        let pair = |a: &str, p: &str| Some((a.to_owned(), p.to_owned()));
        // A worker with its channel open is reached there, at its gateway's path, whatever its endpoint.
        assert_eq!(
            at(local, None, true, "v1/run", Some("x=1")),
            pair("worker:80", "/api/service/ocr/v1/run?x=1")
        );
        assert_eq!(
            at(local, None, false, "v1/run", Some("x=1")),
            pair("127.0.0.1:9000", "/base/api/service/ocr/v1/run?x=1")
        );
        assert_eq!(
            at(Some("http://w.example"), None, false, "", None),
            pair("w.example:80", "/api/service/ocr")
        );
        assert_eq!(
            at(None, Some("10.1.2.3"), false, "run", None),
            pair("10.1.2.3:8884", "/run")
        );
        // A tunnel's https endpoint, over TLS.
        assert_eq!(
            at(Some("https://x.trycloudflare.com"), None, false, "", None),
            pair("x.trycloudflare.com:443", "/api/service/ocr")
        );
        assert_eq!(at(Some("ftp://x.example"), None, false, "", None), None);
        assert_eq!(at(None, None, false, "", None), None);
    }
}
