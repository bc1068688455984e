//! The app's hold on the agent core: start donating, pause (now, for a while), resume, quit, and the status the tray
//! and the window show. No Tauri here: the commands and the tray are thin adapters over [`Donor`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use commons_agent::agent::{self, AgentHandle, Command, ContainerView, State};
use commons_agent::credentials::CredentialStore;
use commons_agent::hardware::{self, Detected, GpuProbe};
use commons_agent::settings::Settings;
use commons_agent::update::{Staged, UpdateError, Updater};
pub use commons_shared::desktop::{
    AppError, ContainerRow, DonorState, Hardware, Limits, Status, UpdatePhase, UpdateView,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, watch};

/// The caps and rules in a settings file.
fn limits_of(s: &Settings) -> Limits {
    Limits {
        cpu_percent: s.cpu_percent,
        memory_mb: s.memory_mb,
        scratch_mb: s.scratch_mb,
        models_disk_mb: s.models_disk_mb,
        allow_gpu: s.allow_gpu,
        gpu_percent: s.gpu_percent,
        gpus: s.gpus.clone(),
        max_gpu_temp_c: s.max_gpu_temp_c,
        idle_only: s.idle_only,
        on_ac_power_only: s.on_ac_power_only,
        schedule: s.schedule.clone(),
        display_name: s.display_name.clone(),
    }
}

/// Puts the caps and rules into the settings.
fn put_limits(l: Limits, s: &mut Settings) {
    let Limits {
        cpu_percent,
        memory_mb,
        scratch_mb,
        models_disk_mb,
        allow_gpu,
        gpu_percent,
        gpus,
        max_gpu_temp_c,
        idle_only,
        on_ac_power_only,
        schedule,
        display_name,
    } = l;
    s.display_name = display_name
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty());
    s.cpu_percent = cpu_percent;
    s.memory_mb = memory_mb;
    s.scratch_mb = scratch_mb;
    s.models_disk_mb = models_disk_mb;
    s.allow_gpu = allow_gpu;
    s.gpu_percent = gpu_percent;
    s.gpus = gpus;
    s.max_gpu_temp_c = max_gpu_temp_c;
    s.idle_only = idle_only;
    s.on_ac_power_only = on_ac_power_only;
    s.schedule = schedule
        .into_iter()
        .map(|w| w.trim().to_owned())
        .filter(|w| !w.is_empty())
        .collect();
}

/// Image pull progress: per image, per layer, (bytes so far, bytes in all).
type Pulls = HashMap<String, HashMap<String, (u64, u64)>>;

/// Time spent donating (active), kept in a small file next to the settings so it adds up over runs.
#[derive(Debug)]
struct Clock {
    path: PathBuf,
    /// Seconds before the current active stretch, and when that stretch began.
    inner: parking_lot::Mutex<(u64, Option<Instant>)>,
}

#[derive(Serialize, Deserialize)]
struct ClockFile {
    donated_secs: u64,
}

impl Clock {
    fn open(path: PathBuf) -> Self {
        let secs = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<ClockFile>(&t).ok())
            .map_or(0, |c| c.donated_secs);
        Self {
            path,
            inner: parking_lot::Mutex::new((secs, None)),
        }
    }

    fn total(&self) -> u64 {
        let g = self.inner.lock();
        g.0 + g.1.map_or(0, |t| t.elapsed().as_secs())
    }

    /// Follows the state: an active stretch starts or ends (and is saved).
    fn on_state(&self, s: &State) {
        let mut g = self.inner.lock();
        match (s == &State::Active, g.1) {
            (true, None) => g.1 = Some(Instant::now()),
            (false, Some(since)) => {
                g.0 += since.elapsed().as_secs();
                g.1 = None;
                let text =
                    serde_json::to_string(&ClockFile { donated_secs: g.0 }).expect("serialises");
                if let Err(e) = std::fs::write(&self.path, text) {
                    tracing::warn!(error = %e, path = %self.path.display(), "cannot save the donated time");
                }
            }
            _ => {}
        }
    }
}

/// What the window and the tray are told of the agent's state.
pub fn donor_state(s: &State) -> DonorState {
    match s {
        State::Stopped => DonorState::Stopped,
        State::Registering => DonorState::Registering,
        State::Pulling => DonorState::Pulling,
        State::Active => DonorState::Active,
        State::Paused => DonorState::Paused,
        State::Error(_) => DonorState::Error,
    }
}

/// What this machine gives: "GPU RTX 3060 + 8 cores".
pub fn offer(d: &Detected) -> String {
    let cores = d.capabilities.cpu.cores;
    match d.capabilities.gpus.as_slice() {
        [] => format!("{cores} cores"),
        [g] => format!("GPU {} + {cores} cores", g.name),
        gs => format!("{} GPUs + {cores} cores", gs.len()),
    }
}

/// The tray's status line for a state.
pub fn summary(state: &State, offer: &str) -> String {
    match state {
        State::Stopped => "Not donating: open Commons to start".into(),
        State::Registering => "Joining the pool…".into(),
        State::Pulling => format!("Preparing: {offer}"),
        State::Active => format!("Donating: {offer}"),
        State::Paused => format!("Paused: {offer}"),
        State::Error(why) => format!("Error: {why}"),
    }
}

/// The agent as the app runs it.
pub struct Donor {
    settings_path: PathBuf,
    creds: Arc<dyn CredentialStore>,
    probe: Arc<dyn GpuProbe>,
    detected: Detected,
    agent: Mutex<Option<AgentHandle>>,
    /// The timer that ends a timed pause.
    resume_timer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    paused_until: parking_lot::Mutex<Option<jiff::Timestamp>>,
    /// The agent's state, also while none runs (stopped); the tray follows it.
    state: watch::Sender<State>,
    pulls: Arc<parking_lot::Mutex<Pulls>>,
    started: parking_lot::Mutex<Option<Instant>>,
    clock: Arc<Clock>,
    /// Self-updates, unless switched off.
    updater: Option<Updater>,
    update: watch::Sender<UpdateView>,
    /// A verified update, waiting for a restart.
    staged: parking_lot::Mutex<Option<Staged>>,
}

impl std::fmt::Debug for Donor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Donor")
            .field("settings_path", &self.settings_path)
            .finish_non_exhaustive()
    }
}

impl Donor {
    /// A donor that keeps its settings at `settings_path` and its credentials in `creds`; hardware is detected now.
    pub fn new(
        settings_path: PathBuf,
        creds: Arc<dyn CredentialStore>,
        probe: Arc<dyn GpuProbe>,
    ) -> Self {
        let detected = hardware::detect(probe.as_ref());
        let clock = Arc::new(Clock::open(settings_path.with_file_name("donated.json")));
        Self {
            clock,
            pulls: Arc::default(),
            started: parking_lot::Mutex::new(None),
            settings_path,
            creds,
            probe,
            detected,
            agent: Mutex::new(None),
            resume_timer: Mutex::new(None),
            paused_until: parking_lot::Mutex::new(None),
            state: watch::channel(State::Stopped).0,
            updater: None,
            update: watch::channel(UpdateView {
                running: crate::VERSION.into(),
                ..Default::default()
            })
            .0,
            staged: parking_lot::Mutex::new(None),
        }
    }

    /// Updates the app itself with `u` (see [`commons_agent::update`]).
    pub fn with_updater(mut self, u: Updater) -> Self {
        self.update
            .send_modify(|v| v.running = u.build().version.clone());
        self.updater = Some(u);
        self
    }

    /// Where the update stands, to follow.
    pub fn watch_update(&self) -> watch::Receiver<UpdateView> {
        self.update.subscribe()
    }

    fn set_update(&self, phase: UpdatePhase, version: Option<String>, detail: Option<String>) {
        self.update.send_modify(|v| {
            v.phase = phase;
            v.version = version;
            v.detail = detail;
        });
    }

    /// Asks the coordinator donated to for a newer version; fetches and verifies it, ready for a restart. A binary
    /// the volunteer cannot replace (the .deb's) gets the package's address instead.
    pub async fn check_update(&self) {
        let Some(u) = &self.updater else {
            return;
        };
        let Some(coordinator) = self.coordinator_url().await else {
            return;
        };
        let offer = match u.check(&coordinator).await {
            Ok(Some(o)) => o,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("{e}; {} keeps running", u.build().version);
                if let UpdateError::Refused { version, .. } = &e {
                    self.set_update(
                        UpdatePhase::Failed,
                        Some(version.clone()),
                        Some(e.to_string()),
                    );
                }
                return;
            }
        };
        let info = offer.release.clone();
        let ready = self
            .staged
            .lock()
            .as_ref()
            .is_some_and(|s| s.info.version == info.version);
        if ready {
            return;
        }
        self.set_update(
            UpdatePhase::Updating,
            Some(info.version.clone()),
            Some(info.notes.clone()),
        );
        match u.download(&coordinator, &offer).await {
            Ok(staged) => {
                tracing::info!(version = %info.version, "update verified; restart to finish");
                *self.staged.lock() = Some(staged);
                self.set_update(UpdatePhase::Restart, Some(info.version), Some(info.notes));
            }
            Err(e) => {
                tracing::warn!("{e}; {} keeps running", u.build().version);
                // A binary the volunteer cannot replace: the package to install instead, when there is one.
                let (phase, detail) = match &e {
                    UpdateError::NotWritable { package, .. } => (
                        UpdatePhase::Package,
                        package
                            .as_ref()
                            .map_or_else(|| e.to_string(), |p| p.url.clone()),
                    ),
                    _ => (UpdatePhase::Failed, e.to_string()),
                };
                self.set_update(phase, Some(info.version), Some(detail));
            }
        }
    }

    /// The coordinator the agent donates to, once it has joined one.
    pub async fn coordinator_url(&self) -> Option<String> {
        let agent = self.agent.lock().await;
        let url = agent.as_ref()?.session.borrow().coordinator_url.clone();
        (!url.is_empty()).then_some(url)
    }

    /// Finishes a verified update: the agent hands over (containers stopped, still registered), the new binary is
    /// swapped in and tried, and this process becomes it; if the trial fails, the old binary is restored and
    /// started again. Returns only when there is no update to finish or the restart itself fails.
    pub async fn restart_to_update(&self) -> Result<(), AppError> {
        let (Some(u), Some(staged)) = (&self.updater, self.staged.lock().take()) else {
            return Err(AppError::Update("no update is ready to install".into()));
        };
        self.cancel_timer().await;
        let handle = self.agent.lock().await.take();
        let donating = handle.is_some();
        // Paused by the volunteer (not held back by a rule, which the restarted agent checks again itself).
        let paused = handle.as_ref().is_some_and(|h| h.session.borrow().paused);
        if let Some(handle) = handle {
            handle.send(Command::Handover).await;
            if tokio::time::timeout(Duration::from_secs(20), handle.join())
                .await
                .is_err()
            {
                tracing::warn!("the agent did not hand over in time");
            }
        }
        let deadline =
            Duration::from_secs(self.settings().unwrap_or_default().update_deadline_secs);
        let e = u
            .install_and_restart(staged, deadline, paused, donating)
            .await;
        Err(AppError::Update(format!("cannot restart Commons: {e}")))
    }

    /// What was detected at start.
    pub fn detected(&self) -> &Detected {
        &self.detected
    }

    /// The state, to follow.
    pub fn watch(&self) -> watch::Receiver<State> {
        self.state.subscribe()
    }

    /// The settings file, or the defaults.
    pub fn settings(&self) -> Result<Settings, AppError> {
        Settings::load(&self.settings_path).map_err(|e| {
            AppError::Settings(format!(
                "{e}. Fix or delete {} and try again.",
                self.settings_path.display()
            ))
        })
    }

    fn save(&self, s: &Settings) -> Result<(), AppError> {
        let text = toml::to_string_pretty(s).map_err(|e| AppError::Settings(e.to_string()))?;
        if let Some(dir) = self.settings_path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| AppError::Settings(format!("cannot create {}: {e}", dir.display())))?;
        }
        std::fs::write(&self.settings_path, text).map_err(|e| {
            AppError::Settings(format!(
                "cannot write {}: {e}",
                self.settings_path.display()
            ))
        })
    }

    /// Starts donating: `coordinator` (or the settings' coordinator, else the edge) and an optional enrollment token
    /// are saved to the settings first.
    pub async fn start(
        &self,
        coordinator: Option<String>,
        enrollment_token: Option<String>,
    ) -> Result<Status, AppError> {
        let mut agent = self.agent.lock().await;
        if agent.is_some() {
            return Err(AppError::AlreadyStarted(
                "Commons is already donating; pause or quit from the tray".into(),
            ));
        }
        let mut settings = self.settings()?;
        if let Some(url) = coordinator
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
        {
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 256 {
                return Err(AppError::Invalid(format!(
                    "{url:?} is not a coordinator URL: it starts with http:// or https://"
                )));
            }
            settings.coordinator_url = Some(url);
        }
        if let Some(t) = enrollment_token
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
        {
            settings.enrollment_token = Some(t);
        }
        settings
            .validate()
            .map_err(|e| AppError::Invalid(e.to_string()))?;
        self.save(&settings)?;
        let options = agent::Options {
            version: self.update.borrow().running.clone(),
            paused: commons_agent::update::start_paused(),
        };
        let mut handle =
            agent::start_with(settings, self.creds.clone(), self.probe.clone(), options);
        let mut rx = handle.state.clone();
        let tx = self.state.clone();
        let clock = self.clock.clone();
        tokio::spawn(async move {
            loop {
                let s = rx.borrow_and_update().clone();
                clock.on_state(&s);
                tx.send_replace(s);
                if rx.changed().await.is_err() {
                    clock.on_state(&State::Stopped);
                    tx.send_replace(State::Stopped);
                    return;
                }
            }
        });
        if let Some(mut progress) = handle.take_progress() {
            let pulls = self.pulls.clone();
            tokio::spawn(async move {
                while let Some(p) = progress.recv().await {
                    let mut all = pulls.lock();
                    let layers = all.entry(p.image).or_default();
                    let e = layers.entry(p.layer).or_default();
                    e.0 = e.0.max(p.current);
                    e.1 = e.1.max(p.total);
                    if p.done {
                        e.0 = e.1;
                    }
                }
            });
        }
        *self.started.lock() = Some(Instant::now());
        *agent = Some(handle);
        drop(agent);
        Ok(self.status().await)
    }

    async fn send(&self, c: Command) -> Result<(), AppError> {
        let agent = self.agent.lock().await;
        let Some(a) = agent.as_ref() else {
            return Err(AppError::NotStarted(
                "Commons is not donating yet: press Start donating first".into(),
            ));
        };
        a.send(c).await;
        Ok(())
    }

    async fn cancel_timer(&self) {
        if let Some(t) = self.resume_timer.lock().await.take() {
            t.abort();
        }
        *self.paused_until.lock() = None;
    }

    /// Pauses: containers stop, the coordinator is told; `for_how_long` ends it by itself.
    pub async fn pause(
        self: &Arc<Self>,
        for_how_long: Option<Duration>,
    ) -> Result<Status, AppError> {
        self.send(Command::Pause).await?;
        self.cancel_timer().await;
        if let Some(d) = for_how_long {
            let until = jiff::Timestamp::now()
                .checked_add(
                    jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::ZERO),
                )
                .unwrap_or_else(|_| jiff::Timestamp::now());
            *self.paused_until.lock() = Some(until);
            let me = Arc::downgrade(self);
            *self.resume_timer.lock().await = Some(tokio::spawn(async move {
                tokio::time::sleep(d).await;
                if let Some(me) = me.upgrade() {
                    *me.paused_until.lock() = None;
                    let _ = me.send(Command::Resume).await;
                }
            }));
        }
        Ok(self.status().await)
    }

    /// Donates again.
    pub async fn resume(&self) -> Result<Status, AppError> {
        self.cancel_timer().await;
        self.send(Command::Resume).await?;
        Ok(self.status().await)
    }

    /// Pauses or resumes, whichever the state calls for (the tray's one entry).
    pub async fn toggle(self: &Arc<Self>) -> Result<Status, AppError> {
        if *self.state.borrow() == State::Paused {
            self.resume().await
        } else {
            self.pause(None).await
        }
    }

    /// The caps and rules the window edits (from the settings file).
    pub fn limits(&self) -> Result<Limits, AppError> {
        Ok(limits_of(&self.settings()?))
    }

    /// Saves new caps and rules and hands them to the running agent, which applies them at once. Nothing is saved
    /// when a value is out of range.
    pub async fn set_limits(&self, limits: Limits) -> Result<Limits, AppError> {
        let mut settings = self.settings()?;
        put_limits(limits, &mut settings);
        settings
            .validate()
            .map_err(|e| AppError::Invalid(e.to_string()))?;
        self.save(&settings)?;
        if let Some(a) = self.agent.lock().await.as_ref() {
            a.send(Command::Apply(Box::new(settings.clone()))).await;
        }
        Ok(limits_of(&settings))
    }

    /// Starts again after a problem (the container engine was missing, the coordinator refused): the agent stops
    /// cleanly and a new one starts with the saved settings.
    pub async fn retry(&self) -> Result<Status, AppError> {
        self.quit(Duration::from_secs(10)).await;
        self.start(None, None).await
    }

    /// Stops donating for good: containers removed, unregistered, the agent finished. Waits at most `timeout`.
    pub async fn quit(&self, timeout: Duration) {
        self.cancel_timer().await;
        let Some(handle) = self.agent.lock().await.take() else {
            return;
        };
        handle.send(Command::Quit).await;
        if tokio::time::timeout(timeout, handle.join()).await.is_err() {
            tracing::warn!("the agent did not stop in time");
        }
        self.state.send_replace(State::Stopped);
        self.clock.on_state(&State::Stopped);
        *self.started.lock() = None;
        self.pulls.lock().clear();
    }

    /// The status now.
    pub async fn status(&self) -> Status {
        let state = self.state.borrow().clone();
        let (session, dht) = match self.agent.lock().await.as_ref() {
            Some(a) => (Some(a.session.borrow().clone()), a.dht()),
            None => (None, None),
        };
        let dht_peers = match dht {
            Some(d) => Some(d.snapshot().await.links.len()),
            None => None,
        };
        let offer = offer(&self.detected);
        let containers = session
            .as_ref()
            .map(|s| self.rows(&s.containers))
            .unwrap_or_default();
        Status {
            state: donor_state(&state),
            reason: match &state {
                State::Error(why) => Some(why.clone()),
                _ => None,
            },
            worker_id: session
                .as_ref()
                .map(|s| s.worker_id.clone())
                .filter(|w| !w.is_empty()),
            tier: session.as_ref().and_then(|s| s.tier),
            endpoint: session.as_ref().and_then(|s| s.endpoint.clone()),
            reached: session.as_ref().and_then(|s| s.reached.clone()),
            held: session.as_ref().and_then(|s| s.held.clone()),
            problem: session.as_ref().and_then(|s| s.problem.clone()),
            catalogue: session.as_ref().and_then(|s| s.catalogue.clone()),
            contribution: session.as_ref().and_then(|s| s.contribution.clone()),
            coordinator_url: session.map(|s| s.coordinator_url).filter(|u| !u.is_empty()),
            containers,
            dht_peers,
            uptime_secs: self.started.lock().map(|t| t.elapsed().as_secs()),
            donated_secs: self.clock.total(),
            update: self.update.borrow().clone(),
            summary: summary(&state, &offer),
            paused_until: self.paused_until.lock().map(|t| t.to_string()),
        }
    }

    /// The containers with their pull progress.
    fn rows(&self, views: &[ContainerView]) -> Vec<ContainerRow> {
        let pulls = self.pulls.lock();
        views
            .iter()
            .map(|v| {
                let (done, total) = pulls.get(&v.image).map_or((0, 0), |layers| {
                    layers
                        .values()
                        .fold((0, 0), |(d, t), (c, n)| (d + c.min(n), t + n))
                });
                ContainerRow {
                    name: v.name.clone(),
                    service: v.service.clone(),
                    image: v.image.clone(),
                    state: v.state,
                    pulled_bytes: done,
                    pull_total_bytes: total,
                }
            })
            .collect()
    }
}

/// How long until the next local midnight ("pause until tomorrow").
pub fn until_tomorrow() -> Duration {
    let now = jiff::Zoned::now();
    let midnight = now
        .date()
        .tomorrow()
        .ok()
        .and_then(|d| d.to_zoned(now.time_zone().clone()).ok());
    midnight
        .and_then(|m| now.duration_until(&m).try_into().ok())
        .unwrap_or(Duration::from_secs(8 * 3600))
}

#[cfg(test)]
mod tests {
    use super::*;
    use commons_agent::hardware::RecordedProbe;

    #[test]
    fn the_tray_line_says_what_is_given() {
        let probe = RecordedProbe(Ok(Vec::new()));
        let d = hardware::detect(&probe);
        let o = offer(&d);
        assert!(o.ends_with(" cores") && !o.starts_with("GPU"), "{o}");
        assert_eq!(
            summary(&State::Active, "GPU RTX 3060 + 8 cores"),
            "Donating: GPU RTX 3060 + 8 cores"
        );
        assert_eq!(
            summary(&State::Error("Docker is not running".into()), ""),
            "Error: Docker is not running"
        );
        assert!(until_tomorrow() <= Duration::from_secs(25 * 3600));
    }

    #[test]
    fn errors_serialise_as_code_and_sentence() {
        let e = AppError::NotStarted("press Start donating first".into());
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"error": "not_started", "message": "press Start donating first"})
        );
    }
}
