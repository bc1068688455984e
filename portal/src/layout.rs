//! The topology's layout: a force simulation ([`force_graph`]) seeded so that it starts close to its rest.
//!
//! Pure and native: the portal ticks it once per animation frame; the tests tick it here. New nodes start beside
//! the node they link to (a worker beside its coordinator, a coordinator beside the edge), on a golden-angle
//! spiral, so a graph of 1,000 workers is readable from the first frame and settles in a few dozen ticks.

use std::collections::HashMap;

use commons_shared::dht::{DhtTopology, NodeRole};
use force_graph::{DefaultNodeIdx, EdgeData, ForceGraph, NodeData, SimulationParameters};

/// Time step per tick.
const DT: f32 = 0.02;
/// Below this mean movement per node and tick (px) the layout counts as settled.
const SETTLED_PX: f32 = 0.15;
/// At most this many ticks after a change, settled or not.
const MAX_TICKS: u32 = 400;

/// Positions of a topology's nodes.
pub struct Layout {
    graph: ForceGraph<String, ()>,
    index: HashMap<String, DefaultNodeIdx>,
    links: Vec<(String, String)>,
    ticks_since_change: u32,
    last_motion: f32,
}

impl std::fmt::Debug for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layout")
            .field("nodes", &self.index.len())
            .field("links", &self.links.len())
            .field("ticks_since_change", &self.ticks_since_change)
            .finish()
    }
}

impl Default for Layout {
    fn default() -> Self {
        Self::new()
    }
}

fn parameters() -> SimulationParameters {
    SimulationParameters {
        force_charge: 900.0,
        force_spring: 0.6,
        force_max: 200.0,
        node_speed: 800.0,
        damping_factor: 0.8,
    }
}

/// The `i`-th point of a golden-angle spiral around `(cx, cy)`.
fn spiral(cx: f32, cy: f32, i: usize, spacing: f32) -> (f32, f32) {
    let golden = std::f32::consts::PI * (3.0 - 5f32.sqrt());
    let r = spacing * (i as f32 + 1.0).sqrt() + spacing;
    let a = i as f32 * golden;
    (cx + r * a.cos(), cy + r * a.sin())
}

impl Layout {
    /// An empty layout.
    pub fn new() -> Self {
        Self {
            graph: ForceGraph::new(parameters()),
            index: HashMap::new(),
            links: Vec::new(),
            ticks_since_change: 0,
            last_motion: f32::INFINITY,
        }
    }

    /// Makes the layout hold exactly `topology`'s nodes and links; nodes already placed keep their place.
    pub fn sync(&mut self, topology: &DhtTopology) {
        let same_nodes = topology.nodes.len() == self.index.len()
            && topology
                .nodes
                .iter()
                .all(|n| self.index.contains_key(&n.id));
        let links: Vec<(String, String)> = topology
            .edges
            .iter()
            .filter(|e| e.from != e.to)
            .map(|e| (e.from.clone(), e.to.clone()))
            .collect();
        if same_nodes && links == self.links {
            return;
        }
        let mut placed: HashMap<String, (f32, f32)> = self.positions();
        // Where a new node goes: beside the first neighbour already placed, else on a spiral round the origin.
        let mut children: HashMap<String, usize> = HashMap::new();
        let mut roots = 0usize;
        let mut neighbours: HashMap<&str, Vec<&str>> = HashMap::new();
        for (a, b) in &links {
            neighbours.entry(a).or_default().push(b);
            neighbours.entry(b).or_default().push(a);
        }
        // Hubs (edge, coordinators) first, so their workers find them placed.
        let mut order: Vec<_> = topology.nodes.iter().collect();
        order.sort_by_key(|n| match n.role {
            NodeRole::Edge => 0,
            NodeRole::Coordinator => 1,
            NodeRole::Worker | NodeRole::Peer => 2,
        });
        for n in order {
            if placed.contains_key(&n.id) {
                continue;
            }
            let anchor = neighbours
                .get(n.id.as_str())
                .into_iter()
                .flatten()
                .find_map(|m| placed.get(*m).map(|p| ((*m).to_owned(), *p)));
            let pos = match anchor {
                Some((m, (x, y))) => {
                    let k = children.entry(m).or_insert(0);
                    *k += 1;
                    spiral(x, y, *k - 1, 14.0)
                }
                None => {
                    roots += 1;
                    if roots == 1 {
                        (0.0, 0.0)
                    } else {
                        spiral(0.0, 0.0, roots - 2, 220.0)
                    }
                }
            };
            placed.insert(n.id.clone(), pos);
        }
        self.graph = ForceGraph::new(parameters());
        self.index.clear();
        for n in &topology.nodes {
            let (x, y) = placed[&n.id];
            // Heavier hubs push each other (and each other's workers) further apart.
            let degree = neighbours.get(n.id.as_str()).map_or(0, Vec::len);
            let idx = self.graph.add_node(NodeData {
                x,
                y,
                mass: 1.0 + (degree as f32).sqrt(),
                is_anchor: false,
                user_data: n.id.clone(),
            });
            self.index.insert(n.id.clone(), idx);
        }
        for (a, b) in &links {
            if let (Some(&i), Some(&j)) = (self.index.get(a), self.index.get(b)) {
                self.graph.add_edge(i, j, EdgeData::default());
            }
        }
        self.links = links;
        self.ticks_since_change = 0;
        self.last_motion = f32::INFINITY;
    }

    /// One step of the simulation; returns whether the layout is still moving.
    pub fn tick(&mut self) -> bool {
        if self.settled() {
            return false;
        }
        // Node order is stable between structural changes, so positions pair up by index.
        let mut before = Vec::with_capacity(self.index.len());
        self.graph.visit_nodes(|n| before.push((n.x(), n.y())));
        self.graph.update(DT);
        let mut moved = 0.0;
        let mut i = 0;
        self.graph.visit_nodes(|n| {
            let (x, y) = before[i];
            moved += ((n.x() - x).powi(2) + (n.y() - y).powi(2)).sqrt();
            i += 1;
        });
        self.last_motion = moved / self.index.len().max(1) as f32;
        self.ticks_since_change += 1;
        !self.settled()
    }

    /// Whether the layout has come to rest (or ran out of ticks).
    pub fn settled(&self) -> bool {
        self.index.is_empty()
            || self.last_motion < SETTLED_PX
            || self.ticks_since_change >= MAX_TICKS
    }

    /// How many nodes it holds.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Ticks since the last change.
    pub fn ticks(&self) -> u32 {
        self.ticks_since_change
    }

    /// A node's position.
    pub fn position(&self, id: &str) -> Option<(f32, f32)> {
        let idx = *self.index.get(id)?;
        let n = self.graph.get_graph().node_weight(idx)?;
        Some((n.x(), n.y()))
    }

    /// Every node's position.
    pub fn positions(&self) -> HashMap<String, (f32, f32)> {
        let mut out = HashMap::with_capacity(self.index.len());
        self.graph.visit_nodes(|n| {
            out.insert(n.data.user_data.clone(), (n.x(), n.y()));
        });
        out
    }

    /// The box that holds every node: (min x, min y, width, height), at least 100 × 100.
    pub fn bounds(&self) -> (f32, f32, f32, f32) {
        let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        self.graph.visit_nodes(|n| {
            x0 = x0.min(n.x());
            y0 = y0.min(n.y());
            x1 = x1.max(n.x());
            y1 = y1.max(n.y());
        });
        if x0 > x1 {
            return (-50.0, -50.0, 100.0, 100.0);
        }
        let (w, h) = ((x1 - x0).max(100.0), (y1 - y0).max(100.0));
        (x0, y0, w, h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commons_shared::api::WorkerStatus;
    use commons_shared::dht::{LinkKind, TopologyEdge, TopologyNode};

    fn node(id: &str, role: NodeRole) -> TopologyNode {
        TopologyNode {
            id: id.into(),
            role,
            services: Vec::new(),
            worker_id: None,
            tier: Some(2),
            status: Some(WorkerStatus::Healthy),
            location: None,
            capacity: None,
            requests: None,
            load: None,
        }
    }

    /// An edge, `coordinators` coordinators and `workers` workers spread over them.
    fn star(coordinators: usize, workers: usize) -> DhtTopology {
        let mut nodes = vec![node("edge", NodeRole::Edge)];
        let mut edges = Vec::new();
        for c in 0..coordinators {
            nodes.push(node(&format!("c{c}"), NodeRole::Coordinator));
            edges.push(TopologyEdge {
                from: format!("c{c}"),
                to: "edge".into(),
                kind: LinkKind::Federated,
            });
        }
        for w in 0..workers {
            nodes.push(node(&format!("w{w}"), NodeRole::Worker));
            edges.push(TopologyEdge {
                from: format!("w{w}"),
                to: format!("c{}", w % coordinators),
                kind: LinkKind::Registered,
            });
        }
        DhtTopology {
            node_count: nodes.len(),
            nodes,
            edges,
            dht_enabled: false,
        }
    }

    fn dist(a: (f32, f32), b: (f32, f32)) -> f32 {
        ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt()
    }

    #[test]
    fn every_node_is_placed_and_workers_start_beside_their_coordinator() {
        let mut l = Layout::new();
        l.sync(&star(2, 40));
        assert_eq!(l.positions().len(), 43);
        let c0 = l.position("c0").unwrap();
        let c1 = l.position("c1").unwrap();
        // w0 belongs to c0, w1 to c1: each nearer its own.
        let w0 = l.position("w0").unwrap();
        assert!(dist(w0, c0) < dist(w0, c1));
        let w1 = l.position("w1").unwrap();
        assert!(dist(w1, c1) < dist(w1, c0));
    }

    #[test]
    fn the_simulation_settles_and_keeps_clusters_apart() {
        let mut l = Layout::new();
        l.sync(&star(3, 90));
        let mut n = 0;
        while l.tick() {
            n += 1;
        }
        assert!(l.settled());
        assert!(n < MAX_TICKS as usize, "settled in {n} ticks");
        // Clusters stay apart: every worker is nearer its own coordinator than any other.
        let cs: Vec<_> = (0..3)
            .map(|c| l.position(&format!("c{c}")).unwrap())
            .collect();
        for w in 0..90 {
            let p = l.position(&format!("w{w}")).unwrap();
            let own = dist(p, cs[w % 3]);
            for (c, other) in cs.iter().enumerate() {
                assert!(c == w % 3 || own < dist(p, *other), "w{w} is nearer c{c}");
            }
        }
        // No two nodes on top of each other.
        let all: Vec<_> = l.positions().into_values().collect();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert!(dist(*a, *b) > 0.5);
            }
        }
    }

    #[test]
    fn a_change_keeps_the_places_of_the_nodes_that_stay() {
        let mut l = Layout::new();
        let mut t = star(1, 10);
        l.sync(&t);
        while l.tick() {}
        let before = l.position("w3").unwrap();
        t.nodes.retain(|n| n.id != "w9");
        t.edges.retain(|e| e.from != "w9");
        t.nodes.push(node("w10", NodeRole::Worker));
        t.edges.push(TopologyEdge {
            from: "w10".into(),
            to: "c0".into(),
            kind: LinkKind::Registered,
        });
        l.sync(&t);
        assert_eq!(l.position("w3"), Some(before));
        assert!(l.position("w9").is_none());
        assert!(l.position("w10").is_some());
        assert!(!l.settled(), "a change wakes the simulation");
        let (_, _, w, h) = l.bounds();
        assert!(w >= 100.0 && h >= 100.0);
    }
}
