//! The coordinator's DHT node: its identity (kept in the data directory), bootstrap (configured seeds and the
//! edge's), and its signed `coordinator/<PeerId>` record refreshed with its figures.

use std::path::{Path, PathBuf};
use std::time::Duration;

use commons_dht::{Config as DhtConfig, Dht, DhtError, Keypair, Multiaddr, RelayLimits, Role};
use commons_shared::dht::CoordinatorRecord;
use commons_shared::edge::Bootstrap;
use tokio::task::JoinHandle;

use crate::state::AppState;

const IDENTITY_FILE: &str = "dht-identity.key";

/// The DHT node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The identity file cannot be read or kept.
    #[error("cannot {action} the DHT identity at {path}: {source}")]
    Identity {
        /// "read" or "keep".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The node failed.
    #[error(transparent)]
    Node(#[from] DhtError),
}

/// The node's identity: read from the data directory, or made and kept there (0600) on first start.
pub fn identity(data_dir: &Path) -> Result<Keypair, StartError> {
    let path = data_dir.join(IDENTITY_FILE);
    let fail = |action, source| StartError::Identity {
        action,
        path: path.clone(),
        source,
    };
    match std::fs::read(&path) {
        Ok(bytes) => Ok(commons_dht::decode_keypair(&bytes)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = commons_dht::generate_keypair();
            let keep = || -> std::io::Result<()> {
                std::fs::create_dir_all(data_dir)?;
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut f = options.open(&path)?;
                std::io::Write::write_all(&mut f, &commons_dht::encode_keypair(&key))?;
                f.sync_all()
            };
            keep().map_err(|e| fail("keep", e))?;
            Ok(key)
        }
        Err(e) => Err(fail("read", e)),
    }
}

/// Starts the node (when the DHT is on) and the task that bootstraps it and keeps its record fresh.
pub async fn start(state: &AppState) -> Result<Option<JoinHandle<()>>, StartError> {
    let c = &state.config;
    if !c.dht {
        return Ok(None);
    }
    let mut config = DhtConfig::new(identity(&c.data_dir)?, Role::Coordinator);
    // Checked by Config::validate.
    config.listen = commons_dht::parse_addrs(&c.dht_listen);
    config.external = commons_dht::parse_addrs(&c.dht_external);
    config.refresh = Duration::from_secs(c.dht_refresh_secs);
    // Agents behind NATs reserve a slot here and are reached through it; AutoNAT answers their probes.
    config.relay = Some(RelayLimits::default());
    config.private_addresses = state.upstreams.allows_private();
    let dht = Dht::start(config).await?;
    tracing::info!(peer = %dht.peer_id(), addresses = ?dht.addresses(), "DHT node listening");
    let _ = state.dht.set(dht.clone());
    let state = state.clone();
    Ok(Some(tokio::spawn(async move {
        join(&state, &dht).await;
        let every = Duration::from_secs(state.config.dht_refresh_secs);
        loop {
            if let Err(e) = dht.publish_coordinator(record(&state)).await {
                tracing::warn!(error = %e, "cannot publish the coordinator's DHT record");
            }
            tokio::time::sleep(every).await;
        }
    })))
}

fn record(state: &AppState) -> CoordinatorRecord {
    let f = crate::registrar::figures(state);
    CoordinatorRecord {
        url: state.coordinator_url.clone(),
        region: state.config.region.clone().unwrap_or_default(),
        workers: f.workers,
        load: f.load,
    }
}

/// Bootstraps from the configured seeds and, with an edge, from the seeds it lists (one request per start).
/// The first coordinator has nobody to join: it serves as a seed and is joined by others.
async fn join(state: &AppState, dht: &Dht) {
    let mut seeds = commons_dht::parse_addrs(&state.config.dht_seeds);
    if let Some(edge) = &state.config.edge_url {
        match fetch_seeds(edge).await {
            Ok(more) => seeds.extend(more),
            Err(e) => tracing::warn!(error = %e, "cannot fetch DHT seeds from the edge"),
        }
    }
    let own = dht.peer_id();
    seeds.retain(|a| commons_dht::split_peer(a).is_some_and(|(p, _)| p != own));
    if seeds.is_empty() {
        tracing::info!("no DHT seeds yet: this coordinator is the first node");
        return;
    }
    match dht.bootstrap(&seeds).await {
        Ok(took) => tracing::info!(ms = took.as_millis() as u64, "joined the DHT"),
        Err(e) => {
            tracing::warn!(error = %e, "could not join the DHT; others can still join through this node")
        }
    }
}

/// Seeds from an edge's `GET /api/dht/bootstrap`.
pub async fn fetch_seeds(edge: &str) -> Result<Vec<Multiaddr>, reqwest::Error> {
    let b: Bootstrap = commons_server::tls::http()
        .timeout(Duration::from_secs(10))
        .build()?
        .get(format!("{}/api/dht/bootstrap", edge.trim_end_matches('/')))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(commons_dht::bootstrap_addrs(&b))
}
