//! The topology the portal draws, built in one place for the API and the live feed.

use std::collections::HashMap;
use std::time::Instant;

use commons_shared::api::WorkerStatus;
use commons_shared::dht::{DhtTopology, LinkKind, NodeRole, TopologyEdge, TopologyNode};

use commons_dht::PeerId;

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

/// Adds the circuits through this coordinator's relay: a link from the node that asked to the node it reached,
/// each drawn as relayed (and either node added when the topology has not met it).
fn relayed(
    nodes: &mut Vec<TopologyNode>,
    edges: &mut Vec<TopologyEdge>,
    index: &mut HashMap<String, usize>,
    circuits: &[(PeerId, PeerId)],
) {
    for (from, to) in circuits {
        let (from, to) = (from.to_base58(), to.to_base58());
        for id in [&from, &to] {
            if !index.contains_key(id) {
                index.insert(id.clone(), nodes.len());
                nodes.push(bare_node(id.clone(), NodeRole::Peer));
            }
        }
        edges.push(TopologyEdge {
            from,
            to,
            kind: LinkKind::Relayed,
        });
    }
}

/// The topology the portal draws: the edge (when this coordinator is federated), this coordinator, its workers, and
/// the DHT peers in its routing table.
pub(crate) async fn build(state: &AppState) -> DhtTopology {
    let (me, links, circuits) = match state.dht.get() {
        Some(d) => {
            let snap = d.snapshot().await;
            (d.peer_id().to_base58(), snap.links, snap.circuits)
        }
        None => (
            format!("coordinator:{}", state.coordinator_url),
            Vec::new(),
            Vec::new(),
        ),
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
            location: Some(w.machine.region().to_owned()).filter(|r| !r.is_empty()),
            capacity: Some({
                let hw = w.machine.resources();
                f64::from(hw.cores) + 8.0 * hw.gpus.len() as f64
            }),
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
    relayed(&mut nodes, &mut edges, &mut index, &circuits);
    DhtTopology {
        node_count: nodes.len(),
        nodes,
        edges,
        dht_enabled: state.dht.get().is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn circuits_are_relayed_links_between_nodes_the_topology_knows() {
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut nodes = vec![bare_node(a.to_base58(), NodeRole::Worker)];
        let mut index = HashMap::from([(a.to_base58(), 0)]);
        let mut edges = Vec::new();
        relayed(&mut nodes, &mut edges, &mut index, &[(b, a), (b, c)]);
        let ids: Vec<_> = nodes.iter().map(|n| (n.id.clone(), n.role)).collect();
        assert_eq!(
            ids,
            [
                (a.to_base58(), NodeRole::Worker),
                (b.to_base58(), NodeRole::Peer),
                (c.to_base58(), NodeRole::Peer)
            ],
            "a worker stays a worker; the unknown ends are added once"
        );
        assert_eq!(
            edges,
            [
                TopologyEdge {
                    from: b.to_base58(),
                    to: a.to_base58(),
                    kind: LinkKind::Relayed
                },
                TopologyEdge {
                    from: b.to_base58(),
                    to: c.to_base58(),
                    kind: LinkKind::Relayed
                }
            ]
        );
    }
}
