//! The edge as a library type: bind, serve, shut down.

use std::net::SocketAddr;
use std::time::Duration;

use commons_server::serve::{ServeError, Serving, StartError, listen};
use tokio::task::JoinHandle;
use tokio::time::{MissedTickBehavior, interval};

use crate::config::{Config, Validate};
use crate::state::EdgeState;
use crate::store::Store;

/// The edge could not start, or did not stop cleanly (it has no reason of its own).
pub type Error = StartError;

/// A running edge.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    state: EdgeState,
    serving: Serving,
    new_admin_token: Option<String>,
}

fn spawn_tasks(state: &EdgeState) -> Vec<JoinHandle<()>> {
    let s = state.clone();
    // Expiry is checked actively, a few times per TTL, not only when the list is read.
    let every =
        Duration::from_millis((s.config.coordinator_ttl_secs * 1000 / 5).clamp(200, 10_000));
    let expiry = tokio::spawn(async move {
        let mut tick = interval(every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut n = 0u64;
        loop {
            tick.tick().await;
            if let Err(e) = s.expire().await {
                tracing::error!(error = %e, "expiring coordinators failed");
            }
            n += 1;
            if n.is_multiple_of(100) {
                s.trim_limiters();
            }
        }
    });
    let s = state.clone();
    let counts = tokio::spawn(async move {
        let mut tick = interval(Duration::from_secs(5));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = s.flush_counts().await {
                tracing::error!(error = %e, "writing request counts failed");
            }
        }
    });
    vec![expiry, counts]
}

impl Server {
    /// Opens the database, loads the registry and starts serving on `config.listen`.
    pub async fn bind(config: Config) -> Result<Self, Error> {
        config.validate()?;
        let listener = listen(config.listen).await?;
        let addr = listener.local_addr().map_err(ServeError::from)?;
        let store = Store::open(&config.data_dir)?;
        let (state, new_admin_token) = EdgeState::load(config, store, addr).await?;
        let limits = state.config.limits()?;
        let tls = state.config.tls()?;
        let mut serving = Serving::start(listener, tls, crate::http::router(state.clone()), limits)
            .map_err(ServeError::from)?;
        serving.add_tasks(spawn_tasks(&state));
        Ok(Self {
            addr,
            state,
            serving,
            new_admin_token,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://{addr}`, or `https://{addr}` when it serves TLS.
    pub fn url(&self) -> String {
        let scheme = if self.state.config.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// The state.
    pub fn state(&self) -> &EdgeState {
        &self.state
    }

    /// The admin token created on this start, if one was.
    pub fn new_admin_token(&self) -> Option<&str> {
        self.new_admin_token.as_deref()
    }

    /// Stops accepting, lets requests in progress finish, writes the request counts.
    pub async fn shutdown(self) -> Result<(), Error> {
        let served = self.serving.stop().await;
        self.state.flush_counts().await?;
        Ok(served?)
    }

    /// Stops at once, as a crash would.
    pub async fn abort(self) {
        self.serving.abort().await;
    }
}

/// Helpers that start real edges on loopback for tests.
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils {
    use super::*;

    /// The admin token of [`config`].
    pub const ADMIN_TOKEN: &str = "edge-test-admin-token-0123456789";

    /// Loopback port 0, the given data dir, a known admin token, no registration or per-address connection limit.
    pub fn config(data_dir: &std::path::Path) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.to_owned(),
            admin_token: Some(crate::config::Secret(ADMIN_TOKEN.into())),
            register_rate_limit: 0,
            max_connections_per_address: 100_000,
            ..Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    /// The only server in this test process: nothing else installs the recorder first.
    #[tokio::test]
    async fn metrics_count_from_the_start_not_from_the_first_scrape() {
        let dir = tempfile::tempdir().unwrap();
        let edge = super::Server::bind(super::test_utils::config(dir.path()))
            .await
            .unwrap();
        let client = reqwest::Client::new();
        for _ in 0..2 {
            let r = client
                .post(format!("{}/api/worker/register", edge.url()))
                .body("not json")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400);
        }
        let text = client
            .get(format!("{}/metrics", edge.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            text.contains("commons_edge_requests_total{kind=\"registration\"} 2"),
            "{text}"
        );
        edge.shutdown().await.unwrap();
    }
}
