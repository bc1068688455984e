//! The agent: joins a coordinator, heartbeats, pauses and resumes, fails over, quits cleanly.
//!
//! Its state is published on a watch channel (`Stopped → Registering → Active ⇄ Paused`, or `Error`) for a UI
//! or the control API to follow; commands arrive on a channel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use commons_shared::api::{
    ContainerAssignment, ContainerState, ContainerStatus, HeartbeatRequest, RegisterRequest,
    RegisterResponse, ReportedStatus,
};
use commons_shared::backoff::Backoff;
use rand::Rng;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::client::{CallError, Client};
use crate::containers::Engine;
use crate::credentials::{CredentialStore, Credentials};
use crate::gateway::Gateway;
use crate::hardware::{self, GpuProbe, LoadSampler};
use crate::settings::{Settings, TunnelKind};
use crate::tunnel::{Mode, Tunnel};

/// What the agent is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum State {
    /// Not running.
    Stopped,
    /// Joining a coordinator.
    Registering,
    /// Fetching images (with containers).
    Pulling,
    /// Donating.
    Active,
    /// Paused by the volunteer (or a hot GPU).
    Paused,
    /// Stuck, with why.
    Error(String),
}

/// What the agent can be told.
#[derive(Debug)]
pub enum Command {
    /// Stop donating, stay registered.
    Pause,
    /// Donate again.
    Resume,
    /// Unregister and stop.
    Quit,
    /// Stop for another process to take over (an update): containers stopped, the DHT record withdrawn, the tunnel
    /// closed, but still registered and the credentials kept, so the next start resumes as the same worker.
    Handover,
    /// New settings, applied live: caps (containers are recreated under the new ones), the schedule, power and
    /// idle rules, the GPU temperature limit. The connection settings (coordinator, engine, gateway, DHT) apply at
    /// the next start.
    Apply(Box<Settings>),
}

/// How an agent ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It quit (unregistered), or was never joined.
    Quit,
    /// It handed over to another process (an update), still registered.
    Handover,
}

/// Why an agent stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The local gateway cannot listen.
    #[error("the gateway cannot start: {0}")]
    Gateway(#[from] commons_server::serve::ServeError),
    /// The keyring (the worker's credentials, or the named tunnel's token) cannot be used.
    #[error(transparent)]
    Credentials(#[from] crate::credentials::CredentialError),
    /// The agent's task panicked.
    #[error("the agent's task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// One assigned container, as a UI shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerView {
    /// Container name (from the assignment).
    pub name: String,
    /// The service it runs.
    pub service: String,
    /// Its image.
    pub image: String,
    /// Its state (pulling until the engine has the image).
    pub state: ContainerState,
}

/// Who the agent is right now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Session {
    /// Worker id.
    pub worker_id: String,
    /// The coordinator it heartbeats.
    pub coordinator_url: String,
    /// Registrations so far in this run (failovers and re-registrations add to it).
    pub registrations: u32,
    /// The tier the coordinator placed this worker in (1–3), once it has said.
    pub tier: Option<u8>,
    /// The assigned containers and their states.
    pub containers: Vec<ContainerView>,
    /// Where the coordinator reaches this worker's services (the tunnel's or the gateway's URL).
    pub endpoint: Option<String>,
    /// Why donating is held back now (outside the schedule, on battery, in use, a GPU too hot), if it is.
    pub held: Option<String>,
    /// Something the volunteer can fix, in plain words with the next step (e.g. the container engine is missing).
    pub problem: Option<String>,
    /// Paused by the volunteer (not a hold): kept over an update's restart.
    pub paused: bool,
}

/// A running agent.
#[derive(Debug)]
pub struct AgentHandle {
    /// Its state.
    pub state: watch::Receiver<State>,
    /// Its session.
    pub session: watch::Receiver<Session>,
    commands: mpsc::Sender<Command>,
    task: JoinHandle<Result<Ended, AgentError>>,
    progress: Option<mpsc::Receiver<crate::containers::Progress>>,
    dht: Arc<std::sync::OnceLock<commons_dht::Dht>>,
}

impl AgentHandle {
    /// Image pull progress (bytes per layer), for a progress bar; `None` after the first call.
    pub fn take_progress(&mut self) -> Option<mpsc::Receiver<crate::containers::Progress>> {
        self.progress.take()
    }

    /// The agent's DHT node, once started (never with `dht = false`).
    pub fn dht(&self) -> Option<commons_dht::Dht> {
        self.dht.get().cloned()
    }

    /// Sends a command.
    pub async fn send(&self, c: Command) -> bool {
        self.commands.send(c).await.is_ok()
    }

    /// A sender for commands (the control API holds one).
    pub fn commands(&self) -> mpsc::Sender<Command> {
        self.commands.clone()
    }

    /// Waits until the state satisfies `f`, at most `timeout`.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        f: impl Fn(&State) -> bool,
    ) -> Option<State> {
        tokio::time::timeout(timeout, self.state.wait_for(|s| f(s)))
            .await
            .ok()?
            .ok()
            .map(|s| s.clone())
    }

    /// Stops the agent at once, as a crash would: nothing is unregistered or forgotten.
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Waits for the agent to finish.
    pub async fn join(self) -> Result<(), AgentError> {
        self.finish().await.map(|_| ())
    }

    /// Waits for the agent to finish, and says how it ended.
    pub async fn finish(self) -> Result<Ended, AgentError> {
        self.task.await?
    }
}

/// How an agent starts, besides its settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// The version it reports (the binary's, which may differ from this library's).
    pub version: String,
    /// Start paused (an update's trial run: heard by the coordinator, running nothing).
    pub paused: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").into(),
            paused: false,
        }
    }
}

/// Starts an agent.
pub fn start(
    settings: Settings,
    creds: Arc<dyn CredentialStore>,
    probe: Arc<dyn GpuProbe>,
) -> AgentHandle {
    start_with(settings, creds, probe, Options::default())
}

/// Starts an agent with [`Options`].
pub fn start_with(
    settings: Settings,
    creds: Arc<dyn CredentialStore>,
    probe: Arc<dyn GpuProbe>,
    options: Options,
) -> AgentHandle {
    let (state_tx, state) = watch::channel(State::Stopped);
    let (session_tx, session) = watch::channel(Session {
        paused: options.paused,
        ..Session::default()
    });
    let (commands, rx) = mpsc::channel(16);
    let (progress_tx, progress) = mpsc::channel(256);
    let dht = Arc::new(std::sync::OnceLock::new());
    let mut agent = Agent {
        dht: dht.clone(),
        dht_joined: Arc::new(watch::channel(None).0),
        caps: None,
        published: None,
        settings,
        creds,
        probe,
        client: Client::new(),
        state: state_tx,
        session: session_tx,
        rx,
        version: options.version,
        hold: None,
        hot: false,
        idle: crate::idle::X11Idle::default(),
        engine: None,
        desired: None,
        containers: Vec::new(),
        gateway: None,
        tunnel: None,
        reported_endpoint: None,
        progress: progress_tx,
    };
    let task = tokio::spawn(async move { agent.run().await });
    AgentHandle {
        state,
        session,
        commands,
        task,
        progress: Some(progress),
        dht,
    }
}

struct Agent {
    settings: Settings,
    creds: Arc<dyn CredentialStore>,
    probe: Arc<dyn GpuProbe>,
    client: Client,
    state: watch::Sender<State>,
    session: watch::Sender<Session>,
    rx: mpsc::Receiver<Command>,
    /// The version reported to the coordinator.
    version: String,
    /// Why donating is held back by the schedule, battery power or a volunteer at the keyboard, if it is.
    hold: Option<String>,
    /// A GPU was hotter than the limit at the last heartbeat.
    hot: bool,
    idle: crate::idle::X11Idle,
    engine: Option<Engine>,
    /// The assignment; `None` until the coordinator has said it (after a restart, until the first heartbeat):
    /// reconciling against nothing would remove what should be adopted.
    desired: Option<Vec<ContainerAssignment>>,
    containers: Vec<ContainerStatus>,
    gateway: Option<Gateway>,
    tunnel: Option<Tunnel>,
    reported_endpoint: Option<String>,
    progress: mpsc::Sender<crate::containers::Progress>,
    dht: Arc<std::sync::OnceLock<commons_dht::Dht>>,
    /// `None` while joining, then whether the node is in the DHT.
    dht_joined: Arc<watch::Sender<Option<bool>>>,
    caps: Option<commons_shared::caps::Capabilities>,
    /// What was last published in the DHT (`None`: nothing, or withdrawn).
    published: Option<commons_shared::dht::WorkerRecord>,
}

/// The joined coordinator.
struct Joined {
    creds: Credentials,
    interval: Duration,
    version: u64,
}

enum Next {
    End(Ended),
    Rejoin { via_entry: bool },
}

fn jitter(max_ms: u64) -> Duration {
    Duration::from_millis(rand::rng().random_range(0..=max_ms))
}

impl Agent {
    fn set(&self, s: State) {
        self.state.send_if_modified(|cur| {
            let changed = *cur != s;
            *cur = s;
            changed
        });
    }

    /// Paused by the volunteer: the session says it (the one place it is kept).
    fn paused(&self) -> bool {
        self.session.borrow().paused
    }

    fn set_paused(&self, paused: bool) {
        self.update_session(|s| s.paused = paused);
    }

    /// Held back by the schedule, battery power or a volunteer at the keyboard.
    fn held(&self) -> bool {
        self.hold.is_some()
    }

    /// Publishes why donating is held back: the hold rules, else a hot GPU.
    fn show_held(&self) {
        let why = self.hold.clone().or_else(|| {
            self.hot
                .then(|| format!("a GPU is hotter than {} °C", self.settings.max_gpu_temp_c))
        });
        self.update_session(|s| s.held = why);
    }

    fn active_state(&self) -> State {
        if self.paused() || self.held() {
            State::Paused
        } else {
            State::Active
        }
    }

    /// Holds donating back outside the schedule or on battery, and lets it go again.
    async fn update_hold(&mut self) {
        let reason = crate::schedule::blocked(
            &self.settings.windows(),
            crate::schedule::local_minute(),
            self.settings.on_ac_power_only,
            crate::schedule::on_mains(std::path::Path::new("/sys/class/power_supply")),
            self.settings.idle_only
                && crate::idle::in_use(
                    &self.idle,
                    Duration::from_secs(u64::from(self.settings.idle_after_minutes) * 60),
                ),
        );
        let was = self.held();
        self.hold = reason.clone();
        self.show_held();
        if self.held() == was {
            return;
        }
        match reason {
            Some(r) => {
                tracing::info!(reason = %r, "holding donations back");
                self.pause_containers().await;
            }
            None if !self.paused() => {
                tracing::info!("donating again");
                self.reconcile().await;
            }
            None => {}
        }
    }

    async fn run(&mut self) -> Result<Ended, AgentError> {
        self.set(State::Registering);
        if self.settings.containers {
            match Engine::connect(self.settings.policy()).await {
                Ok(e) => self.engine = Some(e),
                Err(e) => {
                    tracing::warn!("{e}");
                    self.session
                        .send_modify(|s| s.problem = Some(crate::containers::engine_hint(&e)));
                }
            }
        }
        if let Err(e) = self.open_gateway().await {
            self.set(State::Error(e.to_string()));
            return Err(e);
        }
        self.start_dht().await;
        let creds = self.creds.clone();
        let mut joined = match crate::blocking(move || creds.load()).await {
            Ok(Some(c)) => {
                self.capabilities().await;
                // Resume as the worker we were; the first heartbeat tells whether the coordinator still knows us.
                self.session.send_modify(|s| {
                    s.worker_id = c.worker_id.clone();
                    s.coordinator_url = c.coordinator_url.clone();
                });
                Some(Joined {
                    creds: c,
                    interval: Duration::from_secs(1),
                    version: 0,
                })
            }
            Ok(None) => None,
            Err(e) => {
                self.set(State::Error(e.to_string()));
                return Err(e.into());
            }
        };
        let mut via_entry = false;
        loop {
            let j = match joined.take() {
                Some(j) => j,
                None => match self.join(via_entry).await {
                    Some(j) => j,
                    None => {
                        self.stop(None, false).await;
                        return Ok(Ended::Quit);
                    }
                },
            };
            match self.donate(j).await {
                Next::End(e) => return Ok(e),
                Next::Rejoin { via_entry: v } => {
                    via_entry = v;
                    self.set(State::Registering);
                }
            }
        }
    }

    /// This machine's capabilities, detected once per join (not on every retry).
    async fn capabilities(&mut self) -> commons_shared::caps::Capabilities {
        let probe = self.probe.clone();
        let mut caps = crate::blocking(move || hardware::detect(probe.as_ref()))
            .await
            .capabilities;
        caps.agent_version = self.version.clone();
        caps.region = self.settings.region.clone().unwrap_or_default();
        self.caps = Some(caps.clone());
        caps
    }

    fn register_request(&self, caps: &commons_shared::caps::Capabilities) -> RegisterRequest {
        RegisterRequest {
            capabilities: caps.clone(),
            // The tunnel's address can change between attempts: read it each time.
            endpoint: self.endpoint(),
            enrollment_token: self.settings.enrollment_token.clone(),
            peer_id: self.dht.get().map(|d| d.peer_id().to_base58()),
            ..Default::default()
        }
    }

    /// Starts the DHT node and joins through cached seeds or the edge's; without it the agent works through its
    /// coordinator alone.
    async fn start_dht(&mut self) {
        if !self.settings.dht {
            return;
        }
        let dht = match crate::dht::start(&self.settings, self.creds.clone()).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "no DHT node; carrying on through the coordinator");
                return;
            }
        };
        let _ = self.dht.set(dht.clone());
        // Joining runs beside registration: dead cached seeds must not hold the agent back.
        let (settings, client, joined) = (
            self.settings.clone(),
            self.client.clone(),
            self.dht_joined.clone(),
        );
        tokio::spawn(async move {
            match crate::dht::join(&dht, &settings, &client).await {
                Ok(took) => {
                    tracing::info!(peer = %dht.peer_id(), ms = took.as_millis() as u64, "joined the DHT");
                    joined.send_replace(Some(true));
                }
                Err(e) => {
                    tracing::info!(error = %e, "not in the DHT yet; the coordinator's seeds will do");
                    // A join through the coordinator's seeds may have succeeded meanwhile.
                    joined.send_if_modified(|j| {
                        let unset = j.is_none();
                        if unset {
                            *j = Some(false);
                        }
                        unset
                    });
                }
            }
        });
    }

    /// Whether the node is in the DHT, waiting at most `wait` for a join in progress.
    async fn in_dht(&self, wait: Duration) -> bool {
        if self.dht.get().is_none() {
            return false;
        }
        let mut rx = self.dht_joined.subscribe();
        tokio::time::timeout(wait, rx.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(Result::ok)
            .is_some_and(|j| *j == Some(true))
    }

    /// Coordinators to try, in order: from the DHT (least loaded first, not the one that just failed), then the
    /// configured entry (the edge, or a fixed coordinator, which is then the only choice).
    async fn entries(&self, failover: bool) -> Vec<String> {
        let failed = self.session.borrow().coordinator_url.clone();
        let mut list = Vec::new();
        if (failover || self.settings.coordinator_url.is_none())
            && self
                .in_dht(Duration::from_millis(self.settings.dht_join_wait_ms))
                .await
            && let Some(d) = self.dht.get()
        {
            let region = self.settings.region.clone().unwrap_or_default();
            let except = failover.then_some(failed.as_str());
            for c in crate::dht::coordinators(d, &region, except).await {
                list.push(c.url);
            }
        }
        let entry = if failover {
            self.settings.edge_url.clone()
        } else {
            self.settings.entry_url().to_owned()
        };
        list.push(entry);
        list
    }

    /// Registers, retrying with backoff and jitter; `None` when told to quit meanwhile.
    async fn join(&mut self, failover: bool) -> Option<Joined> {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
        let caps = self.capabilities().await;
        loop {
            let req = self.register_request(&caps);
            for entry in self.entries(failover).await {
                match self.client.register(&entry, &req).await {
                    Ok(r) => {
                        let seeds = r.dht_seeds.clone();
                        let j = self.joined(r).await;
                        self.join_dht_via(&seeds).await;
                        return Some(j);
                    }
                    Err(e) => {
                        tracing::warn!(entry = %entry, error = %e, "registration failed");
                        if let CallError::Refused {
                            status, message, ..
                        } = &e
                            && (*status == 401 || *status == 403 || *status == 422)
                        {
                            self.set(State::Error(format!("registration refused: {message}")));
                        }
                    }
                }
            }
            let wait = backoff.fail();
            let wait = wait + jitter(wait.as_millis() as u64 / 2);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                c = self.rx.recv() => match c {
                    Some(Command::Quit | Command::Handover) | None => return None,
                    Some(Command::Pause) => self.set_paused(true),
                    Some(Command::Resume) => self.set_paused(false),
                    Some(Command::Apply(s)) => self.apply(*s).await,
                },
            }
        }
    }

    /// Joins the DHT through the seeds a coordinator handed out, when the cache and the edge gave none.
    async fn join_dht_via(&mut self, seeds: &[String]) {
        let (Some(d), false) = (self.dht.get(), *self.dht_joined.borrow() == Some(true)) else {
            return;
        };
        let seeds = commons_dht::parse_addrs(seeds);
        if seeds.is_empty() {
            return;
        }
        match d.bootstrap(&seeds).await {
            Ok(_) => {
                self.dht_joined.send_replace(Some(true));
                crate::dht::cache_seeds(&self.settings.seed_cache_path(), &seeds);
                tracing::info!("joined the DHT through the coordinator's seeds");
            }
            Err(e) => tracing::info!(error = %e, "the coordinator's DHT seeds did not answer"),
        }
    }

    /// Publishes this worker in the DHT when it changed (services, endpoint, coordinator, load by more than 0.1),
    /// and withdraws it while paused; the node refreshes what was published.
    async fn publish(&mut self, j: &Joined, load: f64) {
        let Some(d) = self.dht.get().cloned() else {
            return;
        };
        if self.paused() || self.held() {
            if self.published.take().is_some() {
                d.withdraw().await;
            }
            return;
        }
        let services = self
            .desired
            .iter()
            .flatten()
            .map(|a| a.service.clone())
            .collect();
        let caps = self.caps.clone().unwrap_or_default();
        let rec = crate::dht::worker_record(
            &j.creds.worker_id,
            services,
            self.endpoint(),
            &j.creds.coordinator_url,
            &caps,
            load,
        );
        let same = self.published.as_ref().is_some_and(|p| {
            (p.load - rec.load).abs() <= 0.1
                && commons_shared::dht::WorkerRecord {
                    load: 0.0,
                    ..p.clone()
                } == commons_shared::dht::WorkerRecord {
                    load: 0.0,
                    ..rec.clone()
                }
        });
        if same {
            return;
        }
        match d.publish_worker(rec.clone()).await {
            Ok(()) => self.published = Some(rec),
            Err(e) => tracing::warn!(error = %e, "cannot publish in the DHT"),
        }
    }

    async fn joined(&mut self, r: RegisterResponse) -> Joined {
        let creds = Credentials {
            worker_id: r.worker_id.to_string(),
            worker_token: r.worker_token.clone(),
            coordinator_url: r.coordinator_url.clone(),
        };
        let (store, saved) = (self.creds.clone(), creds.clone());
        if let Err(e) = crate::blocking(move || store.save(&saved)).await {
            tracing::error!(error = %e, "cannot keep the credentials; they last until this agent stops");
        }
        self.session.send_modify(|s| {
            s.worker_id = creds.worker_id.clone();
            s.coordinator_url = creds.coordinator_url.clone();
            s.registrations += 1;
            s.tier = Some(r.tier.number());
        });
        tracing::info!(worker = %creds.worker_id, coordinator = %creds.coordinator_url, tier = r.tier.number(), "joined");
        self.desired = Some(r.assigned_containers.clone());
        self.show_containers();
        self.reported_endpoint = r.endpoint.clone();
        Joined {
            creds,
            interval: Duration::from_secs(r.heartbeat_interval.max(1)),
            version: r.assignment_version,
        }
    }

    /// The next heartbeat, and whether a GPU is too hot. The samples (sysinfo, NVML) are read off the async threads.
    async fn heartbeat_request(
        &self,
        j: &Joined,
        sampler: &mut Option<LoadSampler>,
    ) -> (HeartbeatRequest, bool) {
        let (mut taken, probe) = (sampler.take().unwrap_or_default(), self.probe.clone());
        let (taken, load, gpus) = crate::blocking(move || {
            let load = taken.sample();
            (taken, load, probe.read().unwrap_or_default())
        })
        .await;
        *sampler = Some(taken);
        let hot = gpus
            .iter()
            .any(|g| g.temperature_c > self.settings.max_gpu_temp_c);
        let status = if self.paused() || self.held() || hot {
            ReportedStatus::Paused
        } else if load.cpu > 0.9 {
            ReportedStatus::Busy
        } else {
            ReportedStatus::Healthy
        };
        let busy = self.gateway.as_ref().map_or(0.0, |g| g.routes.load());
        let hb = HeartbeatRequest {
            worker_id: j.creds.worker_id.clone(),
            status,
            load: load.cpu.max(busy),
            free_memory_bytes: Some(load.free_memory),
            available_memory: None,
            gpus: hardware::gpus_to_samples(&gpus),
            containers: self.containers.clone(),
            endpoint: self
                .endpoint()
                .filter(|e| Some(e) != self.reported_endpoint.as_ref()),
            assignment_version: Some(j.version),
            agent_version: Some(self.version.clone()),
        };
        (hb, hot)
    }

    /// Heartbeats until something ends this session.
    async fn donate(&mut self, mut j: Joined) -> Next {
        let mut sampler = Some(LoadSampler::new());
        let probe_every = Duration::from_millis(self.settings.probe_interval_ms);
        let mut next_beat = Instant::now();
        let mut next_probe = Instant::now() + probe_every;
        let mut probe_failures = 0;
        let mut beat_failures = 0;
        let reconcile_every = Duration::from_secs(5);
        let mut next_reconcile = Instant::now() + reconcile_every;
        self.update_hold().await;
        if !self.paused()
            && !self.held()
            && self.engine.is_some()
            && self.desired.as_ref().is_some_and(|d| !d.is_empty())
        {
            self.set(State::Pulling);
            self.reconcile().await;
        }
        loop {
            let now = Instant::now();
            if now >= next_reconcile {
                if !self.paused() && !self.held() {
                    self.reconcile().await;
                }
                next_reconcile = Instant::now() + reconcile_every;
            }
            if now >= next_beat {
                self.update_hold().await;
                let (hb, hot) = self.heartbeat_request(&j, &mut sampler).await;
                match self
                    .client
                    .heartbeat(&j.creds.coordinator_url, &j.creds.worker_token, &hb)
                    .await
                {
                    Ok(r) => {
                        beat_failures = 0;
                        if hb.endpoint.is_some() {
                            self.reported_endpoint = hb.endpoint.clone();
                        }
                        j.interval = Duration::from_secs(r.heartbeat_interval.max(1));
                        if let Some(list) = r.assigned_containers {
                            j.version = r.assignment_version;
                            tracing::info!(containers = list.len(), "new assignment");
                            self.desired = Some(list);
                            self.show_containers();
                            if !self.paused() && !self.held() {
                                self.reconcile().await;
                            }
                        }
                        self.hot = hot;
                        self.show_held();
                        self.show_endpoint();
                        self.set(if hot || self.held() {
                            State::Paused
                        } else {
                            self.active_state()
                        });
                        self.publish(&j, hb.load).await;
                    }
                    Err(CallError::Unknown(status)) => {
                        tracing::info!(
                            status,
                            "the coordinator no longer knows this worker; registering again"
                        );
                        self.forget_credentials().await;
                        return Next::Rejoin { via_entry: false };
                    }
                    Err(e) => {
                        beat_failures += 1;
                        tracing::warn!(error = %e, "heartbeat failed");
                        if beat_failures >= 2 {
                            return Next::Rejoin { via_entry: true };
                        }
                    }
                }
                next_beat = Instant::now() + j.interval;
            }
            if now >= next_probe {
                if self
                    .client
                    .alive(&j.creds.coordinator_url, Duration::from_millis(1500))
                    .await
                {
                    probe_failures = 0;
                } else {
                    probe_failures += 1;
                    tracing::warn!(coordinator = %j.creds.coordinator_url, "coordinator not answering");
                    if probe_failures >= 2 {
                        tracing::warn!("coordinator gone; failing over through the edge");
                        tokio::time::sleep(jitter(500)).await;
                        return Next::Rejoin { via_entry: true };
                    }
                }
                // Probe faster while in doubt.
                next_probe = Instant::now()
                    + if probe_failures > 0 {
                        probe_every / 3
                    } else {
                        probe_every
                    };
            }
            let wake = next_beat.min(next_probe).min(next_reconcile);
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                c = self.rx.recv() => match c {
                    Some(Command::Pause) => {
                        self.set_paused(true);
                        self.pause_containers().await;
                        self.set(State::Paused);
                        next_beat = Instant::now();
                    }
                    Some(Command::Resume) => {
                        self.set_paused(false);
                        if !self.held() {
                            self.reconcile().await;
                        }
                        self.set(self.active_state());
                        next_beat = Instant::now();
                    }
                    Some(Command::Apply(s)) => {
                        self.apply(*s).await;
                        self.set(self.active_state());
                        next_beat = Instant::now();
                    }
                    Some(Command::Quit) | None => { self.stop(Some(&j), false).await; return Next::End(Ended::Quit); }
                    Some(Command::Handover) => { self.stop(Some(&j), true).await; return Next::End(Ended::Handover); }
                },
            }
        }
    }

    /// Starts the gateway and the tunnel in front of it.
    async fn open_gateway(&mut self) -> Result<(), AgentError> {
        let g = Gateway::start(self.settings.gateway_listen).await?;
        let mode = match self.settings.tunnel {
            TunnelKind::Quick => Mode::Quick {
                program: self.settings.cloudflared.clone(),
                to: g.url(),
            },
            TunnelKind::Named => Mode::Named {
                program: self.settings.cloudflared.clone(),
                token: crate::blocking(crate::credentials::tunnel_token).await?,
                url: self.settings.tunnel_hostname.clone().unwrap_or_default(),
            },
            TunnelKind::None => {
                Mode::None(self.settings.endpoint.clone().unwrap_or_else(|| g.url()))
            }
        };
        let mut tunnel = Tunnel::start(mode);
        // A quick tunnel needs a moment for its address; register without one rather than wait forever.
        let _ = tokio::time::timeout(
            Duration::from_secs(30),
            tunnel.url.wait_for(Option::is_some),
        )
        .await;
        self.gateway = Some(g);
        self.tunnel = Some(tunnel);
        self.show_endpoint();
        Ok(())
    }

    /// Where the coordinator reaches this worker now.
    fn endpoint(&self) -> Option<String> {
        self.tunnel.as_ref().and_then(|t| t.url.borrow().clone())
    }

    /// Makes the containers match the assignment; their states go into the next heartbeat.
    async fn reconcile(&mut self) {
        let (Some(engine), Some(desired)) = (self.engine.as_mut(), self.desired.as_ref()) else {
            return;
        };
        let result = engine.reconcile(desired, Some(&self.progress)).await;
        if let (Ok(ours), Some(g)) = (engine.ours().await, &self.gateway) {
            g.routes.set(
                ours.into_iter()
                    .filter(|c| c.running)
                    .map(|c| (c.service, c.host_port))
                    .collect(),
            );
        }
        match result {
            Ok(states) => self.containers = states,
            Err(e) => {
                tracing::warn!(error = %e, "containers could not be brought up");
                self.containers = self
                    .desired
                    .iter()
                    .flatten()
                    .map(|a| ContainerStatus {
                        name: a.name.clone(),
                        state: ContainerState::Failed,
                        restarts: 0,
                    })
                    .collect();
            }
        }
        self.show_containers();
    }

    /// Changes the published session, taking the channel's write lock only when something changed: a reader may
    /// hold a borrow for a while (a UI), and an unchanged value must not wait for it.
    fn update_session(&self, f: impl FnOnce(&mut Session)) {
        let mut next = self.session.borrow().clone();
        f(&mut next);
        if *self.session.borrow() != next {
            self.session.send_replace(next);
        }
    }

    /// Publishes the assigned containers with their states in the session (pulling until the engine reports one).
    fn show_containers(&self) {
        let views: Vec<ContainerView> = self
            .desired
            .iter()
            .flatten()
            .map(|a| ContainerView {
                name: a.name.clone(),
                service: a.service.clone(),
                image: a.image.clone(),
                state: self.containers.iter().find(|c| c.name == a.name).map_or(
                    // Not pulling when nothing runs: paused, held back, or no container engine.
                    if self.paused() || self.held() || self.engine.is_none() {
                        ContainerState::Stopped
                    } else {
                        ContainerState::Pulling
                    },
                    |c| c.state,
                ),
            })
            .collect();
        self.update_session(|s| s.containers = views);
    }

    /// Publishes where the coordinator reaches this worker (a quick tunnel's address comes late and can change).
    fn show_endpoint(&self) {
        let e = self.endpoint();
        self.update_session(|s| s.endpoint = e);
    }

    /// Takes new settings live: the hold rules at once, and the containers recreated when their caps changed.
    async fn apply(&mut self, new: Settings) {
        let policy = new.policy();
        self.settings = new;
        if let Some(engine) = self.engine.as_mut() {
            engine.set_policy(policy);
        }
        tracing::info!("settings applied");
        self.update_hold().await;
        if !self.paused() && !self.held() {
            self.reconcile().await;
        }
    }

    async fn pause_containers(&mut self) {
        if let Some(engine) = self.engine.as_ref() {
            if let Err(e) = engine.stop_all().await {
                tracing::warn!(error = %e, "could not stop the containers");
            }
            for c in &mut self.containers {
                c.state = ContainerState::Stopped;
            }
        }
        self.show_containers();
    }

    /// Leaves cleanly: stops its tunnel, removes its containers, unregisters, forgets the credentials, reports Stopped.
    /// A `handover` stops the containers instead, for the next process to adopt, and stays registered.
    async fn stop(&mut self, j: Option<&Joined>, handover: bool) {
        if let Some(d) = self.dht.get() {
            d.withdraw().await;
            d.shutdown().await;
        }
        if let Some(t) = self.tunnel.take() {
            t.stop().await;
        }
        self.gateway = None;
        if handover {
            self.pause_containers().await;
        } else if let Some(engine) = self.engine.as_mut()
            && let Err(e) = engine.remove_all().await
        {
            tracing::warn!(error = %e, "could not remove the containers");
        }
        if let Some(j) = j.filter(|_| !handover) {
            match self
                .client
                .unregister(
                    &j.creds.coordinator_url,
                    &j.creds.worker_id,
                    &j.creds.worker_token,
                )
                .await
            {
                Ok(()) | Err(CallError::Unknown(_)) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not unregister; the coordinator will mark this worker stale")
                }
            }
            self.forget_credentials().await;
        }
        self.set(State::Stopped);
    }

    /// Forgets the worker's credentials (the keyring, off the async threads).
    async fn forget_credentials(&self) {
        let store = self.creds.clone();
        if let Err(e) = crate::blocking(move || store.clear()).await {
            tracing::warn!(error = %e, "could not forget the credentials");
        }
    }
}
