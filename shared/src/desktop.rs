//! What the desktop app's window and its shell say to each other: the status, the hardware, the caps and rules the
//! volunteer edits, and errors as `{error, message}`. The shell (Tauri, native) serialises them; the window (Yew,
//! wasm32) reads them.

use serde::{Deserialize, Serialize};

use crate::api::ContainerState;
use crate::caps::Capabilities;

/// An error the window can show: a code and a sentence with the next step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
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
    /// An update could not be finished.
    #[error("{0}")]
    Update(String),
}

/// What the window asks of the app's shell: each case is one of the app's Tauri commands ([`WindowCommand::name`])
/// with its named arguments ([`WindowCommand::args`], camelCase as Tauri reads them).
#[derive(Debug, Clone, PartialEq)]
pub enum WindowCommand {
    /// Where donating stands.
    Status,
    /// The detected hardware.
    Detect,
    /// Start donating, with the Advanced fields when given.
    StartDonating {
        /// The coordinator or edge to join.
        coordinator: Option<String>,
        /// An enrollment token.
        enrollment_token: Option<String>,
    },
    /// Pause, for so many minutes when given.
    Pause {
        /// How long; until resumed when none.
        minutes: Option<u32>,
    },
    /// Resume.
    Resume,
    /// The caps and rules in force.
    Limits,
    /// New caps and rules, saved and applied.
    SetLimits(Limits),
    /// Try again after an error.
    Retry,
    /// Whether the app starts at login.
    Autostart,
    /// Start the app at login, or not.
    SetAutostart(bool),
    /// Restart into the verified update.
    RestartToUpdate,
}

impl WindowCommand {
    /// The Tauri command.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Detect => "detect",
            Self::StartDonating { .. } => "start_donating",
            Self::Pause { .. } => "pause",
            Self::Resume => "resume",
            Self::Limits => "limits",
            Self::SetLimits(_) => "set_limits",
            Self::Retry => "retry",
            Self::Autostart => "autostart",
            Self::SetAutostart(_) => "set_autostart",
            Self::RestartToUpdate => "restart_to_update",
        }
    }

    /// Its named arguments, as an object.
    pub fn args(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Self::StartDonating {
                coordinator,
                enrollment_token,
            } => json!({ "coordinator": coordinator, "enrollmentToken": enrollment_token }),
            Self::Pause { minutes: Some(m) } => json!({ "minutes": m }),
            Self::SetLimits(l) => json!({ "limits": l }),
            Self::SetAutostart(on) => json!({ "enabled": on }),
            Self::Status
            | Self::Detect
            | Self::Pause { minutes: None }
            | Self::Resume
            | Self::Limits
            | Self::Retry
            | Self::Autostart
            | Self::RestartToUpdate => json!({}),
        }
    }
}

/// Where donating stands, as the tray and the window show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DonorState {
    /// Not donating (never started, or quit).
    Stopped,
    /// Joining a coordinator.
    Registering,
    /// Fetching the assigned services' images.
    Pulling,
    /// Donating.
    Active,
    /// Paused by the volunteer, or held back by a rule.
    Paused,
    /// Stuck; the status's reason says why.
    Error,
}

impl DonorState {
    /// All states.
    pub const ALL: [DonorState; 6] = [
        Self::Stopped,
        Self::Registering,
        Self::Pulling,
        Self::Active,
        Self::Paused,
        Self::Error,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stopped => "stopped",
            Self::Registering => "registering",
            Self::Pulling => "pulling",
            Self::Active => "active",
            Self::Paused => "paused",
            Self::Error => "error",
        }
    }
}

/// What the tray and the window show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Where donating stands.
    pub state: DonorState,
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
    /// The tier the coordinator placed this computer in (1–3).
    pub tier: Option<u8>,
    /// The assigned services' containers.
    pub containers: Vec<ContainerRow>,
    /// Where the coordinator reaches this computer's services (tunnel or gateway URL).
    pub endpoint: Option<String>,
    /// How the coordinator reaches this computer, in plain words (over its own connection: nothing to open).
    #[serde(default)]
    pub reached: Option<String>,
    /// DHT peers known (`None` without a DHT node).
    pub dht_peers: Option<usize>,
    /// Why donating is held back (schedule, battery, in use, hot GPU).
    pub held: Option<String>,
    /// Something to fix, in plain words with the next step.
    pub problem: Option<String>,
    /// Seconds since donating was started in this run.
    pub uptime_secs: Option<u64>,
    /// Seconds donated in all (active, not paused), over every run.
    pub donated_secs: u64,
    /// This app's version and where its update stands.
    #[serde(default)]
    pub update: UpdateView,
    /// Whose catalogue decides what this computer runs, in words.
    #[serde(default)]
    pub catalogue: Option<String>,
    /// What this computer served today and donated this week, in words ("Today you served 1,234 OCR pages …"),
    /// from the coordinator's records.
    #[serde(default)]
    pub contribution: Option<String>,
}

/// Where an update of the app stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdatePhase {
    /// Nothing newer (or not checked yet).
    #[default]
    UpToDate,
    /// A newer version is offered; it is being fetched and checked.
    Updating,
    /// Verified and waiting: restarting the app finishes the update.
    Restart,
    /// Installed by the system package manager: the new package has to be installed instead.
    Package,
    /// The last attempt failed (refused, or rolled back); the running version keeps running.
    Failed,
}

/// The app's update, for the tray and the window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateView {
    /// The running version.
    pub running: String,
    /// Where it stands.
    pub phase: UpdatePhase,
    /// The version offered, if any.
    pub version: Option<String>,
    /// Release notes, the package's URL, or what went wrong.
    pub detail: Option<String>,
}

impl UpdateView {
    /// The tray's update entry: its text, and whether clicking it does something.
    pub fn tray_entry(&self) -> (String, bool) {
        let v = self.version.as_deref().unwrap_or("");
        match self.phase {
            UpdatePhase::UpToDate => (format!("Commons {}: up to date", self.running), false),
            UpdatePhase::Updating => (format!("Update available: {v} (updating…)"), false),
            UpdatePhase::Restart => (format!("Restart to finish the update to {v}"), true),
            UpdatePhase::Package => (format!("Update available: install the {v} package"), true),
            UpdatePhase::Failed => (
                format!("Update to {v} failed: {} keeps running", self.running),
                false,
            ),
        }
    }
}

/// One assigned container in the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRow {
    /// Container name.
    pub name: String,
    /// The service.
    pub service: String,
    /// The image.
    pub image: String,
    /// Its state.
    pub state: ContainerState,
    /// While pulling: bytes fetched so far and in all (0 while unknown).
    pub pulled_bytes: u64,
    /// See `pulled_bytes`.
    pub pull_total_bytes: u64,
}

/// What the window's controls edit: the caps and when to donate. Saved to the settings file, applied live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Share of all cores the containers may use, percent.
    pub cpu_percent: u32,
    /// Memory per container, MiB.
    pub memory_mb: u64,
    /// Disk (writable scratch) per container, MiB.
    pub scratch_mb: u64,
    /// Disk the model cache may fill, MiB.
    pub models_disk_mb: u64,
    /// Let GPU services use the GPU.
    pub allow_gpu: bool,
    /// Share of the GPU that GPU services may use, percent (duty-cycled below 100).
    pub gpu_percent: u32,
    /// Which GPUs (indices); `None`: all.
    pub gpus: Option<Vec<u32>>,
    /// Pause while a GPU is hotter than this (°C).
    pub max_gpu_temp_c: u32,
    /// Donate only while nobody uses the computer.
    pub idle_only: bool,
    /// Donate only on mains power.
    pub on_ac_power_only: bool,
    /// Daily windows, "HH:MM-HH:MM"; empty: always.
    pub schedule: Vec<String>,
    /// The name the volunteers' leaderboard shows for this computer; none: anonymous.
    #[serde(default)]
    pub display_name: Option<String>,
}

/// The hardware the first-run page shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hardware {
    /// What was detected.
    pub capabilities: Capabilities,
    /// Why no GPU was found, when none was (driver missing, ...).
    pub no_gpu: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_commands_name_what_the_app_registers() {
        let every = [
            WindowCommand::Status,
            WindowCommand::Detect,
            WindowCommand::StartDonating {
                coordinator: Some("http://c".into()),
                enrollment_token: None,
            },
            WindowCommand::Pause { minutes: Some(60) },
            WindowCommand::Resume,
            WindowCommand::Limits,
            WindowCommand::SetLimits(Limits {
                cpu_percent: 50,
                memory_mb: 4096,
                scratch_mb: 1024,
                models_disk_mb: 20480,
                allow_gpu: true,
                gpu_percent: 60,
                gpus: None,
                max_gpu_temp_c: 85,
                idle_only: false,
                on_ac_power_only: false,
                schedule: Vec::new(),
                display_name: None,
            }),
            WindowCommand::Retry,
            WindowCommand::Autostart,
            WindowCommand::SetAutostart(true),
            WindowCommand::RestartToUpdate,
        ];
        let names: Vec<_> = every.iter().map(WindowCommand::name).collect();
        // What the app registers (desktop/app/src/lib.rs, generate_handler!).
        assert_eq!(
            names,
            [
                "status",
                "detect",
                "start_donating",
                "pause",
                "resume",
                "limits",
                "set_limits",
                "retry",
                "autostart",
                "set_autostart",
                "restart_to_update",
            ]
        );
        assert_eq!(
            every[2].args(),
            serde_json::json!({"coordinator": "http://c", "enrollmentToken": null})
        );
        assert_eq!(every[3].args(), serde_json::json!({"minutes": 60}));
        assert_eq!(
            WindowCommand::Pause { minutes: None }.args(),
            serde_json::json!({})
        );
        assert_eq!(every[9].args(), serde_json::json!({"enabled": true}));
        assert!(every[6].args()["limits"].is_object());
    }

    #[test]
    fn donor_state_wire_names_are_pinned() {
        let names = [
            "stopped",
            "registering",
            "pulling",
            "active",
            "paused",
            "error",
        ];
        for (state, text) in DonorState::ALL.into_iter().zip(names) {
            assert_eq!(state.as_str(), text);
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::json!(text)
            );
            assert_eq!(
                serde_json::from_value::<DonorState>(serde_json::json!(text)).unwrap(),
                state
            );
        }
    }

    #[test]
    fn container_states_read_as_they_serialise() {
        use ContainerState::*;
        for s in [
            Pulling, Created, Starting, Running, Restarting, Stopped, Exited, Failed,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
