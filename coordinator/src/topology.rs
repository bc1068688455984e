//! The topology the portal draws, built in one place for the API and the live feed.

use std::collections::HashMap;
use std::time::Instant;

use commons_shared::api::WorkerStatus;
use commons_shared::dht::{DhtTopology, LinkKind, NodeRole, TopologyEdge, TopologyNode};

use crate::state::AppState;

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
pub(crate) async fn build(state: &AppState) -> DhtTopology {
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
