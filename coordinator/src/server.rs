//! The coordinator as a library type: bind, serve, shut down.

use std::net::SocketAddr;

use commons_server::serve::Serving;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::state::AppState;
use crate::store::Store;

/// A running coordinator.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    state: AppState,
    serving: Serving,
    tasks: Vec<JoinHandle<()>>,
    new_admin_token: Option<String>,
    id: String,
}

impl Server {
    /// Opens the database, loads the registry and starts serving on `config.listen`.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        let addr = listener.local_addr()?;
        let store = Store::open(&config.data_dir)?;
        let url = config.coordinator_url(addr);
        let (state, new_admin_token) = AppState::load(config, store, url).await?;
        let serving = Serving::start(listener, crate::routes::router(state.clone()))?;
        let id = match state.store.setting("coordinator_id")? {
            Some(id) => id,
            None => {
                let id = format!("c-{}", &crate::auth::new_token()[..16]);
                state.store.set_setting("coordinator_id", &id).await?;
                id
            }
        };
        let mut tasks = crate::tasks::spawn(&state);
        // The DHT node first: the edge registration lists its addresses as seeds.
        tasks.extend(crate::dht::start(&state).await?);
        tasks.extend(crate::registrar::spawn(&state, &id));
        Ok(Self {
            addr,
            state,
            serving,
            tasks,
            new_admin_token,
            id,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://{addr}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The state (for tests and embedding).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The admin token created on this start, if one was (shown once; only its hash is stored).
    pub fn new_admin_token(&self) -> Option<&str> {
        self.new_admin_token.as_deref()
    }

    /// This coordinator's stable id (its name at the edge).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Deregisters from the edge, stops accepting, lets requests in progress finish, flushes heartbeats durably.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        crate::registrar::deregister(&self.state, &self.id).await;
        let served = self.serving.stop().await;
        for t in &self.tasks {
            t.abort();
        }
        if let Some(d) = self.state.dht.get() {
            d.shutdown().await;
        }
        let flushed = self.state.flush().await?;
        tracing::info!(heartbeats = flushed, "flushed; stopped");
        served
    }

    /// Stops at once without flushing, as a crash would (tests use it to show what survives).
    pub async fn abort(self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(d) = self.state.dht.get() {
            d.shutdown().await;
        }
        self.serving.abort().await;
    }

    /// Serves until SIGTERM or Ctrl-C, then shuts down gracefully.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        commons_server::shutdown_signal().await;
        tracing::info!("shutting down");
        self.shutdown().await
    }
}

/// Helpers that start real coordinators on loopback for tests.
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils {
    use super::*;

    /// A configuration for tests: loopback port 0, the given data dir, a known admin token, no rate limit.
    pub fn config(data_dir: &std::path::Path) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.to_owned(),
            admin_token: Some(crate::config::Secret(ADMIN_TOKEN.into())),
            register_rate_limit: 0,
            flush_interval_ms: 100,
            dht: false,
            dht_listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            ..Config::default()
        }
    }

    /// The router and state over `config`'s database, without a socket, for `tower::ServiceExt::oneshot` tests.
    pub async fn app(config: Config) -> anyhow::Result<(axum::Router, AppState)> {
        let store = Store::open(&config.data_dir)?;
        let (state, _) = AppState::load(config, store, "http://coordinator.test".into()).await?;
        Ok((crate::routes::router(state.clone()), state))
    }

    /// The admin token of [`config`].
    pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
}
