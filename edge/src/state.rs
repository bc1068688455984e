//! The edge's state: coordinators, federation keys, request counts, and the choice of a coordinator.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use commons_server::auth::{AdminGate, RateLimit};
use commons_server::error::{ApiError, ApiResult};
use commons_server::stats::RequestStats;
use commons_server::tokens::{StoredTokens, admin_gate};
use commons_server::{now_ms, rfc3339};
use commons_shared::api::WorkerStatus;
use commons_shared::edge::{
    CoordinatorFigures, CoordinatorInfo, EdgeHeartbeat, EdgeRegisterRequest, REQUEST_KINDS,
};
use commons_shared::routing::{pick_weighted, route_weight};
use parking_lot::{Mutex, RwLock};
use rand::Rng;

use crate::config::Config;
use crate::store::{CoordinatorRow, FEDERATION_KEYS, Store, StoreError};

/// A registered coordinator.
#[derive(Debug)]
pub struct Coordinator {
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
    /// The federation key it proved itself with.
    pub key_id: String,
    /// Registration time.
    pub registered_at_ms: i64,
    /// What heartbeats change.
    pub live: Mutex<CoordLive>,
    /// Requests forwarded to it: counts and latency.
    pub stats: RequestStats,
}

/// The changing part of a coordinator.
#[derive(Debug, Clone)]
pub struct CoordLive {
    /// Latest figures.
    pub figures: CoordinatorFigures,
    /// Last heartbeat, monotonic.
    pub last_seen: Instant,
    /// Last heartbeat, wall clock.
    pub last_seen_ms: i64,
    /// Avoided until then after a failed forward.
    pub suspect_until: Option<Instant>,
}

impl Coordinator {
    fn healthy(&self, now: Instant) -> bool {
        self.live.lock().suspect_until.is_none_or(|t| now >= t)
    }

    /// Routing weight; `location` doubles it when it matches.
    fn weight(&self, now: Instant, location: Option<&str>, service: Option<&str>) -> f64 {
        let live = self.live.lock();
        if live.suspect_until.is_some_and(|t| now < t) {
            return 0.0;
        }
        if let Some(s) = service
            && live.figures.services.get(s).copied().unwrap_or(0) == 0
        {
            return 0.0;
        }
        let latency = self.stats.latency_ms().max(live.figures.latency_ms);
        let w = route_weight(
            WorkerStatus::Healthy,
            live.figures.load,
            latency,
            live.figures.queue_depth.min(1000) / 10,
        );
        let near = location.is_some_and(|l| {
            self.location.as_deref() == Some(l) || self.region.as_deref() == Some(l)
        });
        if near { 2.0 * w } else { w }
    }

    /// Records a forward's outcome; a connection failure makes it suspect for `suspect`.
    pub fn record(&self, ok: bool, latency: Duration, suspect: Option<Duration>) {
        self.stats.record(ok, latency);
        if let Some(d) = suspect {
            self.live.lock().suspect_until = Some(Instant::now() + d);
        }
    }

    /// The admin view.
    pub fn info(&self, now: Instant) -> CoordinatorInfo {
        let live = self.live.lock().clone();
        CoordinatorInfo {
            id: self.id.clone(),
            url: self.url.clone(),
            region: self.region.clone(),
            location: self.location.clone(),
            dht_addrs: self.dht_addrs.clone(),
            capacity: self.capacity,
            figures: live.figures,
            healthy: live.suspect_until.is_none_or(|t| now >= t),
            forwarded: self.stats.requests(),
            errors: self.stats.errors(),
            last_seen: rfc3339(live.last_seen_ms),
            registered_at: rfc3339(self.registered_at_ms),
        }
    }
}

/// Shared by every handler and task.
#[derive(Debug, Clone)]
pub struct EdgeState(Arc<Inner>);

impl std::ops::Deref for EdgeState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// See [`EdgeState`].
#[derive(Debug)]
pub struct Inner {
    /// Configuration.
    pub config: Config,
    /// Database.
    pub store: Store,
    /// Which coordinator addresses requests may be forwarded to, and this process's hop mark.
    pub upstreams: commons_server::upstream::Upstreams,
    coordinators: RwLock<HashMap<String, Arc<Coordinator>>>,
    /// Federation keys.
    pub keys: StoredTokens,
    /// The federation's consumer API keys, which its coordinators check (`GET /api/edge/keys`).
    pub consumers: commons_server::consumers::ConsumerKeys,
    admin: AdminGate,
    register_limit: RateLimit,
    /// Requests per (day, kind).
    counts: Mutex<BTreeMap<(String, &'static str), u64>>,
}

/// Today (UTC) as `YYYY-MM-DD`.
pub fn today() -> String {
    day_of(now_ms())
}

fn day_of(ms: i64) -> String {
    rfc3339(ms).get(..10).unwrap_or("1970-01-01").to_owned()
}

impl EdgeState {
    /// Loads coordinators, keys, counts and the admin token (creating one when none is configured or stored; it is
    /// returned to be shown once).
    pub async fn load(
        config: Config,
        store: Store,
        bound: std::net::SocketAddr,
    ) -> Result<(Self, Option<String>), StoreError> {
        let (admin, new_token) = admin_gate(
            store.db(),
            config.admin_token.as_ref().map(|t| t.0.as_str()),
            config.admin_auth_rate_limit,
        )
        .await?;
        let keys = StoredTokens::load(store.db().clone(), FEDERATION_KEYS)?;
        let consumers = commons_server::consumers::ConsumerKeys::load(store.db().clone(), None)?;
        let now = Instant::now();
        let wall = now_ms();
        let mut coordinators = HashMap::new();
        for row in store.load_coordinators()? {
            let silent = Duration::from_millis(wall.saturating_sub(row.last_seen_ms).max(0) as u64);
            let c = Coordinator {
                dht_addrs: serde_json::from_str(&row.dht_addrs).unwrap_or_default(),
                live: Mutex::new(CoordLive {
                    figures: serde_json::from_str(&row.figures).unwrap_or_default(),
                    last_seen: now.checked_sub(silent).unwrap_or(now),
                    last_seen_ms: row.last_seen_ms,
                    suspect_until: None,
                }),
                id: row.id,
                url: row.url,
                region: row.region,
                location: row.location,
                capacity: row.capacity,
                key_id: row.key_id,
                registered_at_ms: row.registered_at_ms,
                stats: RequestStats::default(),
            };
            coordinators.insert(c.id.clone(), Arc::new(c));
        }
        let since = day_of(wall - 30 * 86_400_000);
        let counts = store
            .load_counts(&since)?
            .into_iter()
            .filter_map(|(day, kind, n)| {
                Some(((day, *REQUEST_KINDS.iter().find(|k| **k == kind)?), n))
            })
            .collect();
        tracing::info!(coordinators = coordinators.len(), "edge registry loaded");
        let upstreams = commons_server::upstream::Upstreams::new(
            bound,
            config.private_upstreams,
            Duration::from_millis(config.proxy_connect_timeout_ms),
        );
        let state = Self(Arc::new(Inner {
            upstreams,
            admin,
            register_limit: RateLimit::per_minute(config.register_rate_limit),
            config,
            store,
            coordinators: RwLock::new(coordinators),
            keys,
            consumers,
            counts: Mutex::new(counts),
        }));
        Ok((state, new_token))
    }

    /// Checks the admin token.
    pub fn check_admin(&self, token: Option<&str>, ip: IpAddr) -> ApiResult<()> {
        self.admin.check(token, ip)
    }

    /// Checks the per-address registration limit.
    pub fn check_register_rate(&self, ip: IpAddr) -> ApiResult<()> {
        if self.register_limit.allow(ip) {
            Ok(())
        } else {
            Err(ApiError::RateLimited(format!(
                "too many registrations from {ip}; at most {} per minute",
                self.register_limit.rate()
            )))
        }
    }

    /// Counts one request of a kind.
    pub fn count(&self, kind: &'static str) {
        *self.counts.lock().entry((today(), kind)).or_insert(0) += 1;
    }

    /// Requests per day and kind, oldest first, the last 30 days.
    pub fn counts(&self) -> Vec<(String, BTreeMap<String, u64>)> {
        let since = day_of(now_ms() - 29 * 86_400_000);
        let mut days: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for ((day, kind), n) in self.counts.lock().iter() {
            if *day >= since {
                days.entry(day.clone())
                    .or_default()
                    .insert((*kind).to_owned(), *n);
            }
        }
        days.into_iter().collect()
    }

    /// Writes the counts and forgets days older than 30.
    pub async fn flush_counts(&self) -> Result<(), StoreError> {
        let keep = day_of(now_ms() - 29 * 86_400_000);
        let rows: Vec<(String, String, u64)> = {
            let mut counts = self.counts.lock();
            counts.retain(|(day, _), _| *day >= keep);
            counts
                .iter()
                .map(|((d, k), n)| (d.clone(), (*k).to_owned(), *n))
                .collect()
        };
        self.store.write_counts(rows, keep).await
    }

    /// The federation key a token is, if any.
    /// The federation's consumer keys, for a coordinator that shows its federation key.
    pub fn shared_keys(
        &self,
        token: Option<&str>,
    ) -> ApiResult<commons_shared::consumers::SharedKeys> {
        self.key_of(token)?;
        Ok(self.consumers.shared())
    }

    fn key_of(&self, token: Option<&str>) -> ApiResult<String> {
        let token = token.ok_or_else(|| {
            ApiError::Unauthorized("send the federation key as Authorization: Bearer <key>".into())
        })?;
        self.keys.find(token).ok_or_else(|| {
            ApiError::Unauthorized("this federation key is not enrolled at this edge".into())
        })
    }

    /// Registers (or re-registers) a coordinator.
    pub async fn register(
        &self,
        req: EdgeRegisterRequest,
        url: String,
        token: Option<&str>,
    ) -> ApiResult<String> {
        let key_id = self.key_of(token)?;
        // Only for an enrolled coordinator: nobody else gets a name resolved by registering.
        self.upstreams
            .check_url(&url)
            .await
            .map_err(|e| e.in_field("url"))?;
        let id = req
            .id
            .clone()
            .unwrap_or_else(|| format!("c-{:016x}", rand::rng().random::<u64>()));
        if let Some(existing) = self.get(&id)
            && existing.key_id != key_id
        {
            return Err(ApiError::Forbidden(format!(
                "coordinator {id:?} is registered with another federation key"
            )));
        }
        let now_wall = now_ms();
        let figures = req.figures.unwrap_or_default();
        let location = req.capabilities.and_then(|c| c.location);
        let row = CoordinatorRow {
            id: id.clone(),
            url: url.clone(),
            region: req.region.clone(),
            location: location.clone(),
            dht_addrs: serde_json::to_string(&req.dht_addrs).unwrap_or_else(|_| "[]".into()),
            capacity: req.capacity,
            key_id: key_id.clone(),
            registered_at_ms: now_wall,
            last_seen_ms: now_wall,
            figures: serde_json::to_string(&figures).unwrap_or_else(|_| "{}".into()),
        };
        self.store.put_coordinator(row).await?;
        let c = Coordinator {
            id: id.clone(),
            url,
            region: req.region,
            location,
            dht_addrs: req.dht_addrs,
            capacity: req.capacity,
            key_id,
            registered_at_ms: now_wall,
            live: Mutex::new(CoordLive {
                figures,
                last_seen: Instant::now(),
                last_seen_ms: now_wall,
                suspect_until: None,
            }),
            stats: RequestStats::default(),
        };
        self.coordinators.write().insert(id.clone(), Arc::new(c));
        tracing::info!(coordinator = %id, "coordinator registered");
        Ok(id)
    }

    /// A coordinator's heartbeat: refreshes last-seen and its figures.
    pub async fn heartbeat(&self, hb: EdgeHeartbeat, token: Option<&str>) -> ApiResult<()> {
        let key_id = self.key_of(token)?;
        let c = self.get(&hb.id).ok_or_else(|| {
            ApiError::NotFound(format!("no coordinator {:?} here; register again", hb.id))
        })?;
        if c.key_id != key_id {
            return Err(ApiError::Forbidden(
                "this federation key does not belong to that coordinator".into(),
            ));
        }
        let wall = now_ms();
        {
            let mut live = c.live.lock();
            live.figures = hb.figures.clone();
            live.last_seen = Instant::now();
            live.last_seen_ms = wall;
            live.suspect_until = None;
        }
        self.store
            .touch_coordinator(
                hb.id,
                wall,
                serde_json::to_string(&hb.figures).unwrap_or_else(|_| "{}".into()),
            )
            .await?;
        Ok(())
    }

    /// A coordinator leaves.
    pub async fn deregister(&self, id: &str, token: Option<&str>) -> ApiResult<()> {
        let key_id = self.key_of(token)?;
        let c = self
            .get(id)
            .ok_or_else(|| ApiError::NotFound(format!("no coordinator {id:?} here")))?;
        if c.key_id != key_id {
            return Err(ApiError::Forbidden(
                "this federation key does not belong to that coordinator".into(),
            ));
        }
        self.coordinators.write().remove(id);
        self.store.delete_coordinators(vec![id.to_owned()]).await?;
        Ok(())
    }

    /// Heartbeat interval and TTL (seconds) for a coordinator: long for one in the DHT, whose liveness flows
    /// there; short otherwise.
    pub fn timing(&self, id: &str) -> (u64, u64) {
        let in_dht = self
            .coordinators
            .read()
            .get(id)
            .is_some_and(|c| !c.dht_addrs.is_empty());
        if in_dht {
            (
                self.config.dht_heartbeat_interval_secs,
                self.config.dht_coordinator_ttl_secs,
            )
        } else {
            (
                self.config.heartbeat_interval_secs,
                self.config.coordinator_ttl_secs,
            )
        }
    }

    /// Forgets coordinators silent for longer than their TTL (see [`EdgeState::timing`]). Returns their ids.
    pub async fn expire(&self) -> Result<Vec<String>, StoreError> {
        let ttl = Duration::from_secs(self.config.coordinator_ttl_secs);
        let dht_ttl = Duration::from_secs(self.config.dht_coordinator_ttl_secs);
        let now = Instant::now();
        let gone: Vec<String> = {
            let mut map = self.coordinators.write();
            let ids: Vec<String> = map
                .values()
                .filter(|c| {
                    let ttl = if c.dht_addrs.is_empty() { ttl } else { dht_ttl };
                    now.saturating_duration_since(c.live.lock().last_seen) >= ttl
                })
                .map(|c| c.id.clone())
                .collect();
            for id in &ids {
                map.remove(id);
            }
            ids
        };
        if !gone.is_empty() {
            tracing::info!(coordinators = ?gone, "coordinators expired");
            self.store.delete_coordinators(gone.clone()).await?;
        }
        Ok(gone)
    }

    /// A coordinator by id.
    pub fn get(&self, id: &str) -> Option<Arc<Coordinator>> {
        self.coordinators.read().get(id).cloned()
    }

    /// Every coordinator, by id.
    pub fn all(&self) -> Vec<Arc<Coordinator>> {
        let mut v: Vec<_> = self.coordinators.read().values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Coordinators not avoided after a failed forward.
    pub fn healthy_count(&self) -> usize {
        let now = Instant::now();
        self.coordinators
            .read()
            .values()
            .filter(|c| c.healthy(now))
            .count()
    }

    /// Picks a coordinator by weight, skipping `skip`; for a service, one with healthy workers for it, else (none
    /// reports it) any: a coordinator answers for a service itself (404 for one that does not exist, else what its
    /// workers and the DHT can do).
    pub fn choose(
        &self,
        skip: &[String],
        location: Option<&str>,
        service: Option<&str>,
    ) -> Option<Arc<Coordinator>> {
        let now = Instant::now();
        // The map as it is: the choice is random by weight, so the sorting `all` does for listings is not needed.
        let cands: Vec<Arc<Coordinator>> = self
            .coordinators
            .read()
            .values()
            .filter(|c| !skip.contains(&c.id))
            .cloned()
            .collect();
        let pick = |service| {
            let weights: Vec<f64> = cands
                .iter()
                .map(|c| c.weight(now, location, service))
                .collect();
            pick_weighted(&weights, rand::rng().random::<f64>())
        };
        let i = pick(service).or_else(|| service.and_then(|_| pick(None)))?;
        cands.get(i).cloned()
    }

    /// Forgets rate-limit state of quiet addresses.
    pub fn trim_limiters(&self) {
        self.register_limit.trim();
        self.admin.trim();
    }
}
