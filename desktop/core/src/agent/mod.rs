//! The agent: joins a coordinator, heartbeats, pauses and resumes, fails over, quits cleanly.
//!
//! Its state is published on a watch channel (`Stopped → Registering → Active ⇄ Paused`, or `Error`) for a UI
//! or the control API to follow; commands arrive on a channel.
//!
//! The agent is split by responsibility, each part with its own state; this module holds the public types, the
//! run loop and what spans the parts (applying settings, pausing, leaving):
//! - `join`: who this worker is (credentials, capabilities) and joining a coordinator, with backoff;
//! - `beat`: heartbeats, the coordinator probe and failover — the donating loop;
//! - `work`: the assignment and its containers;
//! - `holds`: the schedule, mains power, idle and GPU-temperature holds;
//! - `reach`: the gateway and the tunnel the coordinator reaches this worker through;
//! - `presence`: the DHT node, joining it, and the published worker record;
//! - `ui`: the state and session published to a window or the control API.
//!
//! Self-updates run beside the agent (`crate::update`), which only hands over when told.

mod beat;
mod holds;
mod join;
mod presence;
mod reach;
mod ui;
mod work;

use std::sync::Arc;
use std::time::Duration;

use commons_shared::api::ContainerState;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::credentials::CredentialStore;
use crate::hardware::GpuProbe;
use crate::settings::Settings;

use self::holds::{Change, Holds};
use self::join::{Identity, Joined};
use self::presence::Presence;
use self::reach::Reach;
use self::ui::Ui;
use self::work::Work;

/// What the agent is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// How the coordinator reaches this worker, in plain words, once joined.
    #[serde(default)]
    pub reached: Option<String>,
    /// Why donating is held back now (outside the schedule, on battery, in use, a GPU too hot), if it is.
    pub held: Option<String>,
    /// Something the volunteer can fix, in plain words with the next step (e.g. the container engine is missing).
    pub problem: Option<String>,
    /// Paused by the volunteer (not a hold): kept over an update's restart.
    pub paused: bool,
    /// Whose catalogue decides what runs, in words ("the coordinator's catalogue, signed by …"), once joined.
    pub catalogue: Option<String>,
    /// What this computer served today and donated this week, in words, from the coordinator's records.
    pub contribution: Option<String>,
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
        settings,
        ui: Ui::new(state_tx, session_tx),
        rx,
        me: Identity::new(creds, probe, options.version),
        holds: Holds::default(),
        work: Work::new(progress_tx),
        reach: Reach::default(),
        presence: Presence::new(dht.clone()),
        drained: false,
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

/// The agent's task: its settings, its commands, and its parts.
struct Agent {
    settings: Settings,
    ui: Ui,
    rx: mpsc::Receiver<Command>,
    me: Identity,
    holds: Holds,
    work: Work,
    reach: Reach,
    presence: Presence,
    /// The coordinator said other workers outvote this one's answers, so it gets no requests.
    drained: bool,
}

/// What the volunteer reads when the coordinator has drained this worker for wrong answers.
pub const DRAINED: &str = "other volunteers' computers answered the same requests differently, so Commons sends \
     this one no more requests. Something here changes what the services answer: faulty memory or a GPU that \
     overheats, or a changed service. Run a memory test, check the GPU's temperature, then ask the coordinator's \
     operator to trust this computer again";

/// What ends a donating session.
enum Next {
    End(Ended),
    Rejoin { via_entry: bool },
}

impl Agent {
    async fn run(&mut self) -> Result<Ended, AgentError> {
        self.ui.set(State::Registering);
        if self.settings.containers
            && let Some(problem) = self.work.connect(&self.settings).await
        {
            self.ui.update(|s| s.problem = Some(problem));
        }
        match Reach::open(&self.settings).await {
            Ok(r) => self.reach = r,
            Err(e) => {
                self.ui.set(State::Error(e.to_string()));
                return Err(e);
            }
        }
        self.show_endpoint();
        if self.settings.dht {
            self.presence
                .start(&self.settings, self.me.store(), self.me.client())
                .await;
        }
        let mut joined = match self.resume().await {
            Ok(j) => j,
            Err(e) => {
                self.ui.set(State::Error(e.to_string()));
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
                    self.ui.set(State::Registering);
                }
            }
        }
    }

    /// Held back by the schedule, battery power or a volunteer at the keyboard.
    fn held(&self) -> bool {
        self.holds.held()
    }

    /// Neither paused by the volunteer nor held back by a rule.
    fn donating(&self) -> bool {
        !self.ui.paused() && !self.held()
    }

    /// Active while donating, unless every assigned service failed (then saying why: never "donating" while
    /// nothing runs); Paused otherwise.
    fn active_state(&self) -> State {
        if !self.donating() {
            State::Paused
        } else if let Some(why) = self.work.failing() {
            State::Error(why)
        } else {
            State::Active
        }
    }

    /// Publishes why donating is held back: the hold rules, else a hot GPU.
    fn show_held(&self) {
        let why = self.holds.why(self.settings.max_gpu_temp_c);
        self.ui.update(|s| s.held = why);
    }

    /// Holds donating back outside the schedule or on battery, and lets it go again.
    async fn update_hold(&mut self) {
        let change = self.holds.check(&self.settings);
        self.show_held();
        match change {
            Change::Held(r) => {
                tracing::info!(reason = %r, "holding donations back");
                self.pause_containers().await;
            }
            Change::Released if !self.ui.paused() => {
                tracing::info!("donating again");
                self.reconcile().await;
            }
            Change::Released | Change::Same => {}
        }
    }

    /// Makes the containers match the assignment, and the gateway route to those running; their states go into
    /// the next heartbeat.
    async fn reconcile(&mut self) {
        if let Some(routes) = self.work.reconcile().await {
            self.reach.set_routes(routes);
        }
        self.show_problem();
        self.show_containers();
    }

    /// What is wrong, for the volunteer: the containers' problem first, else being drained.
    fn show_problem(&self) {
        let problem = self
            .work
            .problem()
            .or_else(|| self.drained.then(|| DRAINED.to_owned()));
        self.ui.update(|s| s.problem = problem);
    }

    async fn pause_containers(&mut self) {
        self.work.pause().await;
        self.show_containers();
    }

    /// Publishes the assigned containers with their states in the session.
    fn show_containers(&self) {
        // Not pulling when nothing runs: paused, held back, or no container engine.
        let views = self.work.views(!self.donating());
        self.ui.update(|s| s.containers = views);
    }

    /// Publishes where the coordinator reaches this worker (a quick tunnel's address comes late and can change).
    fn show_endpoint(&self) {
        let e = self.reach.endpoint();
        let away = self
            .reach
            .rtt_ms()
            .map(|ms| format!(" (the coordinator is {ms} ms away and back)"))
            .unwrap_or_default();
        let peers = self
            .reach
            .peers_sentence()
            .map(|s| format!(" {s}"))
            .unwrap_or_default();
        let how = if self.reach.channel_open() {
            format!(
                "over this computer's own connection to the coordinator{away}: no port to open, no tunnel needed"
            )
        } else if let Some(e) = &e {
            format!(
                "at {e} only: the connection that carries requests back from the coordinator is not open (it is retried; an older coordinator has none)"
            )
        } else {
            "not yet: the connection that carries requests back from the coordinator is not open (it is retried)".to_owned()
        };
        let reached = Some(how + &peers);
        self.ui.update(|s| {
            s.endpoint = e;
            s.reached = reached;
        });
    }

    /// Takes new settings live: the hold rules at once, and the containers recreated when their caps changed.
    async fn apply(&mut self, new: Settings) {
        self.work.set_policy(new.policy());
        self.settings = new;
        tracing::info!("settings applied");
        self.update_hold().await;
        if self.donating() {
            self.reconcile().await;
        }
    }

    /// Leaves cleanly: stops its tunnel, removes its containers, unregisters, forgets the credentials, reports Stopped.
    /// A `handover` stops the containers instead, for the next process to adopt, and stays registered.
    async fn stop(&mut self, j: Option<&Joined>, handover: bool) {
        self.presence.leave().await;
        self.reach.close().await;
        if handover {
            self.pause_containers().await;
        } else {
            self.work.remove_all().await;
        }
        if let Some(j) = j.filter(|_| !handover) {
            self.me.unregister(j).await;
        }
        self.ui.set(State::Stopped);
    }
}
