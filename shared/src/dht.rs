//! The DHT's records, keys and views: what workers and coordinators publish about themselves, under which
//! keys, and the topology and statistics a coordinator shows.
//!
//! The records travel inside signed envelopes (see the `commons-dht` crate); here they are plain data, so the
//! portal reads the same types.
//!
//! Keys:
//! - `worker/<PeerId>`: a [`WorkerRecord`], signed by that peer.
//! - `coordinator/<PeerId>`: a [`CoordinatorRecord`] (its URL and region), signed by that peer.
//! - `service/<name>/<shard>` (provider records): who offers a service. A provider announces itself under one
//!   of [`SERVICE_SHARDS`] keys chosen by its peer id, so no key holds more than a slice of a service's
//!   providers (a store keeps a bounded list per key), and a lookup asks every shard.
//! - `coordinator/<region>` and `coordinator/*` (provider records): who coordinates a region, and anywhere.

use serde::{Deserialize, Serialize};

/// Provider keys per service. A lookup asks all of them at once.
pub const SERVICE_SHARDS: u32 = 16;

/// The region key that every coordinator also provides, for agents whose region has none.
pub const ANY_REGION: &str = "*";

/// Most services a worker record may list.
pub const MAX_RECORD_SERVICES: usize = 32;

/// Longest a record may claim to live, in milliseconds: a record cannot outlive a dead worker by much.
pub const MAX_RECORD_LIFETIME_MS: u64 = 60 * 60 * 1000;

/// How far apart two nodes' clocks may be while they still believe each other's records, in milliseconds. A
/// record's signed expiry is read with this much slack; how long it is kept is decided by each storer's own
/// monotonic clock (twice the refresh period from when it arrived), so liveness does not depend on clocks agreeing.
pub const MAX_CLOCK_SKEW_MS: u64 = 15 * 60 * 1000;

/// What a worker publishes about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerRecord {
    /// The worker's coordinator-assigned id, when it has one.
    #[serde(default)]
    pub worker_id: Option<String>,
    /// Services it runs now.
    #[serde(default)]
    pub services: Vec<String>,
    /// Tier 1–3.
    #[serde(default)]
    pub tier: Option<u8>,
    /// Where its services are reached: `{endpoint}/api/service/{name}/...` (tunnel URL or address).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Region label.
    #[serde(default)]
    pub region: Option<String>,
    /// Load in [0, 1].
    #[serde(default)]
    pub load: f64,
    /// CPU cores.
    #[serde(default)]
    pub cpu_cores: u32,
    /// NVIDIA GPUs.
    #[serde(default)]
    pub gpus: u32,
    /// Their memory together, bytes.
    #[serde(default)]
    pub vram_bytes: u64,
    /// The coordinator it heartbeats.
    #[serde(default)]
    pub coordinator_url: Option<String>,
}

/// What a coordinator publishes about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CoordinatorRecord {
    /// Its public URL (where workers register and heartbeat).
    pub url: String,
    /// Region label ("" for none).
    #[serde(default)]
    pub region: String,
    /// Live workers.
    #[serde(default)]
    pub workers: u32,
    /// Load in [0, 1].
    #[serde(default)]
    pub load: f64,
}

/// The body of a record, by kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RecordBody {
    /// A worker's.
    Worker(WorkerRecord),
    /// A coordinator's.
    Coordinator(CoordinatorRecord),
}

/// What is signed: a body, a sequence number (newer wins, older is a replay) and an expiry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordPayload {
    /// The signer's peer id (base58), as in the key.
    pub peer_id: String,
    /// Increases with every publication; storers and readers refuse a lower one than they hold.
    pub seq: u64,
    /// Unix milliseconds after which the record is void.
    pub expires_at_ms: u64,
    /// What it says.
    #[serde(flatten)]
    pub body: RecordBody,
}

/// `worker/<peer>`.
pub fn worker_key(peer: &str) -> String {
    format!("worker/{peer}")
}

/// `coordinator/<peer>` (a record; `coordinator/<region>` names a provider key, a separate space).
pub fn coordinator_key(peer: &str) -> String {
    format!("coordinator/{peer}")
}

/// `coordinator/<region>`: the provider key of a region's coordinators.
pub fn region_key(region: &str) -> String {
    format!("coordinator/{}", region_label(region))
}

fn region_label(region: &str) -> &str {
    if region.is_empty() { "-" } else { region }
}

/// `service/<name>/<shard>`.
pub fn service_key(service: &str, shard: u32) -> String {
    format!("service/{service}/{shard}")
}

/// The shard a provider announces itself under: a stable hash (FNV-1a) of its peer id.
pub fn shard_of(peer: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in peer.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % SERVICE_SHARDS
}

/// Which kind of key, and the peer that must have signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind<'a> {
    /// `worker/<peer>`.
    Worker {
        /// Signer.
        peer: &'a str,
    },
    /// `coordinator/<peer>`.
    Coordinator {
        /// Signer.
        peer: &'a str,
    },
}

/// Parses a record key; `None` for anything that is not one of ours.
pub fn parse_record_key(key: &str) -> Option<KeyKind<'_>> {
    let mut parts = key.split('/');
    let kind = parts.next()?;
    let out = match (kind, parts.next(), parts.next()) {
        ("worker", Some(peer), None) if !peer.is_empty() => KeyKind::Worker { peer },
        ("coordinator", Some(peer), None) if !peer.is_empty() => KeyKind::Coordinator { peer },
        _ => return None,
    };
    Some(out)
}

/// Whether `key` is a provider key a provider may announce: its service shard, or a region.
pub fn provider_key_allowed(key: &str, provider: &str) -> bool {
    let mut parts = key.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("service"), Some(name), Some(shard), None) => {
            !name.is_empty()
                && name.len() <= 64
                && shard.parse::<u32>().ok() == Some(shard_of(provider))
        }
        (Some("coordinator"), Some(region), None, None) => !region.is_empty() && region.len() <= 64,
        _ => false,
    }
}

/// What a node in the topology is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// The edge this coordinator is federated with.
    Edge,
    /// A coordinator.
    Coordinator,
    /// A volunteer's agent.
    Worker,
    /// A DHT node this coordinator knows nothing more of.
    Peer,
}

impl NodeRole {
    /// All roles.
    pub const ALL: [NodeRole; 4] = [Self::Edge, Self::Coordinator, Self::Worker, Self::Peer];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Edge => "edge",
            Self::Coordinator => "coordinator",
            Self::Worker => "worker",
            Self::Peer => "peer",
        }
    }
}

/// What a link in the topology is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum LinkKind {
    /// A peer in this node's DHT routing table.
    DhtLink,
    /// A worker to the coordinator it is registered at.
    Registered,
    /// A coordinator to the edge it is federated with.
    Federated,
    /// A circuit through this coordinator's relay, from the node that asked to the node behind a NAT it reached:
    /// slower than a direct link, and the portal draws it apart.
    Relayed,
}

impl LinkKind {
    /// All kinds.
    pub const ALL: [LinkKind; 4] = [
        Self::DhtLink,
        Self::Registered,
        Self::Federated,
        Self::Relayed,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DhtLink => "dht_link",
            Self::Registered => "registered",
            Self::Federated => "federated",
            Self::Relayed => "relayed",
        }
    }
}

/// Whether a DHT node can be reached from outside, as AutoNAT's probes found: other nodes were asked to dial it
/// back at the addresses it was seen at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NatStatus {
    /// Not probed yet, or no peer could probe it.
    #[default]
    Unknown,
    /// Dialled back: it can serve the DHT and be reached directly.
    Public,
    /// Not dialled back: behind a NAT or a firewall; others reach it through a relay (or a hole punch).
    Private,
}

impl NatStatus {
    /// All cases.
    pub const ALL: [NatStatus; 3] = [Self::Unknown, Self::Public, Self::Private];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Public => "public",
            Self::Private => "private",
        }
    }
}

/// A node in `GET /api/dht/topology` (seed shape: `id`, `type`, `services`, plus more).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TopologyNode {
    /// Peer id (or worker id for a worker without a DHT node).
    pub id: String,
    /// What it is.
    #[serde(rename = "type")]
    pub role: NodeRole,
    /// Services (workers).
    #[serde(default)]
    pub services: Vec<String>,
    /// The worker id bound to this peer at registration.
    #[serde(default)]
    pub worker_id: Option<String>,
    /// Tier (workers).
    #[serde(default)]
    pub tier: Option<u8>,
    /// Status (workers registered here; a coordinator says healthy).
    #[serde(default)]
    pub status: Option<crate::api::WorkerStatus>,
    /// Region or location.
    #[serde(default)]
    pub location: Option<String>,
    /// Relative capacity (workers: CPU cores + 8 per GPU; coordinators: their workers), for drawing sizes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<f64>,
    /// Service requests routed through this node since its coordinator started (traffic on its link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// Load in [0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<f64>,
}

/// A link in `GET /api/dht/topology`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TopologyEdge {
    /// One end (node id).
    pub from: String,
    /// The other.
    pub to: String,
    /// What links them.
    #[serde(rename = "type")]
    pub kind: LinkKind,
}

/// `GET /api/dht/topology` (seed shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DhtTopology {
    /// Nodes.
    pub nodes: Vec<TopologyNode>,
    /// Links.
    pub edges: Vec<TopologyEdge>,
    /// Whether this coordinator runs a DHT node.
    pub dht_enabled: bool,
    /// `nodes.len()`.
    pub node_count: usize,
}

/// `GET /api/dht/stats`: one node's view.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DhtStats {
    /// Whether a DHT node runs.
    pub enabled: bool,
    /// Its peer id.
    pub peer_id: Option<String>,
    /// Its addresses, with `/p2p/<peer id>`.
    pub addresses: Vec<String>,
    /// Peers in its routing table.
    pub routing_table: usize,
    /// Peers connected now.
    pub connected: usize,
    /// Records it stores for others and itself.
    pub stored_records: usize,
    /// Provider keys it announces itself under.
    pub provided_keys: usize,
    /// Lookups started, and of those that failed or timed out.
    pub lookups: u64,
    /// Lookups without an answer.
    pub lookup_failures: u64,
    /// Records and provider announcements refused (bad signature, wrong signer, replay, expired, bad key).
    pub rejected: u64,
    /// Publications of its own record or provider keys that reached no peer (each is tried again within
    /// seconds); a count that keeps growing means the node's lookups time out (a busy or cut-off node).
    #[serde(default)]
    pub publish_failures: u64,
    /// Milliseconds the last bootstrap took.
    pub bootstrap_ms: Option<u64>,
    /// Whether others can reach it (AutoNAT).
    #[serde(default)]
    pub nat: NatStatus,
    /// The relay (a coordinator's peer id) it holds a reservation on, when it is behind a NAT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relayed_by: Option<String>,
    /// Relayed connections upgraded to direct ones by hole punching (DCUtR), and attempts that failed.
    #[serde(default)]
    pub hole_punched: u64,
    /// Hole punches that failed (the connection stays relayed).
    #[serde(default)]
    pub hole_punch_failures: u64,
    /// Circuits it relayed for others (a coordinator).
    #[serde(default)]
    pub relayed_circuits: u64,
    /// Nodes behind NATs holding a reservation on this node's relay now.
    #[serde(default)]
    pub reservations: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_wire_names_are_pinned() {
        for (role, text) in NodeRole::ALL
            .into_iter()
            .zip(["edge", "coordinator", "worker", "peer"])
        {
            assert_eq!(role.as_str(), text);
            assert_eq!(serde_json::to_value(role).unwrap(), serde_json::json!(text));
            assert_eq!(
                serde_json::from_value::<NodeRole>(serde_json::json!(text)).unwrap(),
                role
            );
        }
        for (kind, text) in
            LinkKind::ALL
                .into_iter()
                .zip(["dht_link", "registered", "federated", "relayed"])
        {
            assert_eq!(kind.as_str(), text);
            assert_eq!(serde_json::to_value(kind).unwrap(), serde_json::json!(text));
            assert_eq!(
                serde_json::from_value::<LinkKind>(serde_json::json!(text)).unwrap(),
                kind
            );
        }
    }

    #[test]
    fn nat_status_wire_names_are_pinned() {
        for (status, text) in NatStatus::ALL
            .into_iter()
            .zip(["unknown", "public", "private"])
        {
            assert_eq!(status.as_str(), text);
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::json!(text)
            );
            assert_eq!(
                serde_json::from_value::<NatStatus>(serde_json::json!(text)).unwrap(),
                status
            );
        }
    }

    #[test]
    fn keys_parse_back() {
        assert_eq!(
            parse_record_key(&worker_key("12D3Koo")),
            Some(KeyKind::Worker { peer: "12D3Koo" })
        );
        assert_eq!(
            parse_record_key(&coordinator_key("P")),
            Some(KeyKind::Coordinator { peer: "P" })
        );
        assert_eq!(parse_record_key("worker/a/b"), None);
        assert_eq!(parse_record_key("service/ocr/1"), None);
        assert_eq!(parse_record_key("coordinator/eu/P"), None);
        assert_eq!(parse_record_key("worker/"), None);
    }

    #[test]
    fn providers_announce_only_their_own_shard() {
        let p = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo";
        let own = shard_of(p);
        assert!(provider_key_allowed(&service_key("ocr", own), p));
        assert!(!provider_key_allowed(
            &service_key("ocr", (own + 1) % SERVICE_SHARDS),
            p
        ));
        assert!(provider_key_allowed(&region_key("eu-west"), p));
        assert!(provider_key_allowed(&region_key(ANY_REGION), p));
        assert!(!provider_key_allowed("worker/x", p));
        assert!(!provider_key_allowed("service//0", p));
    }

    #[test]
    fn shards_spread_peers() {
        let mut counts = [0u32; SERVICE_SHARDS as usize];
        for i in 0..1600 {
            counts[shard_of(&format!("12D3KooW{i:040}")) as usize] += 1;
        }
        // 100 per shard on average; none starved, none holding a quarter.
        assert!(counts.iter().all(|&c| (40..400).contains(&c)), "{counts:?}");
    }

    #[test]
    fn payload_round_trips_with_its_kind() {
        let p = RecordPayload {
            peer_id: "P".into(),
            seq: 7,
            expires_at_ms: 99,
            body: RecordBody::Coordinator(CoordinatorRecord {
                url: "http://c".into(),
                region: "eu".into(),
                workers: 3,
                load: 0.5,
            }),
        };
        let s = serde_json::to_string(&p).unwrap();
        assert!(s.contains(r#""kind":"coordinator""#), "{s}");
        assert_eq!(serde_json::from_str::<RecordPayload>(&s).unwrap(), p);
    }
}
