//! The agent's local gateway: one reverse proxy in front of the service containers, which the tunnel (or the
//! LAN) exposes. `/api/service/{service}/{path}` (the coordinator's forwarding path) and `/{service}/{path}` go to
//! `/{path}` on the container's unix socket (a container without network), or on its port published on 127.0.0.1.
//! It counts requests and measures latency; requests in flight count towards the load the agent reports.
//!
//! Only the worker's coordinator may use it: a request that came over the channel (the agent's own connection to
//! its coordinator), or one that carries the coordinator's key ([`commons_server::auth::gateway_key`], on a
//! direct or tunnel path). Anything else gets 401, so a leaked tunnel URL does not let strangers use the
//! volunteer's machine outside every quota.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use commons_server::auth::{GATEWAY_KEY_HEADER, key_matches};
use commons_server::channel::Reversed;
use commons_server::error::ApiError;
use commons_server::extract::ClientIp;
use commons_server::forward::{self, Target};
use commons_server::serve::ServeError;
use commons_server::stats::RequestStats;
use parking_lot::RwLock;
use tokio::task::JoinHandle;

pub use crate::containers::Upstream;

/// Counters and the service → upstream map, shared with the agent.
#[derive(Debug, Default)]
pub struct Routes {
    upstreams: RwLock<HashMap<String, Upstream>>,
    /// The key the coordinator proves itself with on a direct or tunnel path; none before joining.
    key: RwLock<Option<String>>,
    /// Requests served: counts, in flight, latency.
    pub stats: RequestStats,
}

impl Routes {
    /// Replaces the service → upstream map.
    pub fn set(&self, upstreams: HashMap<String, Upstream>) {
        *self.upstreams.write() = upstreams;
    }

    /// The coordinator's key from now on (a new registration brings a new one).
    pub fn set_key(&self, key: Option<String>) {
        *self.key.write() = key;
    }

    /// Whether `offered` is the coordinator's key.
    fn admits(&self, offered: Option<&str>) -> bool {
        matches!((offered, self.key.read().as_deref()), (Some(o), Some(k)) if key_matches(o, k))
    }

    /// Where a service listens.
    pub fn upstream(&self, service: &str) -> Option<Upstream> {
        self.upstreams.read().get(service).cloned()
    }

    /// The share of capacity busy with requests: 8 in flight is full.
    pub fn load(&self) -> f64 {
        (f64::from(self.stats.in_flight()) / 8.0).min(1.0)
    }
}

async fn forward_to(
    routes: &Routes,
    client: IpAddr,
    service: &str,
    rest: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let upstream = routes
        .upstream(service)
        .ok_or_else(|| ApiError::NotFound(format!("this worker does not run {service:?} now")))?;
    let mut path = format!("/{rest}");
    if let Some(q) = req.uri().query() {
        path.push('?');
        path.push_str(q);
    }
    let not_answering = |e: std::io::Error| {
        ApiError::BadGateway(format!("the {service} container is not answering: {e}"))
    };
    let start = Instant::now();
    let in_flight = routes.stats.start();
    let answer = Duration::from_secs(300);
    let result = match upstream {
        Upstream::Port(port) => {
            let target = Target {
                authority: format!("127.0.0.1:{port}"),
                path_and_query: path,
                tls: false,
            };
            match forward::connect(&target.authority, Duration::from_secs(2)).await {
                Ok(stream) => forward::send(stream, &target, req, client, answer).await,
                Err(e) => Err(not_answering(e)),
            }
        }
        Upstream::Socket(socket) => {
            let target = Target {
                authority: "localhost".into(),
                path_and_query: path,
                tls: false,
            };
            match tokio::time::timeout(
                Duration::from_secs(2),
                crate::containers::connect_socket(&socket),
            )
            .await
            {
                Ok(Ok(stream)) => forward::send(stream, &target, req, client, answer).await,
                Ok(Err(e)) => Err(not_answering(e)),
                Err(_) => Err(not_answering(std::io::ErrorKind::TimedOut.into())),
            }
        }
    };
    drop(in_flight);
    routes.stats.record(
        matches!(&result, Ok(r) if !r.status().is_server_error()),
        start.elapsed(),
    );
    result
}

/// Both route shapes (`/api/service/{service}/...` and `/{service}/...`) go to the service's container.
async fn to_service(
    State(r): State<Arc<Routes>>,
    ClientIp(ip): ClientIp,
    Path((service, rest)): Path<(String, String)>,
    req: Request,
) -> Response {
    forward_to(&r, ip, &service, &rest, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Lets through only what comes from the coordinator: over the channel, or with its key (which goes no further).
async fn only_the_coordinator(
    State(r): State<Arc<Routes>>,
    mut req: Request,
    next: axum::middleware::Next,
) -> Response {
    if req.extensions().get::<Reversed>().is_none() {
        let offered = req
            .headers()
            .get(GATEWAY_KEY_HEADER)
            .and_then(|v| v.to_str().ok());
        if !r.admits(offered) {
            return ApiError::Unauthorized(
                "this worker's gateway serves only its coordinator; send service requests to the coordinator \
                 or the edge"
                    .into(),
            )
            .into_response();
        }
    }
    req.headers_mut().remove(GATEWAY_KEY_HEADER);
    next.run(req).await
}

/// What the gateway bounds its clients with: the coordinator is its one client, so the per-address limit is the
/// total.
fn limits() -> commons_server::serve::Limits {
    const MOST: usize = 512;
    commons_server::serve::Limits {
        max_connections: MOST,
        max_per_address: MOST,
        ..Default::default()
    }
}

/// The running gateway.
#[derive(Debug)]
pub struct Gateway {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its routes and counters.
    pub routes: Arc<Routes>,
    /// Its router, also served on the channel ([`crate::channel`]).
    pub app: Router,
    task: JoinHandle<()>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Gateway {
    /// Starts listening on `listen`.
    pub async fn start(listen: SocketAddr) -> Result<Self, ServeError> {
        let routes = Arc::new(Routes::default());
        let app = commons_server::finish(
            Router::new()
                .route("/api/service/{service}/{*path}", any(to_service))
                .route("/{service}/{*path}", any(to_service))
                .route_layer(axum::middleware::from_fn_with_state(
                    routes.clone(),
                    only_the_coordinator,
                ))
                .with_state(routes.clone()),
        );
        let listener = commons_server::serve::listen(listen).await?;
        let addr = listener.local_addr()?;
        // Each connection runs in a task the serving task owns: when the gateway goes (the agent quits or fails),
        // every connection goes with it, as when the process ends, and streams in progress are cut (the
        // coordinator then ends its client's stream with an error event).
        // It is never stopped gracefully: dropped, its task is aborted.
        let task = tokio::spawn({
            let app = app.clone();
            async move {
                let forever = std::future::pending();
                if let Err(e) =
                    commons_server::serve::run(listener, None, app, limits(), forever).await
                {
                    tracing::warn!(error = %e, "the gateway stopped serving");
                }
            }
        });
        Ok(Self {
            addr,
            routes,
            app,
            task,
        })
    }

    /// `http://{addr}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
