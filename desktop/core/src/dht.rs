//! The agent's part in the DHT: its node (identity from the keyring), seeds (cached on disk, else the edge's
//! bootstrap list, else what the coordinator hands out at registration), its published worker record, and
//! discovery: DHT first, the coordinator as fallback.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use std::sync::Arc;

use commons_dht::{Config, Dht, DhtError, Found, Multiaddr, Role};
use commons_shared::dht::{CoordinatorRecord, WorkerRecord};

use crate::client::{CallError, Client};
use crate::credentials::{CredentialError, CredentialStore};
use crate::settings::Settings;

/// The agent's DHT node could not start or join.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DhtStartError {
    /// Its identity cannot be read from or kept in the keyring.
    #[error("the DHT identity: {0}")]
    Identity(#[from] CredentialError),
    /// `dht_listen` is not a multiaddr.
    #[error("dht_listen {0:?} is not a multiaddr: {1}")]
    Listen(String, #[source] <Multiaddr as std::str::FromStr>::Err),
    /// The node failed.
    #[error(transparent)]
    Node(#[from] DhtError),
    /// The edge could not be asked for seeds.
    #[error("cannot ask the edge for DHT seeds: {0}")]
    Edge(#[from] CallError),
    /// The edge lists none yet.
    #[error("the edge lists no DHT seeds yet")]
    NoSeeds,
}

/// Starts the agent's DHT node with its kept identity (read from the keyring off the async threads).
pub async fn start(
    settings: &Settings,
    creds: Arc<dyn CredentialStore>,
) -> Result<Dht, DhtStartError> {
    let identity =
        crate::blocking(move || crate::credentials::dht_identity(creds.as_ref())).await?;
    start_with(settings, commons_dht::decode_keypair(&identity)?).await
}

/// Starts a DHT node with the given identity (a throwaway one for a one-off lookup).
pub async fn start_with(
    settings: &Settings,
    key: commons_dht::Keypair,
) -> Result<Dht, DhtStartError> {
    let mut config = Config::new(key, Role::Agent);
    config.listen = vec![
        settings
            .dht_listen
            .parse()
            .map_err(|e| DhtStartError::Listen(settings.dht_listen.clone(), e))?,
    ];
    config.server = settings.dht_server;
    config.auto_server = true;
    config.private_addresses = settings.dht_lan;
    config.refresh = Duration::from_secs(settings.dht_refresh_secs);
    Ok(Dht::start(config).await?)
}

/// The cached seed list (empty when there is none or it is unreadable).
pub fn cached_seeds(path: &Path) -> Vec<Multiaddr> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    commons_dht::parse_addrs(serde_json::from_str::<Vec<String>>(&text).unwrap_or_default())
}

/// Adds `seeds` to the cache (at most 16, newest first).
pub fn cache_seeds(path: &Path, seeds: &[Multiaddr]) {
    let mut all: Vec<String> = seeds.iter().map(ToString::to_string).collect();
    for old in cached_seeds(path) {
        let old = old.to_string();
        if !all.contains(&old) {
            all.push(old);
        }
    }
    all.truncate(16);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(path, serde_json::to_string(&all).unwrap_or_default()) {
        tracing::warn!(path = %path.display(), error = %e, "cannot cache the DHT seeds");
    }
}

/// Joins the DHT: cached and configured seeds first (no edge request), else the edge's list. Waits a random
/// time up to `dht_stagger_ms` first. Caches what worked.
pub async fn join(
    dht: &Dht,
    settings: &Settings,
    client: &Client,
) -> Result<Duration, DhtStartError> {
    let cache = settings.seed_cache_path();
    let mut seeds = cached_seeds(&cache);
    seeds.extend(commons_dht::parse_addrs(&settings.dht_seeds));
    if settings.dht_stagger_ms > 0 {
        let wait = rand::random_range(0..=settings.dht_stagger_ms);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    if !seeds.is_empty() {
        match dht.bootstrap(&seeds).await {
            Ok(took) => return Ok(took),
            Err(e) => {
                tracing::info!(error = %e, "cached DHT seeds did not answer; asking the edge")
            }
        }
    }
    let fresh = commons_dht::bootstrap_addrs(&client.bootstrap(&settings.edge_url).await?);
    if fresh.is_empty() {
        return Err(DhtStartError::NoSeeds);
    }
    let took = dht.bootstrap(&fresh).await?;
    cache_seeds(&cache, &fresh);
    Ok(took)
}

/// Live coordinators from the DHT, least loaded first, leaving out `except` (a coordinator that just failed).
pub async fn coordinators(dht: &Dht, region: &str, except: Option<&str>) -> Vec<CoordinatorRecord> {
    let mut found: Vec<CoordinatorRecord> = dht
        .find_coordinators(if region.is_empty() {
            commons_shared::dht::ANY_REGION
        } else {
            region
        })
        .await
        .into_iter()
        .map(|f| f.record)
        .filter(|c| Some(c.url.as_str()) != except)
        .collect();
    // Equally loaded coordinators in random order, so joining agents spread over them.
    rand::seq::SliceRandom::shuffle(found.as_mut_slice(), &mut rand::rng());
    found.sort_by(|a, b| a.load.total_cmp(&b.load));
    found
}

/// Where to send a request for a service.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "via", rename_all = "lowercase")]
pub enum Route {
    /// Straight to a worker found in the DHT: `{endpoint}/api/service/{name}/...`.
    Direct {
        /// The worker's endpoint.
        endpoint: String,
        /// Its peer id.
        peer: String,
    },
    /// Through the coordinator, which routes to one of its workers: `{coordinator}/api/service/{name}/...`.
    Coordinator {
        /// The coordinator's URL.
        url: String,
    },
}

/// DHT first (the least loaded live worker with an endpoint), the coordinator when the DHT is off, has no
/// peers or has no answer.
pub async fn find_worker(dht: Option<&Dht>, coordinator: &str, service: &str) -> Route {
    if let Some(d) = dht {
        let mut found: Vec<Found<WorkerRecord>> = d
            .find_service(service)
            .await
            .into_iter()
            .filter(|f| f.record.endpoint.is_some())
            .collect();
        found.sort_by(|a, b| a.record.load.total_cmp(&b.record.load));
        if let Some(f) = found.into_iter().next() {
            return Route::Direct {
                endpoint: f.record.endpoint.unwrap_or_default(),
                peer: f.peer.to_base58(),
            };
        }
    }
    Route::Coordinator {
        url: coordinator.trim_end_matches('/').to_owned(),
    }
}

/// The record this worker publishes.
pub fn worker_record(
    worker_id: &str,
    services: BTreeSet<String>,
    endpoint: Option<String>,
    coordinator: &str,
    caps: &commons_shared::caps::Capabilities,
    load: f64,
) -> WorkerRecord {
    WorkerRecord {
        worker_id: Some(worker_id.to_owned()),
        services: services.into_iter().collect(),
        tier: Some(commons_shared::tier::classify(caps, false).tier.number()),
        endpoint,
        region: Some(caps.region.clone()).filter(|r| !r.is_empty()),
        load,
        cpu_cores: caps.cpu.cores,
        gpus: caps.gpus.len() as u32,
        vram_bytes: caps.gpus.iter().map(|g| g.vram_bytes).sum(),
        coordinator_url: Some(coordinator.to_owned()),
    }
}
