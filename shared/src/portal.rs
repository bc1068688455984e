//! What the admin portal and the coordinator say to each other beyond the admin API: login, the live feed,
//! coordinators, installers.
//!
//! The live feed (`GET /api/admin/live`, a WebSocket) sends one snapshot, then deltas. The coordinator keeps the last topology it sent on each connection and sends only what changed
//! ([`TopologyDelta::between`]); the portal applies it ([`TopologyDelta::apply`]). Applying the delta between `a`
//! and `b` to `a` gives `b` up to the order of nodes and links.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::api::Stats;
use crate::dht::{DhtTopology, LinkKind, TopologyEdge, TopologyNode};
use crate::edge::CoordinatorInfo;

/// `POST /api/admin/login`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoginRequest {
    /// The admin token.
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub token: String,
}

/// `GET /api/admin/session` and the answer to a login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Session {
    /// Always true in a 200 answer.
    pub authenticated: bool,
    /// The coordinator's name.
    pub coordinator: String,
    /// Seconds the session has left.
    pub expires_in_secs: u64,
}

/// `GET /api/admin/coordinators`: the coordinators this one knows of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CoordinatorsView {
    /// Where the list comes from: "edge" (its admin API), "dht" (coordinator records) or "local" (this one only).
    pub source: String,
    /// The coordinators.
    pub coordinators: Vec<CoordinatorInfo>,
    /// Why a better source was not used, if one was configured and failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// An installer in the coordinator's releases directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Release {
    /// File name.
    pub file: String,
    /// Version read from the name (`commons_0.1.0_amd64.deb` → `0.1.0`), "" when none.
    pub version: String,
    /// What it installs: "desktop (Debian/Ubuntu)", "headless agent (Linux)", ...
    pub kind: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// SHA-256, hex.
    pub sha256: String,
    /// Where to download it (relative to the coordinator).
    pub url: String,
}

/// `GET /api/releases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleaseList {
    /// Installers, newest version first.
    pub releases: Vec<Release>,
    /// A one-line install of the headless agent for servers, when the coordinator hosts one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headless_install: Option<String>,
}

/// The version in an installer's file name: the first `_` or `-` separated part that starts with a digit and has a
/// dot (`commons_0.1.0_amd64.deb`, `commons-agent-0.2.1-x86_64-linux.tar.gz`).
pub fn release_version(file: &str) -> &str {
    file.split(['_', '-'])
        .find(|p| p.starts_with(|c: char| c.is_ascii_digit()) && p.contains('.'))
        .map(|p| {
            p.trim_end_matches(".deb")
                .trim_end_matches(".tar.gz")
                .trim_end_matches(".AppImage")
                .trim_end_matches(".msi")
                .trim_end_matches(".dmg")
        })
        .unwrap_or("")
}

/// What an installer is, from its name.
pub fn release_kind(file: &str) -> &'static str {
    let agent = file.contains("agent");
    match (agent, file.rsplit('.').next().unwrap_or("")) {
        (true, "deb") => "headless agent (Debian/Ubuntu package)",
        (true, _) => "headless agent (archive)",
        (false, "deb") => "desktop app (Debian/Ubuntu)",
        (false, "AppImage") => "desktop app (Linux AppImage)",
        (false, "msi" | "exe") => "desktop app (Windows)",
        (false, "dmg") => "desktop app (macOS)",
        _ => "other",
    }
}

/// What changed in a topology.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TopologyDelta {
    /// Nodes that are new or changed (whole nodes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upsert: Vec<TopologyNode>,
    /// Ids of nodes that are gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// New links.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_edges: Vec<TopologyEdge>,
    /// Links that are gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_edges: Vec<TopologyEdge>,
}

fn edge_key(e: &TopologyEdge) -> (&str, &str, LinkKind) {
    (&e.from, &e.to, e.kind)
}

impl TopologyDelta {
    /// What turns `old` into `new`.
    pub fn between(old: &DhtTopology, new: &DhtTopology) -> Self {
        let before: HashMap<&str, &TopologyNode> =
            old.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
        let after: HashSet<&str> = new.nodes.iter().map(|n| n.id.as_str()).collect();
        let upsert = new
            .nodes
            .iter()
            .filter(|n| before.get(n.id.as_str()) != Some(n))
            .cloned()
            .collect();
        let remove = old
            .nodes
            .iter()
            .filter(|n| !after.contains(n.id.as_str()))
            .map(|n| n.id.clone())
            .collect();
        let old_edges: HashSet<_> = old.edges.iter().map(edge_key).collect();
        let new_edges: HashSet<_> = new.edges.iter().map(edge_key).collect();
        let add_edges = new
            .edges
            .iter()
            .filter(|e| !old_edges.contains(&edge_key(e)))
            .cloned()
            .collect();
        let remove_edges = old
            .edges
            .iter()
            .filter(|e| !new_edges.contains(&edge_key(e)))
            .cloned()
            .collect();
        Self {
            upsert,
            remove,
            add_edges,
            remove_edges,
        }
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty()
            && self.remove.is_empty()
            && self.add_edges.is_empty()
            && self.remove_edges.is_empty()
    }

    /// Applies the change: changed nodes are replaced where they stand, new ones appended; links to removed nodes go
    /// with them.
    pub fn apply(&self, topology: &mut DhtTopology) {
        let gone: HashSet<&str> = self.remove.iter().map(String::as_str).collect();
        topology.nodes.retain(|n| !gone.contains(n.id.as_str()));
        let mut index: HashMap<String, usize> = topology
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        for node in &self.upsert {
            match index.get(&node.id) {
                Some(&i) => topology.nodes[i] = node.clone(),
                None => {
                    index.insert(node.id.clone(), topology.nodes.len());
                    topology.nodes.push(node.clone());
                }
            }
        }
        let dropped: HashSet<_> = self.remove_edges.iter().map(edge_key).collect();
        topology.edges.retain(|e| {
            !dropped.contains(&edge_key(e))
                && !gone.contains(e.from.as_str())
                && !gone.contains(e.to.as_str())
        });
        let present: HashSet<(String, String, LinkKind)> = topology
            .edges
            .iter()
            .map(|e| (e.from.clone(), e.to.clone(), e.kind))
            .collect();
        for e in &self.add_edges {
            if !present.contains(&(e.from.clone(), e.to.clone(), e.kind)) {
                topology.edges.push(e.clone());
            }
        }
        topology.node_count = topology.nodes.len();
    }
}

/// A message on the live feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveMessage {
    /// The whole picture, sent once when the feed opens.
    Snapshot {
        /// The topology (`GET /api/dht/topology`'s shape).
        topology: DhtTopology,
        /// The totals (`GET /api/admin/stats`).
        stats: Stats,
    },
    /// What changed since the last message; sent only when something did.
    Delta {
        /// Topology changes.
        #[serde(flatten)]
        topology: TopologyDelta,
        /// New totals, when they changed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stats: Option<Stats>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::WorkerStatus;
    use crate::dht::NodeRole;

    fn node(id: &str, status: WorkerStatus) -> TopologyNode {
        TopologyNode {
            id: id.into(),
            role: NodeRole::Worker,
            services: vec!["ocr".into()],
            worker_id: Some(id.into()),
            tier: Some(2),
            status: Some(status),
            location: None,
            capacity: Some(4.0),
            requests: None,
            load: Some(0.1),
        }
    }

    fn edge(from: &str, to: &str) -> TopologyEdge {
        TopologyEdge {
            from: from.into(),
            to: to.into(),
            kind: LinkKind::Registered,
        }
    }

    fn topo(nodes: Vec<TopologyNode>, edges: Vec<TopologyEdge>) -> DhtTopology {
        DhtTopology {
            node_count: nodes.len(),
            nodes,
            edges,
            dht_enabled: false,
        }
    }

    fn sorted(mut t: DhtTopology) -> DhtTopology {
        t.nodes.sort_by(|a, b| a.id.cmp(&b.id));
        t.edges
            .sort_by(|a, b| (&a.from, &a.to, &a.kind).cmp(&(&b.from, &b.to, &b.kind)));
        t
    }

    #[test]
    fn applying_the_delta_gives_the_new_topology() {
        let old = topo(
            vec![
                node("c", WorkerStatus::Healthy),
                node("a", WorkerStatus::Healthy),
                node("b", WorkerStatus::Healthy),
            ],
            vec![edge("a", "c"), edge("b", "c")],
        );
        let new = topo(
            vec![
                node("c", WorkerStatus::Healthy),
                node("a", WorkerStatus::Stale),
                node("d", WorkerStatus::Healthy),
            ],
            vec![edge("a", "c"), edge("d", "c")],
        );
        let delta = TopologyDelta::between(&old, &new);
        assert_eq!(
            delta
                .upsert
                .iter()
                .map(|n| n.id.as_str())
                .collect::<Vec<_>>(),
            ["a", "d"]
        );
        assert_eq!(delta.remove, ["b"]);
        assert_eq!(delta.add_edges, [edge("d", "c")]);
        assert_eq!(delta.remove_edges, [edge("b", "c")]);
        let mut applied = old.clone();
        delta.apply(&mut applied);
        assert_eq!(sorted(applied), sorted(new.clone()));
        assert!(TopologyDelta::between(&new, &new).is_empty());
    }

    #[test]
    fn removing_a_node_drops_its_links_even_when_not_listed() {
        let mut t = topo(
            vec![
                node("c", WorkerStatus::Healthy),
                node("a", WorkerStatus::Healthy),
            ],
            vec![edge("a", "c")],
        );
        TopologyDelta {
            remove: vec!["a".into()],
            ..Default::default()
        }
        .apply(&mut t);
        assert!(t.edges.is_empty());
        assert_eq!(t.node_count, 1);
    }

    #[test]
    fn installer_names_give_version_and_kind() {
        assert_eq!(release_version("commons_0.1.0_amd64.deb"), "0.1.0");
        assert_eq!(
            release_version("commons-agent-0.2.1-x86_64-linux.tar.gz"),
            "0.2.1"
        );
        assert_eq!(release_version("commons-agent_1.10.3_amd64.deb"), "1.10.3");
        assert_eq!(release_version("notes.txt"), "");
        assert_eq!(
            release_kind("commons_0.1.0_amd64.deb"),
            "desktop app (Debian/Ubuntu)"
        );
        assert_eq!(
            release_kind("commons-agent_0.1.0_amd64.deb"),
            "headless agent (Debian/Ubuntu package)"
        );
        assert_eq!(release_kind("readme.txt"), "other");
    }

    #[test]
    fn messages_are_tagged_and_a_delta_is_flat() {
        let m = LiveMessage::Delta {
            topology: TopologyDelta {
                remove: vec!["x".into()],
                ..Default::default()
            },
            stats: None,
        };
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json, serde_json::json!({"type": "delta", "remove": ["x"]}));
        assert_eq!(serde_json::from_value::<LiveMessage>(json).unwrap(), m);
    }
}
