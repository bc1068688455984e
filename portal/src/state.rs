//! The portal's state that the live feed feeds: pure [`Reducible`] logic, tested natively.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use commons_shared::api::Stats;
use commons_shared::dht::DhtTopology;
use commons_shared::portal::LiveMessage;
use yew::Reducible;

/// Load samples kept per worker (the detail page's chart).
pub const LOAD_SAMPLES: usize = 120;

/// The live feed's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feed {
    /// Not open yet (or opening).
    Connecting,
    /// Messages are arriving.
    Live,
    /// Closed; the text says why. The app reopens it.
    Lost(String),
}

/// What the live feed has told the portal.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveState {
    /// The topology, as of the last message.
    pub topology: DhtTopology,
    /// The totals, once known.
    pub stats: Option<Stats>,
    /// The connection.
    pub feed: Feed,
    /// Bumped whenever the topology's nodes or links change (the graph re-lays out then).
    pub version: u64,
    /// Recent (ms since the epoch, load) samples per worker id, seen on the feed since the page opened.
    pub loads: HashMap<String, VecDeque<(f64, f64)>>,
}

impl Default for LiveState {
    fn default() -> Self {
        Self {
            topology: DhtTopology {
                nodes: Vec::new(),
                edges: Vec::new(),
                dht_enabled: false,
                node_count: 0,
            },
            stats: None,
            feed: Feed::Connecting,
            version: 0,
            loads: HashMap::new(),
        }
    }
}

/// What can happen to [`LiveState`].
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A message from the feed, received at this time (ms since the epoch).
    Message(Box<LiveMessage>, f64),
    /// The connection changed.
    Feed(Feed),
    /// Logged out: forget everything.
    Reset,
}

impl LiveState {
    fn sample_loads(&mut self, at_ms: f64) {
        for n in &self.topology.nodes {
            let (Some(id), Some(load)) = (&n.worker_id, n.load) else {
                continue;
            };
            let q = self.loads.entry(id.clone()).or_default();
            let n = q.len();
            // A flat run keeps its first and last samples only: the last one moves forward.
            if n >= 2 && q[n - 1].1 == load && q[n - 2].1 == load {
                q[n - 1].0 = at_ms;
                continue;
            }
            q.push_back((at_ms, load));
            while q.len() > LOAD_SAMPLES {
                q.pop_front();
            }
        }
        let live: std::collections::HashSet<&str> = self
            .topology
            .nodes
            .iter()
            .filter_map(|n| n.worker_id.as_deref())
            .collect();
        self.loads.retain(|id, _| live.contains(id.as_str()));
    }
}

impl Reducible for LiveState {
    type Action = Action;

    fn reduce(self: Rc<Self>, action: Action) -> Rc<Self> {
        let mut next = (*self).clone();
        match action {
            Action::Message(m, at) => match *m {
                LiveMessage::Snapshot { topology, stats } => {
                    next.topology = topology;
                    next.stats = Some(stats);
                    next.feed = Feed::Live;
                    next.version += 1;
                    next.sample_loads(at);
                }
                LiveMessage::Delta { topology, stats } => {
                    let structural = !topology.add_edges.is_empty()
                        || !topology.remove_edges.is_empty()
                        || !topology.remove.is_empty()
                        || topology
                            .upsert
                            .iter()
                            .any(|n| !next.topology.nodes.iter().any(|m| m.id == n.id));
                    topology.apply(&mut next.topology);
                    if let Some(s) = stats {
                        next.stats = Some(s);
                    }
                    next.feed = Feed::Live;
                    if structural {
                        next.version += 1;
                    }
                    next.sample_loads(at);
                }
            },
            Action::Feed(f) => next.feed = f,
            Action::Reset => next = Self::default(),
        }
        Rc::new(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commons_shared::api::WorkerStatus;
    use commons_shared::dht::{LinkKind, NodeRole, TopologyEdge, TopologyNode};
    use commons_shared::portal::TopologyDelta;

    fn worker(id: &str, load: f64) -> TopologyNode {
        TopologyNode {
            id: format!("p-{id}"),
            role: NodeRole::Worker,
            services: vec!["ocr".into()],
            worker_id: Some(id.into()),
            tier: Some(2),
            status: Some(WorkerStatus::Healthy),
            location: None,
            capacity: Some(4.0),
            requests: Some(0),
            load: Some(load),
        }
    }

    fn snapshot(nodes: Vec<TopologyNode>) -> LiveMessage {
        LiveMessage::Snapshot {
            topology: DhtTopology {
                node_count: nodes.len(),
                nodes,
                edges: Vec::new(),
                dht_enabled: false,
            },
            stats: Stats {
                total_workers: 1,
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_snapshot_then_deltas_build_the_topology() {
        let s = Rc::new(LiveState::default());
        assert_eq!(s.feed, Feed::Connecting);
        let s = s.reduce(Action::Message(
            Box::new(snapshot(vec![worker("a", 0.1)])),
            1.0,
        ));
        assert_eq!(s.feed, Feed::Live);
        assert_eq!(s.version, 1);
        assert_eq!(s.stats.as_ref().unwrap().total_workers, 1);
        // A new worker is structural: the version moves.
        let add = LiveMessage::Delta {
            topology: TopologyDelta {
                upsert: vec![worker("b", 0.0)],
                add_edges: vec![TopologyEdge {
                    from: "p-b".into(),
                    to: "c".into(),
                    kind: LinkKind::Registered,
                }],
                ..Default::default()
            },
            stats: None,
        };
        let s = s.reduce(Action::Message(Box::new(add), 2.0));
        assert_eq!(s.topology.node_count, 2);
        assert_eq!(s.version, 2);
        // A load change is not: the graph keeps its layout.
        let load = LiveMessage::Delta {
            topology: TopologyDelta {
                upsert: vec![worker("a", 0.9)],
                ..Default::default()
            },
            stats: None,
        };
        let s = s.reduce(Action::Message(Box::new(load), 3.0));
        assert_eq!(s.version, 2);
        assert_eq!(s.topology.nodes[0].load, Some(0.9));
        assert_eq!(
            s.loads["a"].iter().map(|(_, l)| *l).collect::<Vec<_>>(),
            [0.1, 0.1, 0.9],
            "a flat run keeps its first and last samples"
        );
        // A removal forgets the worker's samples.
        let gone = LiveMessage::Delta {
            topology: TopologyDelta {
                remove: vec!["p-a".into()],
                ..Default::default()
            },
            stats: None,
        };
        let s = s.reduce(Action::Message(Box::new(gone), 4.0));
        assert!(!s.loads.contains_key("a"));
        assert_eq!(s.version, 3);
        let s = s.reduce(Action::Feed(Feed::Lost("closed".into())));
        assert_eq!(s.feed, Feed::Lost("closed".into()));
        assert_eq!(s.reduce(Action::Reset).topology.node_count, 0);
    }

    #[test]
    fn load_samples_are_bounded() {
        let mut s = Rc::new(LiveState::default());
        for i in 0..(LOAD_SAMPLES + 30) {
            s = s.reduce(Action::Message(
                Box::new(snapshot(vec![worker("a", i as f64 / 1000.0)])),
                i as f64,
            ));
        }
        assert_eq!(s.loads["a"].len(), LOAD_SAMPLES);
        assert_eq!(s.loads["a"].back().unwrap().0, (LOAD_SAMPLES + 29) as f64);
    }
}
