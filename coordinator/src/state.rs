//! The coordinator's state and its operations, independent of HTTP.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use commons_shared::WorkerId;
use commons_shared::api::{
    ContainerAssignment, HEARTBEAT_PATH, HeartbeatRequest, HeartbeatResponse, NewWorker,
    RegisterResponse, ReportedStatus, Roles, WorkerStatus,
};
use commons_shared::assign::assign;
use commons_shared::caps::Capabilities;
use commons_shared::catalogue::{Catalogue, CatalogueOffer};
use commons_shared::tier::{Tier, classify};
use parking_lot::Mutex;
use rand::RngCore;

use commons_server::stats::RequestStats;
use commons_server::tokens::{StoredTokens, admin_gate};

use crate::auth::{self, AdminGate, RateLimit};
use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::ledger::Booking;
use crate::metrics::Metrics;
use crate::registry::{Live, Liveness, Registry, Worker};
use crate::store::{ENROLLMENT_TOKENS, LiveRow, Store, StoreError, WorkerRow};

/// Shared by every handler and background task.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// See [`AppState`].
#[derive(Debug)]
pub struct Inner {
    /// Configuration.
    pub config: Config,
    /// The service catalogue.
    pub catalogue: Catalogue,
    /// The operator's catalogue and its signature, as workers fetch them to check their assignments.
    pub catalogue_offer: CatalogueOffer,
    /// Workers.
    pub registry: Registry,
    /// Database.
    pub store: Store,
    /// URL given to workers.
    pub coordinator_url: String,
    /// Which worker addresses requests may be forwarded to, and this process's hop mark.
    pub upstreams: commons_server::upstream::Upstreams,
    /// Liveness thresholds.
    pub liveness: Liveness,
    /// Metrics handles.
    pub metrics: Metrics,
    admin: AdminGate,
    /// Enrollment tokens.
    pub(crate) enrollments: StoredTokens,
    /// Consumers' API keys, checked on every service request.
    pub(crate) consumers: commons_server::consumers::ConsumerKeys,
    /// Each service's fair queue, for when all its workers are busy.
    pub(crate) queues: crate::queue::Queues,
    /// Where served requests and donated time are recorded.
    pub(crate) accounting: crate::accounting::Accounting,
    /// The accounting task's end, until the task takes it.
    pub(crate) accounting_events:
        Mutex<Option<tokio::sync::mpsc::Receiver<crate::accounting::Record>>>,
    register_limit: RateLimit,
    /// Live workers per service (index by catalogue), refreshed by the sweeper and bumped by registrations.
    coverage: Mutex<Vec<u32>>,
    /// Service requests routed since start.
    pub requests_total: AtomicU64,
    /// Of which failed.
    pub errors_total: AtomicU64,
    /// The DHT node, once started (never, with the DHT off).
    pub dht: std::sync::OnceLock<commons_dht::Dht>,
    /// Recent DHT answers per service, for routing what none of our workers offers (see `proxy`).
    pub(crate) dht_routes: Mutex<rustc_hash::FxHashMap<String, DhtRoute>>,
    /// Portal logins.
    pub(crate) sessions: crate::access::Sessions,
}

pub use commons_server::{now_ms, rfc3339};

/// When a service's workers were last read from the DHT, and their endpoints, least loaded first.
pub(crate) type DhtRoute = (Instant, Arc<[String]>);

fn roles_bits(r: Roles) -> u8 {
    u8::from(r.edge) | (u8::from(r.storage) << 1)
}

/// The state could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The catalogue file cannot be read.
    #[error("cannot read the catalogue {path}: {source}")]
    CatalogueFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The catalogue is not valid.
    #[error(transparent)]
    Catalogue(#[from] commons_shared::catalogue::CatalogueError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the admin token check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The admin.
    Admin,
    /// The worker itself.
    Worker,
}

impl AppState {
    /// Builds the state: loads the catalogue, the registry from the store, and the admin token (creating one when
    /// none is configured or stored). Returns the new admin token when one was created, to be shown once.
    pub async fn load(
        config: Config,
        store: Store,
        bound: std::net::SocketAddr,
        coordinator_url: String,
    ) -> Result<(Self, Option<String>), LoadError> {
        let overlay = match &config.catalogue {
            Some(p) => {
                Some(
                    std::fs::read_to_string(p).map_err(|source| LoadError::CatalogueFile {
                        path: p.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let signature = match (&config.catalogue_signature, &config.catalogue) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(c)) => {
                let mut p = c.clone().into_os_string();
                p.push(".minisig");
                Some(std::path::PathBuf::from(p)).filter(|p| p.exists())
            }
            (None, None) => None,
        };
        let catalogue_offer = CatalogueOffer {
            catalogue: overlay.clone(),
            signature: match signature {
                Some(p) => Some(
                    std::fs::read_to_string(&p)
                        .map_err(|source| LoadError::CatalogueFile { path: p, source })?,
                ),
                None => None,
            },
        };
        let catalogue = Catalogue::load(
            commons_shared::catalogue::DEFAULT_CATALOGUE,
            overlay.as_deref(),
        )?;

        let (admin, new_admin_token) = admin_gate(
            store.db(),
            config.admin_token.as_ref().map(|t| t.0.as_str()),
            config.admin_auth_rate_limit,
        )
        .await?;
        let enrollments = StoredTokens::load(store.db().clone(), ENROLLMENT_TOKENS)?;
        let queues = crate::queue::Queues::new(config.queue_length);
        let consumers = commons_server::consumers::ConsumerKeys::load(
            store.db().clone(),
            config
                .anonymous_access
                .then_some(commons_server::consumers::Anonymous {
                    rate_per_minute: config.anonymous_rate_per_minute,
                }),
        )?;
        // Today's use, so a restart does not give every key its daily quota again.
        consumers.restore_today(&store.key_use_today(now_ms())?, now_ms());
        let (accounting, accounting_events) = crate::accounting::Accounting::new(config.accounting);

        let liveness = Liveness {
            stale_after: Duration::from_secs(config.stale_after_secs),
            offline_after: Duration::from_secs(config.offline_after_secs),
        };
        let registry = Registry::new(catalogue.len());
        let now = Instant::now();
        let wall = now_ms();
        let rows = store.load_workers()?;
        let count = rows.len();
        for row in rows {
            match worker_from_row(row, registry.kinds(), &catalogue, now, wall) {
                Ok(w) => registry.insert(Arc::new(w)),
                Err(e) => {
                    tracing::error!(error = %e, "skipping a stored worker that cannot be read")
                }
            }
        }
        tracing::info!(workers = count, db = %store.path().display(), "registry loaded");

        let upstreams = commons_server::upstream::Upstreams::new(
            bound,
            config.private_upstreams,
            Duration::from_millis(config.proxy_connect_timeout_ms),
        );
        let state = Self(Arc::new(Inner {
            upstreams,
            register_limit: RateLimit::per_minute(config.register_rate_limit),
            admin,
            coverage: Mutex::new(vec![0; catalogue.len()]),
            metrics: Metrics::new(catalogue.services().iter().map(|s| s.name.as_str())),
            config,
            catalogue,
            catalogue_offer,
            registry,
            store,
            coordinator_url,
            liveness,
            enrollments,
            consumers,
            queues,
            accounting,
            accounting_events: Mutex::new(accounting_events),
            requests_total: AtomicU64::new(0),
            errors_total: AtomicU64::new(0),
            dht: std::sync::OnceLock::new(),
            dht_routes: Mutex::new(Default::default()),
            sessions: crate::access::Sessions::default(),
        }));
        state.refresh_coverage();
        Ok((state, new_admin_token))
    }

    /// Containers for a list of services.
    pub fn containers(&self, services: &[u16]) -> Vec<ContainerAssignment> {
        services
            .iter()
            .filter_map(|&i| self.catalogue.get(usize::from(i)))
            .map(commons_shared::catalogue::ServiceSpec::assignment)
            .collect()
    }

    /// Service names for a list of services.
    pub fn service_names(&self, services: &[u16]) -> Vec<String> {
        services
            .iter()
            .filter_map(|&i| self.catalogue.get(usize::from(i)))
            .map(|s| s.name.clone())
            .collect()
    }

    /// Recounts live workers per service.
    pub fn refresh_coverage(&self) -> Vec<u32> {
        let now = Instant::now();
        let counts: Vec<u32> = (0..self.catalogue.len())
            .map(|s| {
                self.registry
                    .providers(s)
                    .iter()
                    .filter(|w| w.live.lock().status(now, self.liveness).is_live())
                    .count() as u32
            })
            .collect();
        *self.coverage.lock() = counts.clone();
        counts
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

    /// Checks the admin token; wrong tokens count against the address's limit.
    pub fn check_admin(&self, token: Option<&str>, ip: IpAddr) -> ApiResult<()> {
        self.admin.check(token, ip)
    }

    /// Whether a token is the admin's (no rate accounting).
    pub fn is_admin(&self, token: &str) -> bool {
        self.admin.is_admin(token)
    }

    fn check_enrollment(&self, token: Option<&str>) -> ApiResult<()> {
        if !self.config.require_enrollment {
            return Ok(());
        }
        let Some(token) = token else {
            return Err(ApiError::Unauthorized(
                "this coordinator requires an enrollment token (enrollment_token)".into(),
            ));
        };
        let known = self.enrollments.find(token).is_some();
        if known {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "the enrollment token is not valid (revoked or mistyped)".into(),
            ))
        }
    }

    /// Registers a worker: classify, assign, store durably, then add to the registry.
    pub async fn register(&self, new: NewWorker) -> ApiResult<RegisterResponse> {
        self.check_enrollment(new.enrollment_token.as_deref())?;
        let class = classify(&new.capabilities, new.edge_opt_in);
        let services = self.reserve_services(&new.capabilities);
        let token = auth::new_token();
        let carried = match new.peer_id.clone() {
            Some(peer) => self.carried_trust(peer).await,
            None => None,
        };
        // Capabilities always serialise (plain data).
        let capabilities = serde_json::to_string(&new.capabilities).unwrap_or_else(|_| "{}".into());
        let worker = new_worker(
            new,
            self.registry.kinds(),
            class,
            services.clone(),
            auth::hash_token(&token),
        );
        if let Some(trust) = carried {
            tracing::info!(worker = %worker.id, trust, "registered again: its trust carries over");
            worker.live.lock().trust = trust;
        }
        let row = self.row_of(&worker, capabilities);
        if let Err(e) = self.store.insert_worker(row).await {
            self.release_services(&services);
            return Err(e.into());
        }
        let (id, tier, roles) = (worker.id, worker.tier, worker.roles);
        let tunnel_url = worker.tunnel_url.as_deref().map(str::to_owned);
        let endpoint = worker.live.lock().endpoint.as_deref().map(str::to_owned);
        self.registry.insert(Arc::new(worker));
        self.metrics.registrations.increment(1);
        tracing::debug!(worker = %id, tier = tier.number(), "registered");
        Ok(RegisterResponse {
            worker_id: id,
            tier,
            roles,
            assigned_containers: self.containers(&services),
            heartbeat_url: HEARTBEAT_PATH.into(),
            heartbeat_interval: self.config.heartbeat_interval_secs,
            coordinator_url: self.coordinator_url.clone(),
            tunnel_url,
            endpoint,
            worker_token: token,
            assignment_version: 1,
            dht_seeds: self
                .dht
                .get()
                .map(commons_dht::Dht::address_strings)
                .unwrap_or_default(),
        })
    }

    /// The trust a worker registering with this DHT identity starts at, when the identity's trust was lowered
    /// (a worker of it still registered, or one that went): the lower of that and a new worker's. Registering
    /// again does not wash away what other workers' answers found.
    async fn carried_trust(&self, peer: String) -> Option<f64> {
        let registered = self.registry.trust_of_peer(&peer);
        let kept = match self.store.peer_trust(peer).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the trust kept for a DHT identity");
                None
            }
        };
        [registered, kept]
            .into_iter()
            .flatten()
            .reduce(f64::min)
            .filter(|t| *t < crate::verify::NEW_TRUST)
    }

    /// Chooses the services for a new worker and counts it in their coverage at once, so that a burst of
    /// registrations spreads over the catalogue.
    fn reserve_services(&self, caps: &Capabilities) -> Vec<u16> {
        let mut coverage = self.coverage.lock();
        let chosen = assign(
            caps,
            &self.catalogue,
            &coverage,
            &[],
            self.config.max_services_per_worker,
            true,
        );
        for &i in &chosen {
            coverage[i] += 1;
        }
        chosen.into_iter().map(|i| i as u16).collect()
    }

    /// Takes back what [`Self::reserve_services`] counted (the registration failed).
    fn release_services(&self, services: &[u16]) {
        let mut coverage = self.coverage.lock();
        for &i in services {
            coverage[usize::from(i)] = coverage[usize::from(i)].saturating_sub(1);
        }
    }

    /// A new worker as stored (`capabilities`: as it sent them, in JSON).
    fn row_of(&self, w: &Worker, capabilities: String) -> WorkerRow {
        let live = w.live.lock();
        let endpoint = live.endpoint.as_deref().map(str::to_owned);
        WorkerRow {
            id: w.id.to_string(),
            token_hash: w.token_hash.to_vec(),
            tier: w.tier.number(),
            roles: roles_bits(w.roles),
            capabilities,
            ip_address: w.ip_address.as_deref().map(str::to_owned),
            endpoint: endpoint.clone(),
            tunnel_url: w.tunnel_url.as_deref().map(str::to_owned),
            legacy: w.legacy,
            services: serde_json::to_string(&self.service_names(&live.services))
                .unwrap_or_else(|_| "[]".into()),
            assignment_version: live.assignment_version,
            registered_at_ms: w.registered_at_ms,
            peer_id: w.peer_id.as_deref().map(str::to_owned),
            live: LiveRow {
                id: w.id.to_string(),
                last_heartbeat_ms: None,
                status: live.reported.as_str().into(),
                load: 0.0,
                free_memory: 0,
                agent_version: live.agent_version.to_string(),
                endpoint,
                samples: "{}".into(),
                requests: 0,
                errors: 0,
                trust: live.trust,
            },
        }
    }

    /// Finds a worker and checks that the caller may act on it: its own token, the admin's, or (legacy-open mode)
    /// no token from a legacy worker.
    pub fn authorize_worker(
        &self,
        id: &str,
        token: Option<&str>,
    ) -> ApiResult<(Arc<Worker>, Caller)> {
        let not_found = || {
            ApiError::NotFound(format!(
                "no worker {id:?} is registered here; register again"
            ))
        };
        // Only the admin hears whether an id exists: anyone else gets the same 401 for an id that is not
        // registered as for one that is (a worker whose record was purged re-registers on either).
        let worker = id.parse().ok().and_then(|wid| self.registry.get(wid));
        let unauthorized = || {
            ApiError::Unauthorized(
                "send this worker's own token as Authorization: Bearer <worker_token>; a worker that is not \
                 registered here must register again"
                    .into(),
            )
        };
        match (worker, token) {
            (Some(w), Some(t)) if auth::token_matches(t, &w.token_hash) => Ok((w, Caller::Worker)),
            (w, Some(t)) if self.is_admin(t) => w.map(|w| (w, Caller::Admin)).ok_or_else(not_found),
            (None, Some(t)) => {
                // As long as a check against a real worker's hash.
                let _ = auth::token_matches(t, &[0; 32]);
                Err(unauthorized())
            }
            (Some(w), None) if self.config.legacy_open_workers && w.legacy => {
                Ok((w, Caller::Worker))
            }
            // The legacy agents of an open coordinator know no token: they re-register on 404.
            (None, None) if self.config.legacy_open_workers => Err(not_found()),
            _ => Err(unauthorized()),
        }
    }

    /// The worker a heartbeat for `id` comes from, when `token` is that worker's own (not even the admin's).
    pub fn heartbeat_sender(&self, id: &str, token: Option<&str>) -> ApiResult<Arc<Worker>> {
        match self.authorize_worker(id, token)? {
            (_, Caller::Admin) => Err(ApiError::Forbidden(
                "heartbeats come from the worker itself, with its own token".into(),
            )),
            (w, Caller::Worker) => Ok(w),
        }
    }

    /// Applies a heartbeat from `w` (see [`AppState::heartbeat_sender`]) in memory; the flusher persists it.
    pub fn apply_heartbeat(&self, w: &Worker, hb: HeartbeatRequest) -> HeartbeatResponse {
        let now_wall = now_ms();
        let (version, changed, drained) = {
            let mut live = w.live.lock();
            // Donated time: since its last heartbeat while it donated, at most two intervals (a gap longer than
            // that was spent offline).
            if let Some(prev) = live.last_heartbeat_ms
                && live.reported != ReportedStatus::Paused
                && hb.status != ReportedStatus::Paused
            {
                let most = self.config.heartbeat_interval_secs.saturating_mul(2_000);
                let ms = u64::try_from(now_wall - prev).unwrap_or(0).min(most);
                if self.accounting.on() {
                    let ms = u32::try_from(ms).unwrap_or(u32::MAX);
                    live.unbooked_ms = live.unbooked_ms.saturating_add(ms);
                }
            }
            if live.display_name.as_ref().map(Option::as_deref) != Some(hb.display_name.as_deref())
            {
                live.display_name = Some(hb.display_name.map(Into::into));
                live.name_unbooked = self.accounting.on();
            }
            live.reported = hb.status;
            live.load = hb.load;
            if let Some(m) = hb.free_memory_bytes {
                live.free_memory = m;
            }
            live.last_seen = Instant::now();
            live.last_heartbeat_ms = Some(now_wall);
            keep_or_replace(&mut live.gpus, hb.gpus);
            keep_or_replace(&mut live.containers, hb.containers);
            if let Some(v) = hb.agent_version
                && *live.agent_version != *v
            {
                live.agent_version = v.into();
            }
            if let Some(e) = hb.endpoint {
                live.endpoint = Some(e.into());
            }
            if hb.rtt_ms.is_some() {
                live.rtt_ms = hb.rtt_ms;
            }
            if hb.nat.is_some() {
                live.nat = hb.nat;
            }
            if let Some(paths) = hb.paths {
                live.paths = paths.into();
            }
            live.dirty = true;
            let changed = hb
                .assignment_version
                .is_some_and(|v| v != live.assignment_version);
            (
                live.assignment_version,
                changed.then(|| live.services.clone()),
                self.drained(live.trust),
            )
        };
        self.metrics.heartbeats.increment(1);
        HeartbeatResponse {
            status: "ok".into(),
            heartbeat_interval: self.config.heartbeat_interval_secs,
            assignment_version: version,
            assigned_containers: changed.map(|s| self.containers(&s)),
            drained,
        }
    }

    /// Removes a worker durably.
    pub async fn unregister(&self, id: &str, token: Option<&str>) -> ApiResult<WorkerId> {
        let (w, _) = self.authorize_worker(id, token)?;
        let removed = self
            .registry
            .remove(w.id)
            .ok_or_else(|| ApiError::NotFound(format!("no worker {id:?}")))?;
        let keep = lowered_trust(&removed);
        // What its last heartbeats brought is booked as it goes; taken under its lock, so no flush books it too.
        let (last_ms, booking) = {
            let mut live = removed.live.lock();
            (live.last_heartbeat_ms.unwrap_or(0), take_booking(&mut live))
        };
        let booked = (!booking.is_empty()).then(|| (last_ms, booking.clone()));
        if let Err(e) = self
            .store
            .delete_worker(w.id.to_string(), keep, booked, now_ms())
            .await
        {
            restore_booking(&mut removed.live.lock(), booking);
            self.registry.insert(removed);
            return Err(e.into());
        }
        // Its channel closes once the requests on it are done.
        w.channel.lock().take();
        Ok(w.id)
    }

    /// Whether a worker of this trust is drained: below the threshold, it gets no requests.
    pub fn drained(&self, trust: f64) -> bool {
        trust < self.config.trust_threshold
    }

    /// The operator sets a worker's trust (written with the next flush).
    pub fn set_trust(&self, w: &Worker, trust: f64) {
        let mut live = w.live.lock();
        tracing::info!(worker = %w.id, from = live.trust, to = trust, "trust set by the operator");
        live.trust = trust;
        live.dirty = true;
    }

    /// Applies what comparing answers found to the workers' trust ([`crate::verify`]); a worker whose trust falls
    /// below the threshold gets no more requests.
    pub fn judged(&self, verdict: &crate::verify::Verdict) {
        use crate::verify::{Verdict, confirmed, outvoted};
        let change = |id: WorkerId, f: fn(f64) -> f64| {
            let Some(w) = self.registry.get(id) else {
                return;
            };
            let mut live = w.live.lock();
            let was_drained = self.drained(live.trust);
            live.trust = f(live.trust);
            live.dirty = true;
            if !was_drained && self.drained(live.trust) {
                tracing::warn!(worker = %id, trust = live.trust, "drained: its answers disagree with other workers'");
            }
        };
        let [agreed, outvoted_counter, unresolved] = &self.metrics.verdicts;
        match verdict {
            Verdict::Agreed(ids) => {
                agreed.increment(1);
                for &id in ids {
                    change(id, confirmed);
                }
            }
            Verdict::Outvoted { wrong, right } => {
                outvoted_counter.increment(1);
                tracing::info!(worker = %wrong, "an answer outvoted by two other workers'");
                change(*wrong, outvoted);
                for &id in right {
                    change(id, confirmed);
                }
            }
            Verdict::Unresolved => unresolved.increment(1),
        }
    }

    /// Writes dirty heartbeat state durably, with the donated time and display names its heartbeats brought to the
    /// ledger, one chunk at a time: each chunk is committed before the next is built, so memory stays flat however
    /// many workers there are. (A chunk that fails to commit is not written again: the next heartbeat's state
    /// replaces its live rows, and its seconds of donated time are lost, as an accounting batch would be.)
    pub async fn flush(&self) -> Result<usize, StoreError> {
        #[derive(serde::Serialize)]
        struct Samples<'a> {
            gpus: &'a [commons_shared::api::GpuSample],
            containers: &'a [commons_shared::api::ContainerStatus],
        }
        const CHUNK: usize = 1024;
        let mut total = 0;
        let mut rows = Vec::with_capacity(CHUNK);
        for w in self.registry.all() {
            {
                let mut live = w.live.lock();
                if !live.dirty {
                    continue;
                }
                live.dirty = false;
                let booking = take_booking(&mut live);
                rows.push((
                    LiveRow {
                        id: w.id.to_string(),
                        last_heartbeat_ms: live.last_heartbeat_ms,
                        status: live.reported.as_str().into(),
                        load: live.load,
                        free_memory: live.free_memory.min(i64::MAX as u64) as i64,
                        agent_version: live.agent_version.to_string(),
                        endpoint: live.endpoint.as_deref().map(str::to_owned),
                        samples: serde_json::to_string(&Samples {
                            gpus: &live.gpus,
                            containers: &live.containers,
                        })
                        .unwrap_or_else(|_| "{}".into()),
                        requests: w.stats.requests() as i64,
                        errors: w.stats.errors() as i64,
                        trust: live.trust,
                    },
                    booking,
                ));
            }
            if rows.len() == CHUNK {
                total += rows.len();
                self.store
                    .write_live(std::mem::replace(&mut rows, Vec::with_capacity(CHUNK)))
                    .await?;
            }
        }
        total += rows.len();
        self.store.write_live(rows).await?;
        Ok(total)
    }

    /// Gives services with too few live workers to live workers that can hold them. Returns how many workers changed.
    pub fn rebalance(&self) -> usize {
        let mut coverage = self.refresh_coverage();
        let wanted: Vec<u32> = self
            .catalogue
            .services()
            .iter()
            .map(|s| s.replicas)
            .collect();
        if coverage.iter().zip(&wanted).all(|(c, w)| c >= w) {
            return 0;
        }
        let now = Instant::now();
        let mut candidates: Vec<(f64, Arc<Worker>)> = self
            .registry
            .all()
            .into_iter()
            .filter_map(|w| {
                let live = w.live.lock();
                (live.status(now, self.liveness) == WorkerStatus::Healthy)
                    .then(|| (live.load, w.clone()))
            })
            .collect();
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut changed = 0;
        for (_, w) in candidates {
            if coverage.iter().zip(&wanted).all(|(c, w)| c >= w) {
                break;
            }
            let mut live = w.live.lock();
            let current: Vec<usize> = live.services.iter().map(|&s| usize::from(s)).collect();
            let next = assign(
                w.machine.resources(),
                &self.catalogue,
                &coverage,
                &current,
                self.config.max_services_per_worker,
                false,
            );
            if next.len() == current.len() {
                continue;
            }
            for &i in &next[current.len()..] {
                coverage[i] += 1;
            }
            let old =
                std::mem::replace(&mut live.services, next.iter().map(|&i| i as u16).collect());
            live.assignment_version += 1;
            let (services, version) = (live.services.clone(), live.assignment_version);
            drop(live);
            self.registry.reassign(&w, &old, &services);
            self.store.write_assignment(
                w.id.to_string(),
                serde_json::to_string(&self.service_names(&services))
                    .unwrap_or_else(|_| "[]".into()),
                version,
            );
            changed += 1;
        }
        *self.coverage.lock() = coverage;
        changed
    }

    /// Forgets workers offline for longer than the retention. Returns how many.
    pub fn purge_offline(&self) -> usize {
        let now = Instant::now();
        let retention = Duration::from_secs(self.config.purge_offline_after_secs);
        let gone: Vec<WorkerId> = self
            .registry
            .all()
            .iter()
            .filter(|w| {
                now.saturating_duration_since(w.live.lock().last_seen)
                    >= self.liveness.offline_after + retention
            })
            .map(|w| w.id)
            .collect();
        let removed: Vec<_> = gone
            .iter()
            .filter_map(|id| self.registry.remove(*id))
            .collect();
        self.store.remember_trust(
            removed.iter().filter_map(|w| lowered_trust(w)).collect(),
            now_ms(),
        );
        self.store
            .purge(gone.iter().map(ToString::to_string).collect());
        self.registry.kinds().sweep();
        gone.len()
    }

    /// Forgets rate-limit state of quiet addresses.
    pub fn trim_limiters(&self) {
        self.register_limit.trim();
        self.admin.trim();
    }
}

/// A worker's DHT identity and trust, when its trust is below a new worker's: what is kept when it goes.
fn lowered_trust(w: &Worker) -> Option<(String, f64)> {
    let trust = w.live.lock().trust;
    let peer = w.peer_id.as_deref()?;
    (trust < crate::verify::NEW_TRUST).then(|| (peer.to_owned(), trust))
}

/// Takes what a worker's heartbeats brought to the ledger since it was last booked.
fn take_booking(live: &mut Live) -> Booking {
    let name = std::mem::take(&mut live.name_unbooked)
        .then(|| live.display_name.clone().flatten().map(String::from));
    Booking {
        online_ms: u64::from(std::mem::take(&mut live.unbooked_ms)),
        name,
    }
}

/// Puts back what [`take_booking`] took, when it could not be written (newer heartbeats may have added to it).
fn restore_booking(live: &mut Live, b: Booking) {
    let ms = u32::try_from(b.online_ms).unwrap_or(u32::MAX);
    live.unbooked_ms = live.unbooked_ms.saturating_add(ms);
    live.name_unbooked |= b.name.is_some();
    live.dirty |= !b.is_empty();
}

/// Replaces a worker's reported samples only when they changed: most heartbeats report the same containers, and a
/// boxed slice made from serde's vector reallocates it (to drop its spare capacity) under the worker's lock.
fn keep_or_replace<T: PartialEq>(slot: &mut Box<[T]>, reported: Vec<T>) {
    if **slot != *reported {
        *slot = reported.into_boxed_slice();
    }
}

/// A newly registered worker: a fresh id, healthy, version 1 of its assignment.
fn new_worker(
    new: NewWorker,
    kinds: &crate::machine::Kinds,
    class: commons_shared::tier::Classification,
    services: Vec<u16>,
    token_hash: auth::TokenHash,
) -> Worker {
    let mut id = [0u8; 16];
    rand::rng().fill_bytes(&mut id);
    let endpoint = new.endpoint.or_else(|| new.tunnel_url.clone());
    Worker {
        id: WorkerId::from_bytes(id),
        token_hash,
        tier: class.tier,
        roles: Roles {
            edge: class.edge,
            storage: class.storage,
        },
        live: parking_lot::Mutex::new(Live {
            reported: ReportedStatus::Healthy,
            load: 0.0,
            free_memory: 0,
            last_seen: Instant::now(),
            last_heartbeat_ms: None,
            gpus: Box::default(),
            containers: Box::default(),
            services,
            assignment_version: 1,
            agent_version: new.capabilities.agent_version.clone().into(),
            endpoint: endpoint.map(Into::into),
            display_name: None,
            name_unbooked: false,
            unbooked_ms: 0,
            trust: crate::verify::NEW_TRUST,
            rtt_ms: None,
            nat: None,
            paths: Box::default(),
            dirty: false,
        }),
        machine: kinds.machine(new.capabilities),
        ip_address: new.ip_address.map(Into::into),
        tunnel_url: new.tunnel_url.map(Into::into),
        legacy: new.legacy,
        registered_at_ms: now_ms(),
        peer_id: new.peer_id.map(Into::into),
        stats: RequestStats::default(),
        channel: Mutex::new(None),
    }
}

fn worker_from_row(
    row: WorkerRow,
    kinds: &crate::machine::Kinds,
    catalogue: &Catalogue,
    now: Instant,
    wall_ms: i64,
) -> Result<Worker, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("worker {}: {what}", row.id));
    let id: WorkerId = row.id.parse().map_err(|_| corrupt("id"))?;
    let tier = Tier::from_number(row.tier).ok_or_else(|| corrupt("tier"))?;
    let caps: Capabilities =
        serde_json::from_str(&row.capabilities).map_err(|_| corrupt("capabilities"))?;
    let names: Vec<String> =
        serde_json::from_str(&row.services).map_err(|_| corrupt("services"))?;
    // Services that left the catalogue are dropped; the rebalancer fills any gap.
    let services = names
        .iter()
        .filter_map(|n| catalogue.index_of(n))
        .map(|i| i as u16)
        .collect();
    #[derive(serde::Deserialize, Default)]
    struct Samples {
        #[serde(default)]
        gpus: Vec<commons_shared::api::GpuSample>,
        #[serde(default)]
        containers: Vec<commons_shared::api::ContainerStatus>,
    }
    let samples: Samples = serde_json::from_str(&row.live.samples).unwrap_or_default();
    // Carry the silence across the restart: a worker last heard 80 s ago is stale 10 s after start.
    let last_wall = row.live.last_heartbeat_ms.unwrap_or(row.registered_at_ms);
    let silent = Duration::from_millis(wall_ms.saturating_sub(last_wall).max(0) as u64);
    let last_seen = now.checked_sub(silent).unwrap_or(now);
    Ok(Worker {
        id,
        token_hash: row
            .token_hash
            .as_slice()
            .try_into()
            .map_err(|_| corrupt("token hash"))?,
        tier,
        roles: Roles {
            edge: row.roles & 1 != 0,
            storage: row.roles & 2 != 0,
        },
        machine: kinds.machine(caps),
        ip_address: row.ip_address.map(Into::into),
        tunnel_url: row.tunnel_url.map(Into::into),
        legacy: row.legacy,
        registered_at_ms: row.registered_at_ms,
        peer_id: row.peer_id.map(Into::into),
        live: parking_lot::Mutex::new(Live {
            reported: ReportedStatus::parse(&row.live.status).unwrap_or(ReportedStatus::Healthy),
            load: row.live.load,
            free_memory: row.live.free_memory.max(0) as u64,
            last_seen,
            last_heartbeat_ms: row.live.last_heartbeat_ms,
            gpus: samples.gpus.into_boxed_slice(),
            containers: samples.containers.into_boxed_slice(),
            services,
            assignment_version: row.assignment_version,
            agent_version: row.live.agent_version.into(),
            endpoint: row.endpoint.map(Into::into),
            display_name: None,
            name_unbooked: false,
            unbooked_ms: 0,
            trust: row.live.trust.clamp(0.0, 1.0),
            rtt_ms: None,
            nat: None,
            paths: Box::default(),
            dirty: false,
        }),
        stats: RequestStats::with_counts(
            row.live.requests.max(0) as u64,
            row.live.errors.max(0) as u64,
        ),
        channel: Mutex::new(None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_heartbeats_bring_is_taken_once_and_put_back_when_not_written() {
        let new = NewWorker {
            capabilities: Capabilities::default(),
            endpoint: None,
            tunnel_url: None,
            ip_address: None,
            edge_opt_in: false,
            enrollment_token: None,
            legacy: false,
            peer_id: None,
        };
        let class = classify(&new.capabilities, false);
        let w = new_worker(
            new,
            &crate::machine::Kinds::default(),
            class,
            Vec::new(),
            [0; 32],
        );
        let mut live = w.live.lock();
        assert!(
            take_booking(&mut live).is_empty(),
            "nothing before a heartbeat"
        );
        live.unbooked_ms = 30_000;
        live.display_name = Some(Some("Ada".into()));
        live.name_unbooked = true;
        let b = take_booking(&mut live);
        assert_eq!(
            b,
            Booking {
                online_ms: 30_000,
                name: Some(Some("Ada".into())),
            }
        );
        assert!(take_booking(&mut live).is_empty(), "taken once");
        // The write failed; a heartbeat added a second meanwhile.
        live.unbooked_ms = 1_000;
        live.dirty = false;
        restore_booking(&mut live, b);
        assert_eq!(live.unbooked_ms, 31_000);
        assert!(live.name_unbooked && live.dirty, "the next flush books it");
    }

    #[test]
    fn reported_samples_are_replaced_only_when_they_change() {
        let mut slot: Box<[u32]> = vec![1, 2].into_boxed_slice();
        let before = slot.as_ptr();
        keep_or_replace(&mut slot, vec![1, 2]);
        assert_eq!(
            slot.as_ptr(),
            before,
            "the same samples keep their allocation"
        );
        keep_or_replace(&mut slot, vec![3]);
        assert_eq!(&*slot, &[3]);
        keep_or_replace(&mut slot, Vec::new());
        assert!(slot.is_empty());
    }
}
