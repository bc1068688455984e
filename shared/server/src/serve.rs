//! Serving a router on a listener within limits on slow and greedy clients, with its background tasks, a graceful
//! stop and a crash-like abort.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

/// A server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The address cannot be listened on.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Accepting connections failed.
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
    /// The serving task panicked.
    #[error("the serving task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A server could not start, or did not stop cleanly: what every server shares, and `E`, what is its own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError<E: std::error::Error + 'static = std::convert::Infallible> {
    /// The configuration cannot be used.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    /// Listening or serving failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The server's own reason.
    #[error(transparent)]
    Own(E),
}

/// `listener` with Nagle's algorithm off on every connection: a streamed answer's small writes (an SSE event after
/// the headers) go out at once instead of waiting for the peer's delayed ACK (40 ms on Linux).
pub fn no_delay(listener: TcpListener) -> axum::serve::TapIo<TcpListener, fn(&mut TcpStream)> {
    use axum::serve::ListenerExt;
    fn set(tcp: &mut TcpStream) {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot turn Nagle's algorithm off");
        }
    }
    listener.tap_io(set as fn(&mut TcpStream))
}

/// Listens on `addr`.
pub async fn listen(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen { addr, source })
}

/// How a server bounds its clients: slow ones (a header-read timeout, an idle timeout on request bodies) and greedy
/// ones (connections at once, in all and per client address).
#[derive(Debug, Clone)]
pub struct Limits {
    /// A client must send a request's whole header within this; an idle kept-alive connection is closed after it
    /// too. Slowloris clients hold a connection no longer than this.
    pub header_read_timeout: Duration,
    /// A request body that sends nothing for this long ends in 408.
    pub body_idle_timeout: Duration,
    /// Connections served at once; beyond it the server stops accepting until one ends (they wait in the kernel's
    /// backlog).
    pub max_connections: usize,
    /// Connections one client address may hold at once; beyond it the connection gets a 429 and is closed.
    pub max_per_address: usize,
    /// Addresses the per-address limit does not apply to (a trusted proxy such as the edge, which carries many
    /// clients).
    pub exempt: Vec<IpAddr>,
}

impl Limits {
    /// The limits a server's settings name (`header_read_timeout_secs`, `body_idle_timeout_secs`,
    /// `max_connections`, `max_connections_per_address`; each at least 1), with `exempt` free of the per-address one.
    pub fn from_settings(
        header_read_timeout_secs: u64,
        body_idle_timeout_secs: u64,
        max_connections: usize,
        max_connections_per_address: usize,
        exempt: Vec<IpAddr>,
    ) -> Result<Self, crate::config::ConfigError> {
        if header_read_timeout_secs == 0
            || body_idle_timeout_secs == 0
            || max_connections == 0
            || max_connections_per_address == 0
        {
            return Err(crate::config::ConfigError::Invalid(
                "header_read_timeout_secs, body_idle_timeout_secs, max_connections and \
                 max_connections_per_address must be at least 1"
                    .into(),
            ));
        }
        Ok(Self {
            header_read_timeout: Duration::from_secs(header_read_timeout_secs),
            body_idle_timeout: Duration::from_secs(body_idle_timeout_secs),
            max_connections,
            max_per_address: max_connections_per_address,
            exempt,
        })
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_per_address: 64,
            exempt: Vec::new(),
        }
    }
}

/// The connections each client address holds.
#[derive(Debug)]
struct Addresses {
    held: Mutex<HashMap<IpAddr, usize>>,
    most: usize,
    exempt: Vec<IpAddr>,
}

/// One connection counted against its address until dropped.
struct Held {
    addresses: Arc<Addresses>,
    ip: Option<IpAddr>,
}

impl Addresses {
    fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(Self {
            held: Mutex::new(HashMap::new()),
            most: limits.max_per_address.max(1),
            exempt: limits.exempt.clone(),
        })
    }

    /// Counts a connection from `ip`, unless it already holds as many as it may.
    fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<Held> {
        let ip = ip.to_canonical();
        if self.exempt.contains(&ip) {
            return Some(Held {
                addresses: self.clone(),
                ip: None,
            });
        }
        let mut held = self.held.lock();
        let n = held.entry(ip).or_insert(0);
        if *n >= self.most {
            return None;
        }
        *n += 1;
        Some(Held {
            addresses: self.clone(),
            ip: Some(ip),
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(ip) = self.ip else { return };
        let mut held = self.addresses.held.lock();
        if let Some(n) = held.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&ip);
            }
        }
    }
}

use crate::forward::Io;

/// `stream` as the server speaks on it: TLS once its handshake is done within `within` when `tls` is given, else
/// as it is. `None` when the handshake fails or takes too long (a slow or wrong client).
async fn secure(
    stream: TcpStream,
    tls: Option<&crate::tls::Acceptor>,
    within: Duration,
) -> Option<Box<dyn Io>> {
    let Some(tls) = tls else {
        return Some(Box::new(stream));
    };
    match tokio::time::timeout(within, tls.accept(stream)).await {
        Ok(Ok(s)) => Some(Box::new(s)),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "a TLS handshake failed");
            None
        }
        Err(_) => None,
    }
}

/// Answers a connection over its address's limit with a JSON 429, then closes it.
async fn refuse(mut stream: Box<dyn Io>, most: usize) {
    use tokio::io::AsyncWriteExt;
    let body = serde_json::to_string(&commons_shared::ErrorBody::new(
        "rate_limited",
        format!("too many connections from your address at once (at most {most}); close some and try again"),
    ))
    .unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// Whether an accept error concerns only the connection being accepted (the next accept may succeed at once).
fn per_connection(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves `app` on `listener` (over TLS when `tls` is given) within `limits` until `stop` resolves (never, for
/// `std::future::pending()`), then stops accepting and lets the connections finish their requests (each is told
/// to close once its request in progress is answered). Every connection runs in a task this future owns: dropping
/// it (aborting its task) cuts them all, as a crash would. Handlers see the client's address as
/// `ConnectInfo<SocketAddr>`. A TLS handshake must end within the header-read timeout.
pub async fn run(
    listener: TcpListener,
    tls: Option<crate::tls::Acceptor>,
    app: Router,
    limits: Limits,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.body_idle_timeout,
    ));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let room = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let addresses = Addresses::new(&limits);
    let mut connections = JoinSet::new();
    // What the connections watch, to close once their request is answered.
    let (stopping, stopped_rx) = watch::channel(false);
    tokio::pin!(stop);
    'serving: loop {
        let permit = tokio::select! {
            p = room.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => break a,
                    Err(e) if per_connection(&e) => {}
                    Err(e) => {
                        // Out of file descriptors, most likely: wait for some to be freed.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                () = &mut stop => break 'serving,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        };
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        let Some(held) = addresses.enter(peer.ip()) else {
            let most = addresses.most;
            connections.spawn(async move {
                if let Some(io) = secure(stream, tls.as_ref(), Duration::from_secs(1)).await {
                    refuse(io, most).await;
                }
                drop(permit);
            });
            continue;
        };
        let app = app.clone();
        let service = hyper::service::service_fn(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                app.clone().oneshot(req)
            },
        );
        let mut stop = stopped_rx.clone();
        let http = http.clone();
        let handshake = limits.header_read_timeout;
        connections.spawn(async move {
            let _counted = (held, permit);
            let Some(io) = secure(stream, tls.as_ref(), handshake).await else {
                return;
            };
            let conn = http
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            tokio::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                _ = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, %peer, "a connection ended");
            }
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// A router being served, and the server's background tasks.
#[derive(Debug)]
pub struct Serving {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Serving {
    /// Serves `app` on `listener` (over TLS when `tls` is given) within `limits` ([`run`]), with the client's address available to handlers
    /// (`ConnectInfo`).
    pub fn start(
        listener: TcpListener,
        tls: Option<crate::tls::Acceptor>,
        app: Router,
        limits: Limits,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        // The recorder from the start: what is counted before the first scrape is not lost.
        crate::metrics::handle();
        let (stop, mut stopped_rx) = watch::channel(false);
        let task = tokio::spawn(run(listener, tls, app, limits, async move {
            stopped(&mut stopped_rx).await;
        }));
        Ok(Self {
            addr,
            stop,
            task,
            tasks: Vec::new(),
        })
    }

    /// Background tasks that end with the server.
    pub fn add_tasks(&mut self, tasks: impl IntoIterator<Item = JoinHandle<()>>) {
        self.tasks.extend(tasks);
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, waits for the requests in progress, then ends the background tasks.
    pub async fn stop(self) -> Result<(), ServeError> {
        let _ = self.stop.send(true);
        let served = self.task.await;
        for t in &self.tasks {
            t.abort();
        }
        served??;
        Ok(())
    }

    /// Stops at once, as a crash would, and waits until the listener is closed (so its port can be bound again).
    pub async fn abort(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Where a service image listens unless `COMMONS_LISTEN` says otherwise: the socket in the folder the agent mounts.
pub const DEFAULT_SERVICE_LISTEN: &str = "unix:/run/commons/http.sock";

/// A service image's address: `COMMONS_LISTEN`, else [`DEFAULT_SERVICE_LISTEN`].
pub fn service_listen() -> String {
    std::env::var("COMMONS_LISTEN").unwrap_or_else(|_| DEFAULT_SERVICE_LISTEN.into())
}

/// Serves `app` on a service image's address until SIGTERM or Ctrl-C: `unix:/path` (a socket in the folder the agent
/// shares with its gateway; a stale socket file is replaced) or `host:port`. Prints where it listens, as `program`.
pub async fn service(program: &str, listen: &str, app: Router) -> Result<(), String> {
    let stop = crate::until_signal();
    match listen.strip_prefix("unix:") {
        #[cfg(not(unix))]
        Some(path) => Err(format!(
            "cannot listen on unix:{path}: unix sockets are for Linux service images"
        )),
        #[cfg(unix)]
        Some(path) => {
            let _ = std::fs::remove_file(path);
            let listener = tokio::net::UnixListener::bind(path)
                .map_err(|e| format!("cannot listen on {path}: {e}"))?;
            println!("{program} listening on unix:{path}");
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
                .map_err(|e| e.to_string())
        }
        None => {
            let listener = TcpListener::bind(listen)
                .await
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            println!("{program} listening on {addr}");
            axum::serve(no_delay(listener), app)
                .with_graceful_shutdown(stop)
                .await
                .map_err(|e| e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connection from `source` (any 127/8 address is this machine's loopback).
    async fn connect(source: [u8; 4], to: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((source, 0))).unwrap();
        socket.connect(to).await.unwrap()
    }

    /// What the server sends until it closes the connection, or within `wait`.
    async fn answer(stream: &mut TcpStream, wait: Duration) -> Option<String> {
        let mut buf = Vec::new();
        tokio::time::timeout(wait, stream.read_to_end(&mut buf))
            .await
            .ok()
            .map(|_| String::from_utf8_lossy(&buf).into_owned())
    }

    async fn get_ok(source: [u8; 4], to: SocketAddr) -> String {
        let mut s = connect(source, to).await;
        s.write_all(b"GET /ok HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        answer(&mut s, Duration::from_secs(5)).await.unwrap()
    }

    async fn server(
        limits: Limits,
    ) -> (
        SocketAddr,
        watch::Sender<bool>,
        JoinHandle<std::io::Result<()>>,
    ) {
        let app = Router::new().route("/ok", get(|| async { "ok" })).route(
            "/echo",
            post(
                |crate::extract::Body(b): crate::extract::Body| async move { b.len().to_string() },
            ),
        );
        let listener = listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, mut stopped_rx) = watch::channel(false);
        (
            addr,
            stop,
            tokio::spawn(run(listener, None, app, limits, async move {
                stopped(&mut stopped_rx).await;
            })),
        )
    }

    #[tokio::test]
    async fn slow_clients_are_cut_off_and_do_not_hold_up_others() {
        let limits = Limits {
            header_read_timeout: Duration::from_secs(3),
            body_idle_timeout: Duration::from_secs(1),
            max_connections: 1000,
            max_per_address: 20,
            exempt: Vec::new(),
        };
        let (addr, stop, task) = server(limits).await;
        // A slowloris client: 50 requests whose header never ends, from one address.
        let mut slow = Vec::new();
        for _ in 0..50 {
            let mut s = connect([127, 0, 0, 2], addr).await;
            s.write_all(b"GET /ok HTTP/1.1\r\nhost: t\r\n")
                .await
                .unwrap();
            slow.push(s);
        }
        // Past its address's 20, each connection gets a 429 and is closed.
        let mut refused = 0;
        for s in &mut slow {
            if let Some(a) = answer(s, Duration::from_millis(20)).await {
                assert!(a.starts_with("HTTP/1.1 429 "), "{a}");
                assert!(a.contains(r#""error":"rate_limited""#), "{a}");
                refused += 1;
            }
        }
        assert_eq!(refused, 30);
        // Another client is served meanwhile.
        for _ in 0..20 {
            let a = get_ok([127, 0, 0, 1], addr).await;
            assert!(a.starts_with("HTTP/1.1 200 ") && a.ends_with("ok"), "{a}");
        }
        // The 20 it holds are closed once the header-read timeout passes, and its address may connect again.
        for s in &mut slow {
            assert!(answer(s, Duration::from_secs(10)).await.is_some());
        }
        let a = get_ok([127, 0, 0, 2], addr).await;
        assert!(a.starts_with("HTTP/1.1 200 "), "{a}");
        // A body that stops arriving: 408 as JSON.
        let mut s = connect([127, 0, 0, 3], addr).await;
        s.write_all(b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 10\r\n\r\nabc")
            .await
            .unwrap();
        let a = answer(&mut s, Duration::from_secs(5)).await.unwrap();
        assert!(a.starts_with("HTTP/1.1 408 "), "{a}");
        assert!(a.contains(r#""error":"request_timeout""#), "{a}");
        stop.send(true).unwrap();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_graceful_stop_answers_the_request_in_progress() {
        let (addr, stop, task) = server(Limits::default()).await;
        let mut s = connect([127, 0, 0, 1], addr).await;
        s.write_all(b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 6\r\n\r\nabc")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(true).unwrap();
        // No new connection is taken...
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(TcpStream::connect(addr).await.is_err());
        // ...and the one in progress is answered, then closed.
        s.write_all(b"def").await.unwrap();
        let a = answer(&mut s, Duration::from_secs(5)).await.unwrap();
        assert!(
            a.starts_with("HTTP/1.1 200 ") && a.ends_with("\r\n\r\n6"),
            "{a}"
        );
        task.await.unwrap().unwrap();
    }
}
