//! Serving a router on a listener, with a graceful stop and a crash-like abort.

use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A router being served.
#[derive(Debug)]
pub struct Serving {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Serving {
    /// Serves `app` on `listener`, with the client's address available to handlers (`ConnectInfo`).
    pub fn start(listener: TcpListener, app: Router) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        });
        Ok(Self { addr, stop, task })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and waits for the requests in progress.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await??;
        Ok(())
    }

    /// Stops at once, as a crash would, and waits until the listener is closed (so its port can be bound again).
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}
