//! The reverse path: a worker's own outbound connection to its coordinator, turned around so that the coordinator
//! can send service requests back over it. A volunteer behind a home router, with no forwarded port and no tunnel,
//! is reached this way.
//!
//! The agent asks `GET /api/worker/channel?worker_id=…` with its worker token and `Upgrade: commons-channel`; the
//! coordinator answers 101, and on the upgraded connection the roles swap: the coordinator is an HTTP/2 *client*
//! ([`open`]) and the agent an HTTP/2 *server* ([`serve`]) of its gateway's routes. HTTP/2 brings what the path
//! needs without code of ours: many requests at once on the one connection, bodies streamed both ways under flow
//! control (backpressure), and a request cancelled by a reset stream when the consumer goes away, which drops the
//! gateway's request to the container. The connection is authenticated once, by the worker's token, when it is
//! opened: whatever arrives on it at the agent comes from its coordinator.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

/// The `Upgrade` token of the reverse path.
pub const PROTOCOL: &str = "commons-channel";

/// Where an agent opens its channel, relative to the coordinator.
pub const PATH: &str = "/api/worker/channel";

/// How many requests one channel carries at once (the agent's HTTP/2 `max_concurrent_streams`): more than any
/// service's concurrency.
pub const MAX_STREAMS: u32 = 256;

/// Flow-control windows: large enough that a 100 MiB upload is not held back by round trips on a fast link,
/// small enough that a slow container holds at most this much of a body in flight per stream.
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;

/// A ping every this long keeps NAT mappings open and finds a dead connection.
const KEEPALIVE: Duration = Duration::from_secs(20);

/// The reverse path could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The HTTP/2 handshake over the upgraded connection failed.
    #[error("the channel's HTTP/2 handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
}

/// The coordinator's end: sends requests to the worker.
pub type Sender = hyper::client::conn::http2::SendRequest<Body>;

/// The coordinator's side of a freshly upgraded connection: the sender, and the connection's driver, which runs
/// until the channel closes (the caller spawns it and forgets the worker's channel when it ends).
pub async fn open(
    io: Upgraded,
) -> Result<(Sender, impl std::future::Future<Output = ()> + Send), ChannelError> {
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .keep_alive_while_idle(true)
        .handshake(io)
        .await
        .map_err(ChannelError::Handshake)?;
    Ok((sender, async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "a worker's channel closed");
        }
    }))
}

/// The agent's side: serves `routes` (the gateway's) on the upgraded connection `io` until it closes. Requests
/// arrive with a [`Reversed`] extension: they came over the authenticated channel.
pub async fn serve<I>(io: I, routes: Router) -> Result<(), hyper::Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let routes = routes.layer(axum::Extension(Reversed));
    let service = hyper_util::service::TowerToHyperService::new(routes);
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(64 << 10)
        .keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .serve_connection(TokioIo::new(io), service)
        .await
}

/// Marks a request that came over the channel (from the worker's own coordinator).
#[derive(Debug, Clone, Copy)]
pub struct Reversed;
