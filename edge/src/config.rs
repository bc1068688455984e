//! Configuration: defaults, then a TOML file (`--config`), then `COMMONS_*` environment variables and flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use commons_server::auth::Secret;
pub use commons_server::config::{ConfigError, Validate};

/// Everything the edge can be told.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where the SQLite database lives.
    pub data_dir: PathBuf,
    /// Admin token; when unset one is created on first start, printed once and stored hashed.
    pub admin_token: Option<Secret>,
    /// Seconds between coordinator heartbeats the edge asks for.
    pub heartbeat_interval_secs: u64,
    /// A coordinator silent this long is forgotten (checked actively).
    pub coordinator_ttl_secs: u64,
    /// A coordinator that could not be reached is avoided this long (unless it heartbeats).
    pub suspect_secs: u64,
    /// Worker registrations forwarded per minute per client address; 0 turns the limit off.
    pub register_rate_limit: u32,
    /// Failed admin logins per minute per client address before 429.
    pub admin_auth_rate_limit: u32,
    /// Largest body forwarded on service routes.
    pub proxy_body_limit_bytes: usize,
    /// Seconds a client has to send a request's header (and an idle kept-alive connection stays open).
    pub header_read_timeout_secs: u64,
    /// Seconds a request body may send nothing before the request ends in 408.
    pub body_idle_timeout_secs: u64,
    /// Connections served at once; beyond it new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Connections one client address may hold at once; beyond it a connection gets 429.
    pub max_connections_per_address: usize,
    /// Seconds to wait for a coordinator's answer headers.
    pub proxy_timeout_secs: u64,
    /// Milliseconds to wait for a TCP connection to a coordinator before trying another.
    pub proxy_connect_timeout_ms: u64,
    /// Forward to coordinators at loopback, private and link-local addresses (edge and coordinators on one LAN).
    /// Default: only when `listen` is a loopback address. A coordinator URL at the edge's own address is refused
    /// whatever this says.
    pub private_upstreams: Option<bool>,
    /// Seconds a bootstrap answer may be cached.
    pub bootstrap_ttl_secs: u64,
    /// Seconds between heartbeats asked of a coordinator that runs a DHT node (it registered DHT addresses):
    /// its liveness flows through the DHT, so the edge needs only to keep it listed as a seed.
    pub dht_heartbeat_interval_secs: u64,
    /// A DHT coordinator silent this long is forgotten.
    pub dht_coordinator_ttl_secs: u64,
    /// Serve HTTPS with this certificate chain (PEM, the leaf first); with `tls_key`. Unset: plain HTTP (behind a
    /// reverse proxy that terminates TLS, or on loopback).
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            data_dir: dirs::data_dir()
                .map(|d| d.join("commons-edge"))
                .unwrap_or_else(|| PathBuf::from("commons-edge-data")),
            admin_token: None,
            heartbeat_interval_secs: 60,
            coordinator_ttl_secs: 300,
            suspect_secs: 30,
            register_rate_limit: 60,
            admin_auth_rate_limit: 20,
            proxy_body_limit_bytes: 64 * 1024 * 1024,
            proxy_timeout_secs: 300,
            header_read_timeout_secs: 10,
            body_idle_timeout_secs: 30,
            max_connections: 4096,
            max_connections_per_address: 64,
            proxy_connect_timeout_ms: 2000,
            private_upstreams: None,
            bootstrap_ttl_secs: 300,
            dht_heartbeat_interval_secs: 6 * 3600,
            dht_coordinator_ttl_secs: 25 * 3600,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl Config {
    /// Its TLS, when it serves HTTPS (the files are read now).
    pub fn tls(&self) -> Result<Option<commons_server::tls::Acceptor>, ConfigError> {
        commons_server::tls::from_settings(self.tls_cert.as_deref(), self.tls_key.as_deref())
    }

    /// What the server bounds its clients with.
    pub fn limits(&self) -> Result<commons_server::serve::Limits, ConfigError> {
        commons_server::serve::Limits::from_settings(
            self.header_read_timeout_secs,
            self.body_idle_timeout_secs,
            self.max_connections,
            self.max_connections_per_address,
            Vec::new(),
        )
    }
}

impl Validate for Config {
    /// Checks ranges.
    fn validate(&self) -> Result<(), ConfigError> {
        self.limits()?;
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "tls_cert and tls_key go together: give both to serve HTTPS, or neither".into(),
            ));
        }
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        if self.heartbeat_interval_secs < 1 {
            return bad("heartbeat_interval_secs must be at least 1");
        }
        if self.coordinator_ttl_secs <= self.heartbeat_interval_secs {
            return bad("coordinator_ttl_secs must be above heartbeat_interval_secs");
        }
        if let Some(t) = &self.admin_token
            && t.0.len() < 16
        {
            return bad("the admin token must be at least 16 characters");
        }
        Ok(())
    }
}
