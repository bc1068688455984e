//! Request and response bodies of the coordinator's worker and admin APIs.
//!
//! Field names of the legacy RMA shapes are kept (`worker_id`, `assigned_containers`, `current_load`, ...) so
//! existing workers and dashboards keep working; new fields are added beside them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::caps::{Capabilities, LegacyCapabilities};
use crate::ids::WorkerId;
use crate::tier::Tier;

/// Where heartbeats go, relative to the coordinator.
pub const HEARTBEAT_PATH: &str = "/api/worker/heartbeat";

/// Registration in Commons' own shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The machine.
    pub capabilities: Capabilities,
    /// Base URL at which the coordinator reaches this worker's services (`{endpoint}/api/service/{name}/...`).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub endpoint: Option<String>,
    /// The worker's tunnel URL, when it keeps one open.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub tunnel_url: Option<String>,
    /// The worker's address as it sees it.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub ip_address: Option<String>,
    /// The volunteer agrees to serve as an edge when the host has a public address.
    #[serde(default)]
    pub edge_opt_in: bool,
    /// Required when the coordinator asks for enrollment.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub enrollment_token: Option<String>,
    /// The worker's DHT peer id (base58), bound to its worker id.
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 40, max_length = 64, pattern = "^[1-9A-HJ-NP-Za-km-z]+$")
    )]
    pub peer_id: Option<String>,
}

/// Registration in the legacy RMA shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LegacyRegisterRequest {
    /// The machine, sizes as strings with units.
    pub capabilities: LegacyCapabilities,
    /// The worker's address.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub ip_address: Option<String>,
    /// The worker's tunnel URL.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub tunnel_url: Option<String>,
    /// Required when the coordinator asks for enrollment.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub enrollment_token: Option<String>,
}

/// A registration, whichever shape it came in, with capabilities in bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct NewWorker {
    /// The machine.
    pub capabilities: Capabilities,
    /// Base URL of the worker's services.
    pub endpoint: Option<String>,
    /// Tunnel URL.
    pub tunnel_url: Option<String>,
    /// Address.
    pub ip_address: Option<String>,
    /// Opted in to the edge role.
    pub edge_opt_in: bool,
    /// Enrollment token, if sent.
    pub enrollment_token: Option<String>,
    /// Came in the legacy shape.
    pub legacy: bool,
    /// DHT peer id.
    pub peer_id: Option<String>,
}

/// One container a worker should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContainerAssignment {
    /// Container name, e.g. `commons-llm`.
    pub name: String,
    /// The service it provides.
    pub service: String,
    /// Image reference.
    pub image: String,
    /// Port inside the container.
    pub port: u16,
    /// Environment (configuration, never secrets).
    pub env: BTreeMap<String, String>,
    /// Command instead of the image's default (empty: the image's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Needs a GPU.
    pub requires_gpu: bool,
    /// The path that answers 2xx once the service can serve; until it does, the container is `starting`, and the
    /// coordinator routes nothing to it. `None`: the image has none (a running container serves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// Files the container needs (model weights): the agent downloads and verifies each, and mounts it read-only
    /// at `/models/{name}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelArtifact>,
    /// The container gets the engine's network (the catalogue says the service needs one); otherwise it has none.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub network: bool,
}

/// A file a service needs, such as a model's weights. The agent downloads it once into its model cache (resuming an
/// interrupted download), checks its size and SHA-256 before anything uses it, and mounts it read-only into the
/// container at `/models/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ModelArtifact {
    /// The file's name under `/models`: letters, digits, '.', '_' and '-', not starting with '.'.
    pub name: String,
    /// Where to download it (`http://` or `https://`).
    pub url: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, 64 lowercase hex digits.
    pub sha256: String,
}

impl ModelArtifact {
    /// What is wrong with it, if anything.
    pub fn problem(&self) -> Option<String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 128
            && !self.name.starts_with('.')
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !name_ok {
            return Some(format!(
                "model {:?}: a name is 1 to 128 letters, digits, '.', '_' or '-', not starting with '.'",
                self.name
            ));
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://"))
            || self.url.len() > 2048
        {
            return Some(format!(
                "model {:?}: the url must be http:// or https://",
                self.name
            ));
        }
        if self.size == 0 {
            return Some(format!(
                "model {:?}: the size must be given, in bytes",
                self.name
            ));
        }
        if self.sha256.len() != 64
            || !self
                .sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Some(format!(
                "model {:?}: sha256 must be 64 lowercase hex digits",
                self.name
            ));
        }
        None
    }
}

/// Roles a worker holds besides its tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Roles {
    /// Serves as an edge.
    pub edge: bool,
    /// Offers storage.
    pub storage: bool,
}

/// The coordinator's answer to a registration: the legacy fields plus Commons' own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterResponse {
    /// The new worker's id (128 bits, hex).
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "0123456789abcdef0123456789abcdef"))]
    pub worker_id: WorkerId,
    /// Tier 1, 2 or 3.
    #[cfg_attr(feature = "openapi", schema(value_type = u8, minimum = 1, maximum = 3))]
    pub tier: Tier,
    /// Roles.
    pub roles: Roles,
    /// Containers to run.
    pub assigned_containers: Vec<ContainerAssignment>,
    /// Where to send heartbeats (path on the coordinator).
    pub heartbeat_url: String,
    /// Seconds between heartbeats.
    pub heartbeat_interval: u64,
    /// The coordinator's public URL.
    pub coordinator_url: String,
    /// The worker's tunnel URL as registered.
    pub tunnel_url: Option<String>,
    /// Where the coordinator will reach the worker's services.
    pub endpoint: Option<String>,
    /// Secret for `Authorization: Bearer` on heartbeats and unregistration. Shown once.
    pub worker_token: String,
    /// Version of the assignment; heartbeats echo it and get new containers when it changes.
    pub assignment_version: u64,
    /// The coordinator's DHT addresses (`.../p2p/<peer id>`), seeds for the worker's DHT node; empty without a DHT.
    #[serde(default)]
    pub dht_seeds: Vec<String>,
}

/// What a worker says about itself in a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ReportedStatus {
    /// Working normally.
    Healthy,
    /// Working, but something is wrong (a container restarting, hot GPU).
    Degraded,
    /// Paused by the volunteer: out of routing, still alive.
    Paused,
    /// Working at capacity.
    Busy,
}

impl ReportedStatus {
    /// All of them.
    pub const ALL: [ReportedStatus; 4] = [Self::Healthy, Self::Degraded, Self::Paused, Self::Busy];

    /// Lowercase name (as serialised and stored).
    pub fn as_str(self) -> &'static str {
        WorkerStatus::from(self).as_str()
    }

    /// Parses a lowercase name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// A worker's status as the coordinator sees it: what it reported, unless it stopped reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum WorkerStatus {
    /// Reported healthy.
    Healthy,
    /// Reported degraded.
    Degraded,
    /// Paused.
    Paused,
    /// Busy.
    Busy,
    /// No heartbeat for 90 s: out of routing.
    Stale,
    /// No heartbeat for 10 min.
    Offline,
}

impl WorkerStatus {
    /// All statuses.
    pub const ALL: [WorkerStatus; 6] = [
        Self::Healthy,
        Self::Degraded,
        Self::Paused,
        Self::Busy,
        Self::Stale,
        Self::Offline,
    ];

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Paused => "paused",
            Self::Busy => "busy",
            Self::Stale => "stale",
            Self::Offline => "offline",
        }
    }

    /// Parses a lowercase name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Alive: heartbeating recently (whatever it reported).
    pub fn is_live(self) -> bool {
        !matches!(self, Self::Stale | Self::Offline)
    }

    /// Can take service requests.
    pub fn is_routable(self) -> bool {
        matches!(self, Self::Healthy | Self::Degraded | Self::Busy)
    }
}

/// How the coordinator reaches a worker's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ReachPath {
    /// Back over the worker's own connection to the coordinator (its channel): no port open, no tunnel. The
    /// default, and the only way to a volunteer behind a home router.
    Reverse,
    /// A direct HTTP connection to the worker's endpoint (a forwarded port, a LAN, or a legacy worker's address).
    Direct,
    /// Through the worker's tunnel (an `https://` endpoint).
    Tunnel,
    /// Not reachable now.
    None,
}

impl ReachPath {
    /// All paths.
    pub const ALL: [ReachPath; 4] = [Self::Reverse, Self::Direct, Self::Tunnel, Self::None];

    /// Lowercase name (also the `X-Commons-Path` header of a routed answer).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reverse => "reverse",
            Self::Direct => "direct",
            Self::Tunnel => "tunnel",
            Self::None => "none",
        }
    }

    /// The path of a worker with its channel open or not, and this endpoint (or, legacy, an address only).
    pub fn of(channel: bool, endpoint: Option<&str>, address: bool) -> Self {
        match endpoint {
            _ if channel => Self::Reverse,
            Some(e) if e.starts_with("https://") => Self::Tunnel,
            Some(e) if e.starts_with("http://") => Self::Direct,
            Some(_) => Self::None,
            None if address => Self::Direct,
            None => Self::None,
        }
    }
}

/// One way a worker can be reached, as the worker sees it (its heartbeat's `paths`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PathKind {
    /// Its own connection to the coordinator (the channel), which requests come back over.
    Reverse,
    /// Peers connected to it directly: it is publicly reachable, or they are.
    Direct,
    /// Peers connected directly after a hole punch through its router (DCUtR).
    HolePunched,
    /// Peers reaching it through a relay (a coordinator's circuit relay).
    Relayed,
    /// Its tunnel (an `https://` endpoint).
    Tunnel,
}

impl PathKind {
    /// All kinds, fastest first (the order the agent reports them in).
    pub const ALL: [PathKind; 5] = [
        Self::Direct,
        Self::HolePunched,
        Self::Reverse,
        Self::Tunnel,
        Self::Relayed,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reverse => "reverse",
            Self::Direct => "direct",
            Self::HolePunched => "hole_punched",
            Self::Relayed => "relayed",
            Self::Tunnel => "tunnel",
        }
    }

    /// In plain words, as the portal, the window and `commons-agent status` say it.
    pub fn words(self) -> &'static str {
        match self {
            Self::Reverse => "its own connection to the coordinator",
            Self::Direct => "direct",
            Self::HolePunched => "direct after a hole punch",
            Self::Relayed => "through a relay",
            Self::Tunnel => "its tunnel",
        }
    }
}

/// How a worker is reached one way (its heartbeat's `paths`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PathReport {
    /// Which way.
    pub kind: PathKind,
    /// Its round trip, ms (the median over its connections of this kind; absent: not measured yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(maximum = 600000))]
    pub rtt_ms: Option<u32>,
    /// How many connections of this kind it holds (peers for the DHT's kinds; 1 for its channel or tunnel).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(maximum = 100000))]
    pub connections: u32,
}

impl From<ReportedStatus> for WorkerStatus {
    fn from(s: ReportedStatus) -> Self {
        match s {
            ReportedStatus::Healthy => Self::Healthy,
            ReportedStatus::Degraded => Self::Degraded,
            ReportedStatus::Paused => Self::Paused,
            ReportedStatus::Busy => Self::Busy,
        }
    }
}

/// A container's state on a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    /// Image being pulled.
    Pulling,
    /// Created, not started.
    Created,
    /// Starting.
    Starting,
    /// Running.
    Running,
    /// Restarting after a crash.
    Restarting,
    /// Stopped on purpose (pause).
    Stopped,
    /// Exited.
    Exited,
    /// Failed and given up on.
    Failed,
}

impl ContainerState {
    /// Lowercase name (as serialised).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pulling => "pulling",
            Self::Created => "created",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Restarting => "restarting",
            Self::Stopped => "stopped",
            Self::Exited => "exited",
            Self::Failed => "failed",
        }
    }
}

/// One container in a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ContainerStatus {
    /// Container name.
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub name: String,
    /// State.
    pub state: ContainerState,
    /// Restarts so far.
    #[serde(default)]
    pub restarts: u32,
}

/// One GPU in a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GpuSample {
    /// GPU index.
    #[cfg_attr(feature = "openapi", schema(maximum = 1023))]
    pub index: u32,
    /// Utilisation in [0, 1].
    #[serde(default)]
    pub utilization: f32,
    /// Temperature in °C.
    #[serde(default)]
    pub temperature_c: f32,
    /// VRAM in use, bytes.
    #[serde(default)]
    pub memory_used_bytes: u64,
}

/// A heartbeat, Commons' shape or the legacy one (`current_load`, `available_memory: "22.4GB"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatRequest {
    /// The worker's id (at most 64 characters).
    #[cfg_attr(feature = "openapi", schema(max_length = 64))]
    pub worker_id: String,
    /// healthy | degraded | paused | busy.
    pub status: ReportedStatus,
    /// Load in [0, 1].
    #[serde(alias = "current_load")]
    pub load: f64,
    /// Free memory in bytes.
    #[serde(default)]
    pub free_memory_bytes: Option<u64>,
    /// Free memory, legacy string ("22.4GB").
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub available_memory: Option<String>,
    /// Per-GPU figures.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 64))]
    pub gpus: Vec<GpuSample>,
    /// Container states.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 64))]
    pub containers: Vec<ContainerStatus>,
    /// The assignment version the worker runs.
    #[serde(default)]
    pub assignment_version: Option<u64>,
    /// The agent's version.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub agent_version: Option<String>,
    /// A new base URL for the worker's services (its tunnel restarted with a new address).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub endpoint: Option<String>,
    /// The name its volunteer chose for the leaderboard (absent: anonymous).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 40))]
    pub display_name: Option<String>,
    /// The round trip of its previous heartbeat, ms: how far away the coordinator is along the route its requests
    /// come back on (the reverse path's connection takes the same route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<u32>,
    /// Whether other DHT nodes can reach it (its node's AutoNAT finding; absent without a DHT node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<crate::dht::NatStatus>,
    /// How it can be reached now, each way with its round trip (absent: an agent that does not say; empty: no
    /// way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_items = 5))]
    pub paths: Option<Vec<PathReport>>,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatResponse {
    /// "ok".
    pub status: String,
    /// Seconds until the next heartbeat.
    pub heartbeat_interval: u64,
    /// The current assignment version.
    pub assignment_version: u64,
    /// The new assignment, present only when it differs from the version the worker sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_containers: Option<Vec<ContainerAssignment>>,
    /// Other workers outvoted this one's answers until its trust fell below the coordinator's threshold: it gets
    /// no requests (absent: false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drained: bool,
}

/// `GET /health` (seed shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// "healthy".
    pub status: String,
    /// The coordinator's name.
    pub coordinator: String,
    /// Worker counts.
    pub workers: HealthWorkers,
}

/// Worker counts in `/health`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthWorkers {
    /// All known workers.
    pub total: u64,
    /// Heartbeating.
    pub active: u64,
    /// Stale or offline.
    pub stale: u64,
}

/// Counts per tier under the seeds' keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ByTier<T> {
    /// Tier 1.
    pub gpu_workers: T,
    /// Tier 2.
    pub service_workers: T,
    /// Tier 3.
    pub data_workers: T,
}

impl<T> ByTier<T> {
    /// The slot for a tier.
    pub fn get_mut(&mut self, tier: Tier) -> &mut T {
        match tier {
            Tier::Gpu => &mut self.gpu_workers,
            Tier::Service => &mut self.service_workers,
            Tier::Data => &mut self.data_workers,
        }
    }
}

/// Counts per status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ByStatus {
    /// Healthy.
    pub healthy: u64,
    /// Degraded.
    pub degraded: u64,
    /// Paused.
    pub paused: u64,
    /// Busy.
    pub busy: u64,
    /// Stale.
    pub stale: u64,
    /// Offline.
    pub offline: u64,
}

impl ByStatus {
    /// The slot for a status.
    pub fn get_mut(&mut self, s: WorkerStatus) -> &mut u64 {
        match s {
            WorkerStatus::Healthy => &mut self.healthy,
            WorkerStatus::Degraded => &mut self.degraded,
            WorkerStatus::Paused => &mut self.paused,
            WorkerStatus::Busy => &mut self.busy,
            WorkerStatus::Stale => &mut self.stale,
            WorkerStatus::Offline => &mut self.offline,
        }
    }
}

/// `GET /api/admin/stats` (seed shape, extended).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Stats {
    /// All workers.
    pub total_workers: u64,
    /// Healthy workers.
    pub healthy_workers: u64,
    /// Live workers per tier.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub workers_by_tier: ByTier<u64>,
    /// Average load of live workers per tier.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub average_load_by_tier: ByTier<f64>,
    /// Service requests served (all workers).
    pub total_tasks_completed: u64,
    /// Workers per status.
    pub workers_by_status: ByStatus,
    /// GPUs on live workers.
    pub gpus: u64,
    /// VRAM on live workers, bytes.
    pub total_vram_bytes: u64,
    /// CPU cores on live workers.
    pub cpu_cores: u64,
    /// Free storage on live workers, bytes.
    pub storage_bytes: u64,
    /// Service requests routed since start.
    pub requests_total: u64,
    /// Service requests that failed since start.
    pub errors_total: u64,
    /// Live workers per agent version (from registrations and heartbeats): which versions the fleet runs.
    #[serde(default)]
    pub agent_versions: std::collections::BTreeMap<String, u64>,
}

/// `GET /api/admin/health` (seed shape, extended).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AdminHealth {
    /// healthy (a live GPU and a live service worker), degraded (some workers) or critical (none).
    pub overall_status: String,
    /// Workers per status.
    pub workers_by_status: ByStatus,
    /// Whether each tier has at least one live worker.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub has_minimum_workers: ByTier<bool>,
    /// Services below their wanted replicas.
    pub service_gaps: Vec<String>,
}

/// One worker in the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerSummary {
    /// Id.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "0123456789abcdef0123456789abcdef"))]
    pub worker_id: WorkerId,
    /// Tier.
    #[cfg_attr(feature = "openapi", schema(value_type = u8, minimum = 1, maximum = 3))]
    pub tier: Tier,
    /// Roles.
    pub roles: Roles,
    /// Status.
    pub status: WorkerStatus,
    /// Load in [0, 1].
    pub current_load: f64,
    /// Free memory, bytes.
    pub free_memory_bytes: u64,
    /// Requests served (the seeds' `tasks_completed`).
    pub tasks_completed: u64,
    /// Requests routed to it.
    pub requests: u64,
    /// Of which failed.
    pub errors: u64,
    /// Moving average of its request latency, ms.
    pub latency_ms: f64,
    /// Services it runs.
    pub services: Vec<String>,
    /// Containers assigned.
    pub assigned_containers: Vec<ContainerAssignment>,
    /// Container states from its last heartbeat.
    pub containers: Vec<ContainerStatus>,
    /// GPU figures from its last heartbeat.
    pub gpu_samples: Vec<GpuSample>,
    /// Last heartbeat (RFC 3339), absent before the first.
    pub last_heartbeat: Option<String>,
    /// Registration time (RFC 3339).
    pub registered_at: String,
    /// Address.
    pub ip_address: Option<String>,
    /// Where it is reached.
    pub endpoint: Option<String>,
    /// Agent version from its last heartbeat or registration.
    pub agent_version: String,
    /// Registered in the legacy shape.
    pub legacy: bool,
    /// The machine.
    pub capabilities: Capabilities,
    /// How far its answers are trusted, 0 to 1: a new worker starts halfway, an answer that others confirm raises
    /// it, one that others outvote halves it.
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 1.0))]
    pub trust: f64,
    /// Its trust fell below the coordinator's threshold: it gets no requests.
    pub drained: bool,
    /// How this coordinator reaches it now.
    pub path: ReachPath,
    /// The round trip of its heartbeat, ms, as it last reported it (none yet, or an agent that does not measure
    /// it).
    pub rtt_ms: Option<u32>,
    /// Whether other DHT nodes can reach it, as it last reported (its node's AutoNAT finding): `private` means
    /// behind a NAT, reached by peers through a relay or a hole punch.
    #[serde(default)]
    pub nat: Option<crate::dht::NatStatus>,
    /// How it can be reached, each way with its round trip, as it last reported.
    #[serde(default)]
    pub paths: Vec<PathReport>,
}

/// `PUT /api/admin/workers/{id}/trust`: the operator sets a worker's trust (to let a drained worker serve again,
/// once its volunteer has fixed what made its answers wrong).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SetTrust {
    /// 0 to 1; at or above the coordinator's `trust_threshold` the worker gets requests again.
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 1.0))]
    pub trust: f64,
}

/// `GET /api/admin/workers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerList {
    /// This page.
    pub workers: Vec<WorkerSummary>,
    /// Matching workers in all.
    pub total: u64,
    /// Page offset.
    pub offset: u64,
    /// Page size.
    pub limit: u64,
}

/// Coverage of one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceCoverage {
    /// Service name.
    pub name: String,
    /// Wanted replicas.
    pub wanted: u32,
    /// Workers assigned (any status).
    pub assigned: u32,
    /// Assigned workers that can take requests now.
    pub healthy: u32,
    /// wanted - healthy, or 0.
    pub gap: u32,
    /// Needs a GPU.
    pub requires_gpu: bool,
    /// Requests waiting in its queue now (every worker busy).
    #[serde(default)]
    pub queued: u32,
    /// Requests for it since the coordinator started.
    #[serde(default)]
    pub requests: u64,
}

/// `GET /api/admin/services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServicesReport {
    /// Every service in the catalogue.
    pub services: Vec<ServiceCoverage>,
    /// Names of services with a gap.
    pub gaps: Vec<String>,
}

/// One minute of history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryPoint {
    /// Minute, ms since the Unix epoch.
    pub ts_ms: i64,
    /// Workers per status.
    pub workers_by_status: ByStatus,
    /// Live workers per tier.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub workers_by_tier: ByTier<u64>,
    /// Average load per tier.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub average_load_by_tier: ByTier<f64>,
    /// Service requests in this minute.
    pub requests: u64,
    /// Failed service requests in this minute.
    pub errors: u64,
}

/// `GET /api/admin/history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct History {
    /// "1h", "24h" or "7d".
    pub range: String,
    /// Points, oldest first.
    pub points: Vec<HistoryPoint>,
}

/// `POST /api/admin/enrollment-tokens` (and the edge's `POST /api/admin/federation-keys`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollmentTokenRequest {
    /// What the token is for ("lab-3 servers"), 1 to 256 bytes.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 256))]
    pub label: String,
}

/// A named token as the admin API lists it (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenEntry {
    /// Id, for revoking.
    pub id: String,
    /// Label.
    pub label: String,
}

/// `GET /api/admin/enrollment-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollmentTokenList {
    /// Every enrollment token that is not revoked.
    pub tokens: Vec<TokenEntry>,
}

/// The answer to revoking a named token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Revoked {
    /// What was done: "revoked" (a token), "deregistered" (a coordinator at the edge).
    pub status: String,
    /// Its id.
    pub id: String,
}

/// A new enrollment token, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollmentToken {
    /// Id, for revoking.
    pub id: String,
    /// Label.
    pub label: String,
    /// The token itself; only its hash is kept.
    pub token: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_wire_names_are_pinned() {
        for s in ReportedStatus::ALL {
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
            assert_eq!(ReportedStatus::parse(s.as_str()), Some(s));
        }
        let names: Vec<_> = ReportedStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["healthy", "degraded", "paused", "busy"]);
        assert_eq!(ReportedStatus::parse("stale"), None);
        for s in WorkerStatus::ALL {
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
        for p in ReachPath::ALL {
            assert_eq!(
                serde_json::to_value(p).unwrap(),
                serde_json::json!(p.as_str())
            );
        }
        let names: Vec<_> = ReachPath::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(names, ["reverse", "direct", "tunnel", "none"]);
        for k in PathKind::ALL {
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::json!(k.as_str())
            );
        }
        let names: Vec<_> = PathKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["direct", "hole_punched", "reverse", "tunnel", "relayed"]
        );
    }

    #[test]
    fn the_channel_comes_first_then_the_endpoint_says_the_path() {
        let https = Some("https://x.trycloudflare.com");
        let http = Some("http://192.0.2.1:8080");
        assert_eq!(ReachPath::of(true, https, false), ReachPath::Reverse);
        assert_eq!(ReachPath::of(false, https, false), ReachPath::Tunnel);
        assert_eq!(ReachPath::of(false, http, true), ReachPath::Direct);
        assert_eq!(ReachPath::of(false, None, true), ReachPath::Direct);
        assert_eq!(ReachPath::of(false, None, false), ReachPath::None);
        assert_eq!(ReachPath::of(false, Some("ftp://x"), true), ReachPath::None);
    }
}
