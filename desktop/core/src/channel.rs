//! The agent's end of the reverse path ([`commons_server::channel`]): it opens a connection to its coordinator,
//! upgrades it, and serves the gateway's routes on it, so that the coordinator reaches this worker's services
//! with no port open here and no tunnel. It is kept open for as long as the agent is joined, reopened after a
//! backoff when it closes, and moved when the agent fails over to another coordinator.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use commons_server::channel::{PATH, PROTOCOL};
use commons_shared::backoff::Backoff;
use tokio::task::JoinHandle;

/// Why a channel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// No connection, or it broke during the upgrade.
    #[error("cannot reach {url}: {source}")]
    Unreachable {
        /// Where.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The coordinator refused (an old coordinator without channels, or a token it no longer knows).
    #[error("{url} answered {status} instead of switching to the channel")]
    Refused {
        /// Where.
        url: String,
        /// What it answered.
        status: u16,
    },
}

/// Who opens the channel, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opener {
    /// The coordinator's base URL.
    pub coordinator_url: String,
    /// This worker's id.
    pub worker_id: String,
    /// This worker's token.
    pub worker_token: String,
}

/// Opens the channel once, and serves `routes` on it until it closes.
pub async fn open_and_serve(
    http: &reqwest::Client,
    to: &Opener,
    routes: Router,
    open: &AtomicBool,
) -> Result<(), OpenError> {
    let url = format!(
        "{}{PATH}?worker_id={}",
        to.coordinator_url.trim_end_matches('/'),
        to.worker_id
    );
    let unreachable = |source| OpenError::Unreachable {
        url: url.clone(),
        source,
    };
    let resp = http
        .get(&url)
        .bearer_auth(&to.worker_token)
        .header(reqwest::header::CONNECTION, "upgrade")
        .header(reqwest::header::UPGRADE, PROTOCOL)
        .send()
        .await
        .map_err(unreachable)?;
    if resp.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
        return Err(OpenError::Refused {
            url: url.clone(),
            status: resp.status().as_u16(),
        });
    }
    let io = resp.upgrade().await.map_err(unreachable)?;
    tracing::info!(coordinator = %to.coordinator_url, "channel open: the coordinator reaches this worker over it");
    open.store(true, Ordering::Relaxed);
    let served = commons_server::channel::serve(io, routes).await;
    open.store(false, Ordering::Relaxed);
    match served {
        Ok(()) => tracing::info!("channel closed"),
        Err(e) => tracing::info!(error = %e, "channel closed"),
    }
    Ok(())
}

/// The channel kept open to one coordinator: dropped, it closes.
#[derive(Debug)]
pub struct Kept {
    /// Where it goes.
    pub to: Opener,
    /// Whether it is open now.
    pub open: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Keeps a channel to `to` open, serving `routes`, until the result is dropped.
pub fn keep(to: Opener, routes: Router) -> Kept {
    let open = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn({
        let (to, open) = (to.clone(), open.clone());
        async move {
            // No overall timeout: the connection lasts as long as the channel (HTTP/2 pings find a dead one).
            let http = commons_server::tls::http()
                .connect_timeout(Duration::from_secs(5))
                .http1_only()
                .build()
                .expect("a client with no TLS settings builds");
            let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
            loop {
                match open_and_serve(&http, &to, routes.clone(), &open).await {
                    Ok(()) => backoff.reset(),
                    Err(e) => tracing::warn!(error = %e, "cannot open the channel; retrying"),
                }
                tokio::time::sleep(backoff.fail()).await;
            }
        }
    });
    Kept { to, open, task }
}
