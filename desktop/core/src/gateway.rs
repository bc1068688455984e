//! The agent's local gateway: one reverse proxy in front of the service containers, which the tunnel (or the
//! LAN) exposes. `/api/service/{service}/{path}` (the coordinator's forwarding path) and `/{service}/{path}` go to
//! `/{path}` on the container's unix socket (a container without network), or on its port published on 127.0.0.1.
//! It counts requests and measures latency; requests in flight count towards the load the agent reports.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use commons_server::error::ApiError;
use commons_server::extract::ClientIp;
use commons_server::forward::{self, Target};
use commons_server::serve::ServeError;
use commons_server::stats::RequestStats;
use parking_lot::RwLock;
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

pub use crate::containers::Upstream;

/// Counters and the service → upstream map, shared with the agent.
#[derive(Debug, Default)]
pub struct Routes {
    upstreams: RwLock<HashMap<String, Upstream>>,
    /// Requests served: counts, in flight, latency.
    pub stats: RequestStats,
}

impl Routes {
    /// Replaces the service → upstream map.
    pub fn set(&self, upstreams: HashMap<String, Upstream>) {
        *self.upstreams.write() = upstreams;
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
            };
            match tokio::time::timeout(Duration::from_secs(2), UnixStream::connect(&socket)).await {
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

/// Serves `app` on `listener`, each connection in a task this one owns: when the gateway goes (the agent quits or
/// fails), every connection goes with it, as when the process ends, and streams in progress are cut (the
/// coordinator then ends its client's stream with an error event).
async fn serve(listener: tokio::net::TcpListener, app: Router) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let service = hyper_util::service::TowerToHyperService::new(
                    app.clone().layer(axum::Extension(axum::extract::ConnectInfo(peer))),
                );
                connections.spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await
                    {
                        tracing::debug!(error = %e, "a gateway connection ended");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// The running gateway.
#[derive(Debug)]
pub struct Gateway {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its routes and counters.
    pub routes: Arc<Routes>,
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
                .with_state(routes.clone()),
        );
        let listener = commons_server::serve::listen(listen).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(serve(listener, app));
        Ok(Self { addr, routes, task })
    }

    /// `http://{addr}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
