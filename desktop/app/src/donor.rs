//! The app's hold on the agent core: start donating, pause (now, for a while), resume, quit, and the status the tray
//! and the window show. No Tauri here: the commands and the tray are thin adapters over [`Donor`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use commons_agent::agent::{self, AgentHandle, Command, State};
use commons_agent::credentials::CredentialStore;
use commons_agent::hardware::{self, Detected, GpuProbe};
use commons_agent::settings::Settings;
use serde::Serialize;
use tokio::sync::{Mutex, watch};

/// An error the window can show: a code and a sentence with the next step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "error", content = "message", rename_all = "snake_case")]
pub enum AppError {
    /// The volunteer typed something unusable.
    #[error("{0}")]
    Invalid(String),
    /// Not donating yet: nothing to pause.
    #[error("{0}")]
    NotStarted(String),
    /// Already donating.
    #[error("{0}")]
    AlreadyStarted(String),
    /// The settings file could not be read or written.
    #[error("{0}")]
    Settings(String),
}

/// What the tray and the window show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// stopped, registering, pulling, active, paused or error.
    pub state: String,
    /// Why, for an error (in plain words).
    pub reason: Option<String>,
    /// The worker id once registered.
    pub worker_id: Option<String>,
    /// The coordinator it donates to.
    pub coordinator_url: Option<String>,
    /// One line for the tray: "Donating: GPU RTX 3060 + 8 cores".
    pub summary: String,
    /// When a timed pause ends (RFC 3339), if one is set.
    pub paused_until: Option<String>,
}

/// The words for a state.
pub fn state_name(s: &State) -> &'static str {
    match s {
        State::Stopped => "stopped",
        State::Registering => "registering",
        State::Pulling => "pulling",
        State::Active => "active",
        State::Paused => "paused",
        State::Error(_) => "error",
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
    paused_until: std::sync::Mutex<Option<jiff::Timestamp>>,
    /// The agent's state, also while none runs (stopped); the tray follows it.
    state: watch::Sender<State>,
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
        Self {
            settings_path,
            creds,
            probe,
            detected,
            agent: Mutex::new(None),
            resume_timer: Mutex::new(None),
            paused_until: std::sync::Mutex::new(None),
            state: watch::channel(State::Stopped).0,
        }
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
        let handle = agent::start(settings, self.creds.clone(), self.probe.clone());
        let mut rx = handle.state.clone();
        let tx = self.state.clone();
        tokio::spawn(async move {
            loop {
                let s = rx.borrow_and_update().clone();
                tx.send_replace(s);
                if rx.changed().await.is_err() {
                    tx.send_replace(State::Stopped);
                    return;
                }
            }
        });
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
        *self.paused_until.lock().expect("not poisoned") = None;
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
            *self.paused_until.lock().expect("not poisoned") = Some(until);
            let me = Arc::downgrade(self);
            *self.resume_timer.lock().await = Some(tokio::spawn(async move {
                tokio::time::sleep(d).await;
                if let Some(me) = me.upgrade() {
                    *me.paused_until.lock().expect("not poisoned") = None;
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
    }

    /// The status now.
    pub async fn status(&self) -> Status {
        let state = self.state.borrow().clone();
        let session = self
            .agent
            .lock()
            .await
            .as_ref()
            .map(|a| a.session.borrow().clone());
        let offer = offer(&self.detected);
        Status {
            state: state_name(&state).into(),
            reason: match &state {
                State::Error(why) => Some(why.clone()),
                _ => None,
            },
            worker_id: session
                .as_ref()
                .map(|s| s.worker_id.clone())
                .filter(|w| !w.is_empty()),
            coordinator_url: session.map(|s| s.coordinator_url).filter(|u| !u.is_empty()),
            summary: summary(&state, &offer),
            paused_until: self
                .paused_until
                .lock()
                .expect("not poisoned")
                .map(|t| t.to_string()),
        }
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
