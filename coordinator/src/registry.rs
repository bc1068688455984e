//! The in-memory worker registry: the source of truth while running, written through to [`crate::store`].
//!
//! Heartbeats touch only one worker's [`Live`] behind its own mutex, under a read lock of the map, so they scale
//! across cores; the flusher writes dirty workers to SQLite in batches. Liveness is derived from a monotonic clock
//! ([`Instant`]) at read time, so no sweep has to run for a worker to count as stale.

use std::sync::Arc;
use std::time::{Duration, Instant};

use commons_shared::WorkerId;
use commons_shared::api::{
    ContainerState, ContainerStatus, GpuSample, ReportedStatus, Roles, WorkerStatus,
};
use commons_shared::catalogue::ServiceSpec;
use commons_shared::tier::Tier;
use hashbrown::HashTable;
use parking_lot::{Mutex, RwLock};

use commons_server::stats::RequestStats;

use crate::auth::TokenHash;
use crate::machine::{Kinds, Machine};

/// A registered worker.
#[derive(Debug)]
pub struct Worker {
    /// Id.
    pub id: WorkerId,
    /// Hash of its token.
    pub token_hash: TokenHash,
    /// Tier.
    pub tier: Tier,
    /// Roles.
    pub roles: Roles,
    /// The machine, as it reported it at registration.
    pub machine: Machine,
    /// Address it registered with.
    pub ip_address: Option<Box<str>>,
    /// Tunnel URL.
    pub tunnel_url: Option<Box<str>>,
    /// Registered in the legacy shape.
    pub legacy: bool,
    /// Registration time, ms since the epoch.
    pub registered_at_ms: i64,
    /// Its DHT peer id, bound at registration.
    pub peer_id: Option<Box<str>>,
    /// What heartbeats change.
    pub live: Mutex<Live>,
    /// Requests routed to it: counts, in flight, latency.
    pub stats: RequestStats,
    /// Its reverse path, while the agent holds one open ([`commons_server::channel`]).
    pub channel: Mutex<Option<Channel>>,
}

/// A worker's open channel: where requests go back over its own connection.
#[derive(Debug, Clone)]
pub struct Channel {
    /// The coordinator's end.
    pub sender: commons_server::channel::Sender,
    /// Which opening this is: a channel that closes forgets itself only if no newer one replaced it.
    pub serial: u64,
}

impl Worker {
    /// How the coordinator reaches it, with this endpoint (its live one).
    pub fn path(&self, endpoint: Option<&str>) -> commons_shared::api::ReachPath {
        commons_shared::api::ReachPath::of(
            self.channel.lock().is_some(),
            endpoint,
            self.ip_address.is_some(),
        )
    }

    /// The worker's channel, when one is open.
    pub fn channel(&self) -> Option<commons_server::channel::Sender> {
        let mut c = self.channel.lock();
        if c.as_ref().is_some_and(|c| c.sender.is_closed()) {
            *c = None;
        }
        c.as_ref().map(|c| c.sender.clone())
    }
}

/// The changing part of a worker.
#[derive(Debug, Clone)]
pub struct Live {
    /// What it last reported.
    pub reported: ReportedStatus,
    /// Load in [0, 1].
    pub load: f64,
    /// Free memory, bytes.
    pub free_memory: u64,
    /// When it last heartbeated (or registered): monotonic.
    pub last_seen: Instant,
    /// Wall-clock time of its last heartbeat, ms since the epoch; `None` before the first.
    pub last_heartbeat_ms: Option<i64>,
    /// GPU figures (boxed slices, not vectors: 8 bytes less each, and no spare capacity; see
    /// `a_worker_fits_the_512_byte_size_class`).
    pub gpus: Box<[GpuSample]>,
    /// Container states.
    pub containers: Box<[ContainerStatus]>,
    /// Services (catalogue indices).
    pub services: Vec<u16>,
    /// Assignment version.
    pub assignment_version: u64,
    /// Agent version.
    pub agent_version: Box<str>,
    /// Base URL of its services (a heartbeat can change it when a tunnel restarts).
    pub endpoint: Option<Box<str>>,
    /// The display name its volunteer chose, as last heard: `None` until its first heartbeat since this start,
    /// `Some(None)` anonymous.
    pub display_name: Option<Option<Box<str>>>,
    /// The display name changed (or was first heard) since the flusher last booked it in the ledger.
    pub name_unbooked: bool,
    /// Time it donated since the flusher last booked it in the ledger, ms (kept here rather than summed per
    /// heartbeat elsewhere: a heartbeat adds to its own worker, under the lock it already holds).
    pub unbooked_ms: u32,
    /// How far its answers are trusted, 0 to 1 ([`crate::verify`]).
    pub trust: f64,
    /// The round trip of its heartbeat, ms, as it reported it (not stored).
    pub rtt_ms: Option<u32>,
    /// Whether other DHT nodes reach it, as it reported (not stored).
    pub nat: Option<commons_shared::dht::NatStatus>,
    /// How it can be reached, each way with its round trip, as it reported (not stored).
    pub paths: Box<[commons_shared::api::PathReport]>,
    /// Changed since the last flush.
    pub dirty: bool,
}

/// When a worker turns stale and offline.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// No heartbeat for this long: stale.
    pub stale_after: Duration,
    /// No heartbeat for this long: offline.
    pub offline_after: Duration,
}

impl Live {
    /// Whether its container for `service` serves: it reports that container running (and, where the image has a health
    /// check, passing it). A worker that reports no containers at all (a legacy worker, or one serving without a
    /// container engine) is taken at its word.
    pub fn serves(&self, service: &ServiceSpec) -> bool {
        self.containers.is_empty()
            || self
                .containers
                .iter()
                .any(|c| service.is_container(&c.name) && c.state == ContainerState::Running)
    }

    /// Status at `now`: what it reported, unless it has been silent too long.
    pub fn status(&self, now: Instant, l: Liveness) -> WorkerStatus {
        let silent = now.saturating_duration_since(self.last_seen);
        if silent >= l.offline_after {
            WorkerStatus::Offline
        } else if silent >= l.stale_after {
            WorkerStatus::Stale
        } else {
            self.reported.into()
        }
    }
}

/// The registry's hash of a worker id.
fn hash(id: WorkerId) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(id)
}

/// All workers, and which of them run each service.
#[derive(Debug, Default)]
pub struct Registry {
    /// Each worker by its id (a table of the workers themselves, 8 bytes a slot, not a map that repeats the 16-byte
    /// id beside each). Hashed by server-chosen random ids, so a fast non-keyed hash cannot be steered into collisions.
    workers: RwLock<HashTable<Arc<Worker>>>,
    providers: RwLock<Vec<Vec<Arc<Worker>>>>,
    /// The machine kinds the workers share.
    kinds: Kinds,
}

impl Registry {
    /// An empty registry for a catalogue of `services` services.
    pub fn new(services: usize) -> Self {
        Self {
            workers: RwLock::default(),
            providers: RwLock::new(vec![Vec::new(); services]),
            kinds: Kinds::default(),
        }
    }

    /// The machine kinds the workers share (to make a worker's [`Machine`], and to sweep).
    pub fn kinds(&self) -> &Kinds {
        &self.kinds
    }

    /// Adds a worker.
    pub fn insert(&self, w: Arc<Worker>) {
        let services = w.live.lock().services.clone();
        let id = w.id;
        self.workers
            .write()
            .entry(hash(id), |x| x.id == id, |x| hash(x.id))
            .insert(w.clone());
        let mut p = self.providers.write();
        for s in services {
            if let Some(list) = p.get_mut(usize::from(s)) {
                list.push(w.clone());
            }
        }
    }

    /// Removes a worker; the removed one if it was there.
    pub fn remove(&self, id: WorkerId) -> Option<Arc<Worker>> {
        let (w, _) = self
            .workers
            .write()
            .find_entry(hash(id), |x| x.id == id)
            .ok()?
            .remove();
        for list in self.providers.write().iter_mut() {
            list.retain(|x| x.id != id);
        }
        Some(w)
    }

    /// A worker by id.
    pub fn get(&self, id: WorkerId) -> Option<Arc<Worker>> {
        self.workers.read().find(hash(id), |x| x.id == id).cloned()
    }

    /// Number of workers.
    pub fn len(&self) -> usize {
        self.workers.read().len()
    }

    /// Whether there is no worker.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The lowest trust among the workers registered with this DHT identity (a scan under the read lock, without
    /// copying the map).
    pub fn trust_of_peer(&self, peer: &str) -> Option<f64> {
        self.workers
            .read()
            .iter()
            .filter(|w| w.peer_id.as_deref() == Some(peer))
            .map(|w| w.live.lock().trust)
            .reduce(f64::min)
    }

    /// A snapshot of every worker.
    pub fn all(&self) -> Vec<Arc<Worker>> {
        self.workers.read().iter().cloned().collect()
    }

    /// The workers that run a service.
    pub fn providers(&self, service: usize) -> Vec<Arc<Worker>> {
        self.providers
            .read()
            .get(service)
            .cloned()
            .unwrap_or_default()
    }

    /// Records that a worker's services changed from `old` to `new` (its `Live` already says `new`).
    pub fn reassign(&self, w: &Arc<Worker>, old: &[u16], new: &[u16]) {
        let mut p = self.providers.write();
        for s in old.iter().filter(|s| !new.contains(s)) {
            if let Some(list) = p.get_mut(usize::from(*s)) {
                list.retain(|x| x.id != w.id);
            }
        }
        for s in new.iter().filter(|s| !old.contains(s)) {
            if let Some(list) = p.get_mut(usize::from(*s)) {
                list.push(w.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every worker is one `Arc<Worker>` (its two counts and the worker): at 10,000 workers each step of jemalloc's
    /// size classes (512, 640, 768 bytes) is 1.2 MiB. A field that pushes it past 512 bytes should be a choice.
    #[test]
    fn a_worker_fits_the_512_byte_size_class() {
        let arc = 2 * std::mem::size_of::<usize>() + std::mem::size_of::<Worker>();
        assert!(arc <= 512, "an Arc<Worker> is {arc} bytes");
    }
}
