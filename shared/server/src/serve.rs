//! Serving a router on a listener, with its background tasks, a graceful stop and a crash-like abort.

use std::net::SocketAddr;

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

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

/// A router being served, and the server's background tasks.
#[derive(Debug)]
pub struct Serving {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Serving {
    /// Serves `app` on `listener`, with the client's address available to handlers (`ConnectInfo`).
    pub fn start(listener: TcpListener, app: Router) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        // The recorder from the start: what is counted before the first scrape is not lost.
        crate::metrics::handle();
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            axum::serve(no_delay(listener), app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        });
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
