//! Configuration: defaults, then a TOML file (`--config`), then `COMMONS_*` environment variables and flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use commons_server::auth::Secret;
pub use commons_server::config::{ConfigError, Validate};

/// Everything the coordinator can be told.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where the SQLite database lives.
    pub data_dir: PathBuf,
    /// The URL workers and the edge reach this coordinator at (`coordinator_url` in answers). Default: `http://{listen}`.
    pub public_url: Option<String>,
    /// Name shown in `/health`.
    pub name: String,
    /// Admin token; when unset one is created on first start, printed once and stored hashed.
    pub admin_token: Option<Secret>,
    /// Registration needs an enrollment token created through the admin API.
    pub require_enrollment: bool,
    /// Accept heartbeats and unregistrations without a token from workers that registered in the legacy shape.
    pub legacy_open_workers: bool,
    /// Seconds between a worker's heartbeats.
    pub heartbeat_interval_secs: u64,
    /// No heartbeat for this long: stale, out of routing.
    pub stale_after_secs: u64,
    /// No heartbeat for this long: offline.
    pub offline_after_secs: u64,
    /// Offline workers are forgotten after this long.
    pub purge_offline_after_secs: u64,
    /// Heartbeats are kept in memory and written to SQLite in batches at this interval (at most 1000 ms).
    pub flush_interval_ms: u64,
    /// Registrations per minute per client address; 0 turns the limit off.
    pub register_rate_limit: u32,
    /// Failed admin logins per minute per client address before 429.
    pub admin_auth_rate_limit: u32,
    /// A catalogue file that overrides the shipped one by service name.
    pub catalogue: Option<PathBuf>,
    /// Its minisign signature, which workers check against the keys they trust [default: `<catalogue>.minisig`
    /// when it exists]. Workers run nothing from an unsigned catalogue but what the shipped one says.
    pub catalogue_signature: Option<PathBuf>,
    /// At most this many services per worker.
    pub max_services_per_worker: usize,
    /// Largest body forwarded to a worker.
    pub proxy_body_limit_bytes: usize,
    /// Seconds a client has to send a request's header (and an idle kept-alive connection stays open).
    pub header_read_timeout_secs: u64,
    /// Seconds a request body may send nothing before the request ends in 408.
    pub body_idle_timeout_secs: u64,
    /// Connections served at once; beyond it new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Connections one client address may hold at once; beyond it a connection gets 429.
    /// `trusted_proxies` (the edge) are exempt.
    pub max_connections_per_address: usize,
    /// Seconds to wait for a worker's answer headers.
    pub proxy_timeout_secs: u64,
    /// Seconds to wait for a TCP connection to a worker before trying another.
    pub proxy_connect_timeout_ms: u64,
    /// Forward service requests to workers at loopback, private and link-local addresses (a LAN deployment).
    /// Default: only when `listen` is a loopback address (then only this machine's workers can reach it anyway).
    /// A worker's endpoint at this coordinator's own address is refused whatever this says.
    pub private_upstreams: Option<bool>,
    /// Seconds between history points (60 in production; tests shorten it).
    pub history_interval_secs: u64,
    /// The edge router to register with (needs `federation_key`; set `public_url` when the listen address is not
    /// what workers and the edge reach).
    pub edge_url: Option<String>,
    /// The key the edge's admin enrolled for this coordinator.
    pub federation_key: Option<Secret>,
    /// Milliseconds between heartbeats to the edge.
    pub edge_heartbeat_interval_ms: u64,
    /// Region label reported to the edge.
    pub region: Option<String>,
    /// Addresses whose `X-Forwarded-For` is believed (the edge's), for per-client rate limits.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Days of history kept.
    pub history_retention_days: u64,
    /// Seconds between rebalancing passes.
    pub rebalance_interval_secs: u64,
    /// Serve service requests without an API key (at the lowest priority, under `anonymous_rate_per_minute`
    /// shared by all of them). Off: a request without a key gets 401.
    pub anonymous_access: bool,
    /// Requests per minute for all anonymous clients together, when `anonymous_access` is on.
    pub anonymous_rate_per_minute: u32,
    /// Requests that may wait per service when every worker is busy; beyond it, 429.
    pub queue_length: usize,
    /// The longest a request waits in a service's queue before it gets 503.
    pub queue_wait_secs: u64,
    /// Record every service request and donated hour in the usage ledger (usage reports, quotas across restarts,
    /// volunteers' credit). Off only to measure what it costs.
    pub accounting: bool,
    /// Milliseconds between the accounting task's writes of served requests to the ledger (donated time and display
    /// names are written with each heartbeat flush, `flush_interval_ms`).
    pub accounting_flush_ms: u64,
    /// The fraction of a deterministic service's requests (the catalogue's `verify`) also sent to a second worker,
    /// to compare the answers; a worker of lower trust is checked more often (the fraction over its trust).
    /// 0 turns the checks off.
    pub verify_fraction: f64,
    /// A worker whose trust (0 to 1; new ones start at 0.5) falls below this gets no more requests.
    pub trust_threshold: f64,
    /// Run a DHT node.
    pub dht: bool,
    /// Where the DHT node listens (multiaddrs).
    pub dht_listen: Vec<String>,
    /// Addresses others reach the DHT node at (a public address), when listening on a private one.
    pub dht_external: Vec<String>,
    /// DHT seeds (multiaddrs ending in `/p2p/<peer id>`), besides those the edge gives.
    pub dht_seeds: Vec<String>,
    /// Seconds between refreshes of the coordinator's DHT record (it lives twice as long).
    pub dht_refresh_secs: u64,
    /// The built portal (`cargo xtask portal` writes `portal/dist`), served at `/`; none: `/` says how to build it.
    pub portal_dir: Option<PathBuf>,
    /// Installers offered for download (`GET /api/releases`, `/releases/<file>`).
    pub releases_dir: Option<PathBuf>,
    /// The edge's admin token, to show its coordinators in the portal (else they come from the DHT).
    pub edge_admin_token: Option<Secret>,
    /// How often the portal's live feed looks for changes, ms.
    pub live_interval_ms: u64,
    /// How long a portal login lasts, seconds.
    pub session_ttl_secs: u64,
    /// Serve HTTPS with this certificate chain (PEM, the leaf first); with `tls_key`. Unset: plain HTTP (behind a
    /// reverse proxy that terminates TLS, or on loopback).
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: default_data_dir(),
            public_url: None,
            name: "commons-coordinator".into(),
            admin_token: None,
            require_enrollment: false,
            legacy_open_workers: false,
            heartbeat_interval_secs: 30,
            stale_after_secs: 90,
            offline_after_secs: 600,
            purge_offline_after_secs: 7 * 24 * 3600,
            flush_interval_ms: 1000,
            register_rate_limit: 60,
            admin_auth_rate_limit: 20,
            catalogue: None,
            catalogue_signature: None,
            max_services_per_worker: 3,
            proxy_body_limit_bytes: 64 * 1024 * 1024,
            proxy_timeout_secs: 300,
            header_read_timeout_secs: 10,
            body_idle_timeout_secs: 30,
            max_connections: 4096,
            max_connections_per_address: 64,
            proxy_connect_timeout_ms: 2000,
            private_upstreams: None,
            history_interval_secs: 60,
            history_retention_days: 7,
            edge_url: None,
            federation_key: None,
            edge_heartbeat_interval_ms: 60_000,
            region: None,
            trusted_proxies: Vec::new(),
            rebalance_interval_secs: 15,
            anonymous_access: false,
            anonymous_rate_per_minute: 60,
            queue_length: 256,
            queue_wait_secs: 30,
            accounting: true,
            accounting_flush_ms: 5000,
            verify_fraction: 0.02,
            trust_threshold: 0.2,
            dht: true,
            dht_listen: vec!["/ip4/0.0.0.0/tcp/4001".into()],
            dht_external: Vec::new(),
            dht_seeds: Vec::new(),
            dht_refresh_secs: 60,
            portal_dir: None,
            releases_dir: None,
            edge_admin_token: None,
            live_interval_ms: 1000,
            session_ttl_secs: 12 * 3600,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// `$XDG_DATA_HOME/commons-coordinator` (or the platform's equivalent), else `./commons-data`.
pub fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .map(|d| d.join("commons-coordinator"))
        .unwrap_or_else(|| PathBuf::from("commons-data"))
}

impl Config {
    /// The URL given to workers: `public_url`, else where it listens (https when it serves TLS).
    pub fn coordinator_url(&self, bound: SocketAddr) -> String {
        let scheme = if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{bound}"))
    }

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
            self.trusted_proxies.clone(),
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
        if self.flush_interval_ms == 0 || self.flush_interval_ms > 1000 {
            return bad("flush_interval_ms must be from 1 to 1000");
        }
        if self.heartbeat_interval_secs == 0
            || self.heartbeat_interval_secs >= self.stale_after_secs
        {
            return bad("heartbeat_interval_secs must be at least 1 and below stale_after_secs");
        }
        if self.offline_after_secs <= self.stale_after_secs {
            return bad("offline_after_secs must be above stale_after_secs");
        }
        if self.accounting_flush_ms == 0 || self.accounting_flush_ms > 60_000 {
            return bad("accounting_flush_ms must be from 1 to 60000");
        }
        if !(0.0..=1.0).contains(&self.verify_fraction) {
            return bad("verify_fraction must be from 0 to 1");
        }
        if !(0.0..crate::verify::NEW_TRUST).contains(&self.trust_threshold) {
            return bad("trust_threshold must be from 0 to below 0.5 (a new worker's trust)");
        }
        if self.queue_length == 0 || self.queue_wait_secs == 0 {
            return bad("queue_length and queue_wait_secs must be at least 1");
        }
        if self.anonymous_access && self.anonymous_rate_per_minute == 0 {
            return bad("anonymous_rate_per_minute must be at least 1 when anonymous_access is on");
        }
        if self.history_interval_secs == 0 || self.rebalance_interval_secs == 0 {
            return bad("history_interval_secs and rebalance_interval_secs must be at least 1");
        }
        if let Some(t) = &self.admin_token
            && t.0.len() < 16
        {
            return bad("the admin token must be at least 16 characters");
        }
        if let Some(edge) = &self.edge_url {
            if !(edge.starts_with("http://") || edge.starts_with("https://")) {
                return bad("edge_url must start with http:// or https://");
            }
            if self.federation_key.is_none() {
                return bad(
                    "registering with an edge needs federation_key (COMMONS_FEDERATION_KEY), enrolled by the edge's admin",
                );
            }
            if self.edge_heartbeat_interval_ms < 10 {
                return bad("edge_heartbeat_interval_ms must be at least 10");
            }
        }
        if self.dht {
            if self.dht_refresh_secs == 0 || self.dht_refresh_secs > 1800 {
                return bad("dht_refresh_secs must be from 1 to 1800");
            }
            for a in self
                .dht_listen
                .iter()
                .chain(&self.dht_external)
                .chain(&self.dht_seeds)
            {
                if a.parse::<commons_dht::Multiaddr>().is_err() {
                    return Err(ConfigError::Invalid(format!(
                        "{a:?} is not a multiaddr (e.g. /ip4/0.0.0.0/tcp/4001)"
                    )));
                }
            }
            if self.dht_listen.is_empty() {
                return bad("dht_listen needs an address (or turn the DHT off with --no-dht)");
            }
        }
        if !(50..=60_000).contains(&self.live_interval_ms) {
            return bad("live_interval_ms must be from 50 to 60000");
        }
        if !(60..=30 * 86_400).contains(&self.session_ttl_secs) {
            return bad("session_ttl_secs must be from 60 to 2592000 (30 days)");
        }
        if let Some(u) = &self.public_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return bad("public_url must start with http:// or https://");
        }
        Ok(())
    }
}
