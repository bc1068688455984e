//! The coordinator as a library type: bind, serve, shut down.

use std::net::SocketAddr;

use commons_server::serve::{ServeError, Serving, StartError, listen};

use crate::config::{Config, Validate};
use crate::state::{AppState, LoadError};
use crate::store::Store;

/// The coordinator could not start, or did not stop cleanly.
pub type Error = StartError<Own>;

/// What can stop the coordinator's start that the edge does not have.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Own {
    /// The state (catalogue, registry) cannot be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The DHT node cannot start.
    #[error(transparent)]
    Dht(#[from] crate::dht::StartError),
}

impl From<LoadError> for Error {
    fn from(e: LoadError) -> Self {
        Self::Own(e.into())
    }
}

impl From<crate::dht::StartError> for Error {
    fn from(e: crate::dht::StartError) -> Self {
        Self::Own(e.into())
    }
}

/// A running coordinator.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    state: AppState,
    serving: Serving,
    new_admin_token: Option<String>,
    id: String,
}

impl Server {
    /// Opens the database, loads the registry and starts serving on `config.listen`.
    pub async fn bind(config: Config) -> Result<Self, Error> {
        config.validate()?;
        let listener = listen(config.listen).await?;
        let addr = listener.local_addr().map_err(ServeError::from)?;
        let store = Store::open(&config.data_dir)?;
        let url = config.coordinator_url(addr);
        let (state, new_admin_token) = AppState::load(config, store, addr, url).await?;
        let limits = state.config.limits()?;
        let tls = state.config.tls()?;
        let mut serving =
            Serving::start(listener, tls, crate::routes::router(state.clone()), limits)
                .map_err(ServeError::from)?;
        let db = state.store.db();
        let id = match db.setting("coordinator_id")? {
            Some(id) => id,
            None => {
                let id = format!("c-{}", &crate::auth::new_token()[..16]);
                db.set_setting("coordinator_id", &id).await?;
                id
            }
        };
        serving.add_tasks(crate::tasks::spawn(&state));
        // The DHT node first: the edge registration lists its addresses as seeds.
        serving.add_tasks(crate::dht::start(&state).await?);
        serving.add_tasks(crate::registrar::spawn(&state, &id));
        Ok(Self {
            addr,
            state,
            serving,
            new_admin_token,
            id,
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
    pub async fn shutdown(self) -> Result<(), Error> {
        crate::registrar::deregister(&self.state, &self.id).await;
        let served = self.serving.stop().await;
        if let Some(d) = self.state.dht.get() {
            d.shutdown().await;
        }
        let flushed = self.state.flush().await?;
        tracing::info!(heartbeats = flushed, "flushed; stopped");
        Ok(served?)
    }

    /// Stops at once without flushing, as a crash would (tests use it to show what survives).
    pub async fn abort(self) {
        self.serving.abort().await;
        if let Some(d) = self.state.dht.get() {
            d.shutdown().await;
        }
    }
}

/// Helpers that start real coordinators on loopback for tests.
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils {
    use super::*;

    /// A configuration for tests: loopback port 0, the given data dir, a known admin token, no rate or per-address
    /// connection limit.
    pub fn config(data_dir: &std::path::Path) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.to_owned(),
            admin_token: Some(crate::config::Secret(ADMIN_TOKEN.into())),
            register_rate_limit: 0,
            // Every test client is on loopback; the slow-client tests set their own limit.
            max_connections_per_address: 100_000,
            flush_interval_ms: 100,
            accounting_flush_ms: 100,
            // The tests of routing send no API key; those of keys turn this off.
            anonymous_access: true,
            anonymous_rate_per_minute: 1_000_000,
            dht: false,
            dht_listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            ..Config::default()
        }
    }

    /// The router and state over `config`'s database, without a socket, for `tower::ServiceExt::oneshot` tests.
    pub async fn app(config: Config) -> Result<(axum::Router, AppState), Error> {
        let store = Store::open(&config.data_dir)?;
        let bound = config.listen;
        let (state, _) =
            AppState::load(config, store, bound, "http://coordinator.test".into()).await?;
        Ok((crate::routes::router(state.clone()), state))
    }

    /// The admin token of [`config`].
    pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
}
