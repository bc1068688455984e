//! The edge router's API: coordinators registering and heartbeating (the federation), DHT bootstrap, and the
//! edge's admin views.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a coordinator is, in the seed shape (`capabilities: {location}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EdgeCapabilities {
    /// A location label, e.g. "London".
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub location: Option<String>,
}

/// The DHT addresses in the OpenAPI document, bounded as the edge's check bounds them.
#[cfg(feature = "openapi")]
fn dht_addrs() -> utoipa::openapi::schema::Array {
    use crate::validate::{MAX_LIST_LEN, MAX_STRING_LEN, string_list};
    string_list(
        MAX_LIST_LEN,
        MAX_STRING_LEN,
        None,
        "Its DHT node's addresses (multiaddrs).",
    )
}

/// `POST /api/edge/register`: the seed shape (`worker_id`, `tunnel_url` or `url`, `capabilities{location}`)
/// plus region, DHT addresses, capacity and the first figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EdgeRegisterRequest {
    /// The coordinator's stable id (the seeds call it `worker_id`); the edge picks one when absent.
    #[serde(default, alias = "worker_id")]
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]+$")
    )]
    pub id: Option<String>,
    /// The coordinator's public URL.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub url: Option<String>,
    /// The seed name for the URL.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub tunnel_url: Option<String>,
    /// Seed-shape location.
    #[serde(default)]
    pub capabilities: Option<EdgeCapabilities>,
    /// Region label, e.g. "eu-west".
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub region: Option<String>,
    /// The coordinator's DHT addresses (multiaddrs).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = dht_addrs))]
    pub dht_addrs: Vec<String>,
    /// How many workers it is willing to hold.
    #[serde(default)]
    pub capacity: Option<u32>,
    /// Figures as in a heartbeat.
    #[serde(default)]
    pub figures: Option<CoordinatorFigures>,
}

/// What a coordinator reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CoordinatorFigures {
    /// Load in [0, 1].
    #[serde(default)]
    pub load: f64,
    /// Live workers.
    #[serde(default)]
    pub workers: u32,
    /// Requests waiting on workers now.
    #[serde(default)]
    pub queue_depth: u32,
    /// Average latency of its workers, ms.
    #[serde(default)]
    pub latency_ms: f64,
    /// Healthy workers per service.
    #[serde(default)]
    pub services: BTreeMap<String, u32>,
}

/// `POST /api/edge/heartbeat`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EdgeHeartbeat {
    /// The coordinator's id.
    #[cfg_attr(feature = "openapi", schema(max_length = 64))]
    pub id: String,
    /// Its figures.
    #[serde(flatten)]
    pub figures: CoordinatorFigures,
}

/// The answer to a registration or heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EdgeAck {
    /// "ok".
    pub status: String,
    /// The coordinator's id.
    pub id: String,
    /// Seconds between heartbeats the edge expects.
    pub heartbeat_interval: u64,
    /// Seconds of silence after which the edge forgets a coordinator.
    pub ttl: u64,
    /// The version of the federation's consumer keys (`GET /api/edge/keys`): a coordinator whose copy is of
    /// another version fetches them.
    #[serde(default)]
    pub keys_version: u64,
}

/// One DHT bootstrap seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Seed {
    /// The node's id.
    pub node_id: String,
    /// Its multiaddrs.
    pub multiaddrs: Vec<String>,
    /// Its location.
    pub location: Option<String>,
}

/// `GET /api/dht/bootstrap`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Bootstrap {
    /// Seeds.
    pub seeds: Vec<Seed>,
    /// Seconds the list may be cached.
    pub ttl: u64,
    /// Number of seeds.
    pub count: usize,
}

/// `GET /health` on the edge (seed shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EdgeHealth {
    /// "healthy" with at least one live coordinator, else "degraded".
    pub status: String,
    /// Live coordinators.
    pub coordinators: usize,
    /// A sentence.
    pub message: String,
}

/// One coordinator in the edge's admin views.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CoordinatorInfo {
    /// Id.
    pub id: String,
    /// Public URL.
    pub url: String,
    /// Region.
    pub region: Option<String>,
    /// Location.
    pub location: Option<String>,
    /// DHT addresses.
    pub dht_addrs: Vec<String>,
    /// Capacity.
    pub capacity: Option<u32>,
    /// Latest figures.
    pub figures: CoordinatorFigures,
    /// Not avoided after a failed forward.
    pub healthy: bool,
    /// Requests forwarded to it.
    pub forwarded: u64,
    /// Of which failed.
    pub errors: u64,
    /// Last heartbeat (RFC 3339).
    pub last_seen: String,
    /// Registration (RFC 3339).
    pub registered_at: String,
}

/// `GET /api/admin/coordinators`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CoordinatorList {
    /// Coordinators.
    pub coordinators: Vec<CoordinatorInfo>,
    /// How many.
    pub total: usize,
}

/// `GET /api/admin/topology` on the edge: the global view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EdgeTopology {
    /// Coordinators with their worker counts and load.
    pub coordinators: Vec<CoordinatorInfo>,
    /// Workers over all coordinators.
    pub total_workers: u64,
    /// Healthy workers per service over all coordinators.
    pub services: BTreeMap<String, u64>,
}

/// Kinds of edge request, counted per day.
pub const REQUEST_KINDS: [&str; 6] = [
    "bootstrap",
    "registration",
    "service",
    "federation",
    "admin",
    "other",
];

/// One day of edge requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DayCounts {
    /// The day, `YYYY-MM-DD` (UTC).
    pub day: String,
    /// Requests per kind (see [`REQUEST_KINDS`]).
    pub counts: BTreeMap<String, u64>,
    /// All kinds together.
    pub total: u64,
}

/// `GET /api/admin/metrics` on the edge: requests per kind per day, 30 days.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EdgeMetrics {
    /// Days, oldest first.
    pub days: Vec<DayCounts>,
}

/// `GET /api/admin/federation-keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FederationKeyList {
    /// Every federation key that is not revoked.
    pub keys: Vec<crate::api::TokenEntry>,
}

/// A new federation key, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FederationKey {
    /// Id, for revoking.
    pub id: String,
    /// Label.
    pub label: String,
    /// The key; only its hash is kept.
    pub key: String,
}
