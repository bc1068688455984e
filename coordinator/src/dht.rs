//! The coordinator's DHT node: its identity (kept in the data directory), bootstrap (configured seeds and the
//! edge's), its signed `coordinator/<PeerId>` record refreshed with its figures, and the DHT views of the API.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use commons_dht::{Config as DhtConfig, Dht, Keypair, Multiaddr, Role};
use commons_shared::api::WorkerStatus;
use commons_shared::dht::{
    CoordinatorRecord, DhtStats, DhtTopology, LinkKind, NodeRole, TopologyEdge, TopologyNode,
};
use commons_shared::edge::Bootstrap;
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::state::AppState;

const IDENTITY_FILE: &str = "dht-identity.key";

/// The node's identity: read from the data directory, or made and kept there (0600) on first start.
pub fn identity(data_dir: &Path) -> anyhow::Result<Keypair> {
    let path = data_dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(commons_dht::decode_keypair(&bytes)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = commons_dht::generate_keypair();
            std::fs::create_dir_all(data_dir)?;
            let mut f = {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| {
                        anyhow::anyhow!("cannot keep the DHT identity at {}: {e}", path.display())
                    })?
            };
            std::io::Write::write_all(&mut f, &commons_dht::encode_keypair(&key))?;
            f.sync_all()?;
            Ok(key)
        }
        Err(e) => Err(anyhow::anyhow!(
            "cannot read the DHT identity at {}: {e}",
            path.display()
        )),
    }
}

/// Starts the node (when the DHT is on) and the task that bootstraps it and keeps its record fresh.
pub async fn start(state: &AppState) -> anyhow::Result<Option<JoinHandle<()>>> {
    let c = &state.config;
    if !c.dht {
        return Ok(None);
    }
    let mut config = DhtConfig::new(identity(&c.data_dir)?, Role::Coordinator);
    // Checked by Config::validate.
    config.listen = commons_dht::parse_addrs(&c.dht_listen);
    config.external = commons_dht::parse_addrs(&c.dht_external);
    config.refresh = Duration::from_secs(c.dht_refresh_secs);
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
pub async fn fetch_seeds(edge: &str) -> anyhow::Result<Vec<Multiaddr>> {
    let b: Bootstrap = reqwest::Client::builder()
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

/// `GET /api/dht/stats`: this coordinator's node.
#[utoipa::path(get, path = "/api/dht/stats", responses((status = 200, body = DhtStats), (status = 401, body = commons_shared::ErrorBody)),
    security(("admin_token" = [])))]
pub(crate) async fn stats(State(state): State<AppState>, _: Admin) -> Json<DhtStats> {
    Json(match state.dht.get() {
        Some(d) => d.snapshot().await.stats,
        None => DhtStats::default(),
    })
}

/// `GET /api/dht/topology` (seed shape): this coordinator, the peers in its routing table, and the workers
/// registered here, with routing-table links and each worker's link to this coordinator.
#[utoipa::path(get, path = "/api/dht/topology", responses((status = 200, body = DhtTopology), (status = 401, body = commons_shared::ErrorBody)),
    security(("admin_token" = [])))]
pub(crate) async fn topology(State(state): State<AppState>, _: Admin) -> Json<DhtTopology> {
    Json(build_topology(&state).await)
}

/// Rounds a load to two decimals, so that the live feed does not resend a node for noise.
fn round_load(load: f64) -> f64 {
    (load * 100.0).round() / 100.0
}

/// A node known only by its id and role (the edge, a DHT peer).
fn bare_node(id: String, role: NodeRole) -> TopologyNode {
    TopologyNode {
        id,
        role,
        services: Vec::new(),
        worker_id: None,
        tier: None,
        status: None,
        location: None,
        capacity: None,
        requests: None,
        load: None,
    }
}

/// The topology the portal draws: the edge (when this coordinator is federated), this coordinator, its workers, and
/// the DHT peers in its routing table.
pub(crate) async fn build_topology(state: &AppState) -> DhtTopology {
    let (me, links) = match state.dht.get() {
        Some(d) => {
            let snap = d.snapshot().await;
            (d.peer_id().to_base58(), snap.links)
        }
        None => (format!("coordinator:{}", state.coordinator_url), Vec::new()),
    };
    let workers = state.registry.all();
    let mut nodes = vec![TopologyNode {
        id: me.clone(),
        role: NodeRole::Coordinator,
        services: Vec::new(),
        worker_id: None,
        tier: None,
        status: Some(WorkerStatus::Healthy),
        location: state.config.region.clone(),
        capacity: Some(workers.len() as f64),
        requests: Some(
            state
                .requests_total
                .load(std::sync::atomic::Ordering::Relaxed),
        ),
        load: None,
    }];
    let mut edges = Vec::new();
    let edge_id = state.config.edge_url.as_ref().map(|url| {
        let id = format!("edge:{url}");
        nodes.push(bare_node(id.clone(), NodeRole::Edge));
        edges.push(TopologyEdge {
            from: me.clone(),
            to: id.clone(),
            kind: LinkKind::Federated,
        });
        id
    });
    let mut index: HashMap<String, usize> = HashMap::new();
    let now = Instant::now();
    for w in workers {
        let live = w.live.lock();
        let id = w
            .peer_id
            .as_deref()
            .map_or_else(|| w.id.to_string(), str::to_owned);
        index.insert(id.clone(), nodes.len());
        edges.push(TopologyEdge {
            from: id.clone(),
            to: me.clone(),
            kind: LinkKind::Registered,
        });
        nodes.push(TopologyNode {
            id,
            role: NodeRole::Worker,
            services: live
                .services
                .iter()
                .filter_map(|&i| state.catalogue.services().get(usize::from(i)))
                .map(|s| s.name.clone())
                .collect(),
            worker_id: Some(w.id.to_string()),
            tier: Some(w.tier.number()),
            status: Some(live.status(now, state.liveness)),
            location: Some(w.caps.region.clone()).filter(|r| !r.is_empty()),
            capacity: Some(f64::from(w.caps.cpu.cores) + 8.0 * w.caps.gpus.len() as f64),
            requests: Some(w.stats.requests()),
            load: Some(round_load(live.load)),
        });
    }
    for (peer, role) in links {
        let id = peer.to_base58();
        if !index.contains_key(&id) {
            index.insert(id.clone(), nodes.len());
            if role == NodeRole::Coordinator
                && let Some(edge) = &edge_id
            {
                edges.push(TopologyEdge {
                    from: id.clone(),
                    to: edge.clone(),
                    kind: LinkKind::Federated,
                });
            }
            nodes.push(bare_node(id.clone(), role));
        }
        edges.push(TopologyEdge {
            from: me.clone(),
            to: id,
            kind: LinkKind::DhtLink,
        });
    }
    DhtTopology {
        node_count: nodes.len(),
        nodes,
        edges,
        dht_enabled: state.dht.get().is_some(),
    }
}
