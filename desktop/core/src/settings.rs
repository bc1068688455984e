//! The volunteer's settings: a TOML file in the XDG config dir, with defaults and checked ranges.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The default entry point: the project's edge (a local one in development).
pub const DEFAULT_EDGE_URL: &str = "http://127.0.0.1:8090";

/// The case of a setting with a fixed set of texts whose text is `s`; else a sentence naming the setting and its
/// texts: `tunnel: must be "none", "quick" or "named", got "x"`.
fn one_of<T: Copy>(
    setting: &str,
    all: &[T],
    text: fn(T) -> &'static str,
    s: String,
) -> Result<T, String> {
    if let Some(k) = all.iter().copied().find(|k| text(*k) == s) {
        return Ok(k);
    }
    let quoted: Vec<String> = all.iter().map(|k| format!("{:?}", text(*k))).collect();
    let choices = match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    Err(format!("{setting}: must be {choices}, got {s:?}"))
}

/// How the coordinator reaches this agent's gateway (the `tunnel` setting).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum TunnelKind {
    /// No tunnel: at `endpoint` (a LAN or public address), else at the gateway's own address.
    #[default]
    None,
    /// A cloudflared quick tunnel (a new random address each start).
    Quick,
    /// A cloudflared named tunnel at `tunnel_hostname`, its token in the keyring.
    Named,
}

impl TunnelKind {
    /// All kinds.
    pub const ALL: [TunnelKind; 3] = [Self::None, Self::Quick, Self::Named];

    /// The setting's text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Quick => "quick",
            Self::Named => "named",
        }
    }
}

impl TryFrom<String> for TunnelKind {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        one_of("tunnel", &Self::ALL, Self::as_str, s)
    }
}

/// How the gateway reaches a container's service (the `service_reach` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum ServiceReach {
    /// A unix socket in a folder shared with the container, which then has no network at all (Linux engines).
    Socket,
    /// A port published on 127.0.0.1 only (engines that cannot share a socket with the host: Docker Desktop on
    /// Windows and macOS); the container keeps the engine's network.
    Ports,
}

impl Default for ServiceReach {
    fn default() -> Self {
        if cfg!(target_os = "linux") {
            Self::Socket
        } else {
            Self::Ports
        }
    }
}

impl ServiceReach {
    /// All of them.
    pub const ALL: [ServiceReach; 2] = [Self::Socket, Self::Ports];

    /// The setting's text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Socket => "socket",
            Self::Ports => "ports",
        }
    }
}

impl TryFrom<String> for ServiceReach {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        one_of("service_reach", &Self::ALL, Self::as_str, s)
    }
}

/// Settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// The edge to join through (used unless `coordinator_url` is set, and for failover).
    pub edge_url: String,
    /// Join this coordinator directly instead of going through the edge.
    pub coordinator_url: Option<String>,
    /// Enrollment token, when the coordinator asks for one.
    pub enrollment_token: Option<String>,
    /// Where the coordinator reaches this agent's services (its gateway or tunnel URL).
    pub endpoint: Option<String>,
    /// Region label, e.g. "eu-west".
    pub region: Option<String>,
    /// The name the volunteers' leaderboard shows for this computer; none: anonymous.
    pub display_name: Option<String>,
    /// Milliseconds between checks that the coordinator is still there (failover detection).
    pub probe_interval_ms: u64,
    /// Pause donating while a GPU is hotter than this (°C), and for a minute after.
    pub max_gpu_temp_c: u32,
    /// The local control socket [default: `$XDG_RUNTIME_DIR/commons-agent.sock`].
    pub control_socket: Option<PathBuf>,
    /// Run the assigned services in containers (needs Docker).
    pub containers: bool,
    /// Images that may run: exact references, or prefixes ending in '/' or ':' [default: the shipped catalogue's].
    pub allowed_images: Option<Vec<String>>,
    /// Share of all cores the containers may use, percent.
    pub cpu_percent: u32,
    /// Memory per container, MiB.
    pub memory_mb: u64,
    /// Let GPU services use the GPU.
    pub allow_gpu: bool,
    /// Which GPUs (indices) they may use; unset: all.
    pub gpus: Option<Vec<u32>>,
    /// Writable scratch space per container, MiB (the root is read-only): the disk cap.
    pub scratch_mb: u64,
    /// Share of the GPU that GPU services may use, percent; below 100 their containers are duty-cycled (run, then
    /// paused, in each period) so that they use about this share.
    pub gpu_percent: u32,
    /// Run services whose catalogue entry says they need a network (their containers get the engine's network);
    /// off, such services are refused and every container has none.
    pub allow_network_services: bool,
    /// Disk the model cache may fill, MiB (the least recently used models are deleted to stay within it).
    pub models_disk_mb: u64,
    /// Where the model cache lives [default: the cache dir].
    pub models_dir: Option<PathBuf>,
    /// The container engine's socket (`unix:///…`); unset: `DOCKER_HOST` or the platform default.
    pub docker_host: Option<String>,
    /// Minisign public keys of the operators whose catalogues this machine runs, besides the project's release key.
    /// A coordinator's catalogue signed by none of them is not run: only the shipped catalogue's services are.
    pub catalogue_keys: Vec<String>,
    /// How the gateway reaches the services: `socket` (no network in the container; the default on Linux) or
    /// `ports` (published on 127.0.0.1; the default elsewhere).
    pub service_reach: ServiceReach,
    /// Where the services' sockets live (a folder per container); unset: the cache directory.
    pub socket_dir: Option<PathBuf>,
    /// Name of this agent on the container engine (several agents can share one).
    pub instance: String,
    /// Where the local gateway in front of the containers listens.
    pub gateway_listen: std::net::SocketAddr,
    /// How the coordinator reaches the gateway.
    pub tunnel: TunnelKind,
    /// The cloudflared executable.
    pub cloudflared: PathBuf,
    /// The named tunnel's public URL.
    pub tunnel_hostname: Option<String>,
    /// Donate only inside these daily windows, local time, "HH:MM-HH:MM" (wrapping past midnight); empty: always.
    pub schedule: Vec<String>,
    /// Donate only on mains power (laptops).
    pub on_ac_power_only: bool,
    /// Donate only while nobody is using the computer (keyboard and mouse; X11).
    pub idle_only: bool,
    /// Minutes without input before the computer counts as idle.
    pub idle_after_minutes: u32,
    /// Join the DHT: publish this worker there, find coordinators and services through it (off: everything goes
    /// through the coordinator).
    pub dht: bool,
    /// Where the DHT node listens (a multiaddr).
    pub dht_listen: String,
    /// Serve the DHT (store records, answer lookups) from the start. Off, the node serves once AutoNAT finds it
    /// reachable (other nodes dial it back), and takes part as a client behind a NAT, reachable through a relay.
    pub dht_server: bool,
    /// The DHT runs on a LAN (a private deployment): AutoNAT counts private addresses as reachable ones. Off on
    /// the internet, where a peer seen at a private address proves nothing.
    pub dht_lan: bool,
    /// DHT seeds (multiaddrs ending in `/p2p/<peer id>`) besides the cached ones and the edge's.
    pub dht_seeds: Vec<String>,
    /// Seconds between refreshes of this worker's DHT record (it lives twice as long).
    pub dht_refresh_secs: u64,
    /// Joining waits a random time up to this (ms), so a burst of agents does not hit a seed at once.
    pub dht_stagger_ms: u64,
    /// Registration waits at most this long (ms) for a DHT join in progress before it goes to the edge.
    pub dht_join_wait_ms: u64,
    /// Where the seed list is cached, so a restart asks the edge nothing [default: next to the settings file].
    pub dht_seed_cache: Option<PathBuf>,
    /// Check for signed updates at start and every `update_interval_secs`, and install them.
    pub update_check: bool,
    /// The update channel: "stable" or "beta" (beta also gets stable releases).
    pub update_channel: String,
    /// Seconds between update checks (at least 60; 6 hours by default).
    pub update_interval_secs: u64,
    /// A new version must start and be heard by the coordinator within this many seconds, else it is rolled back.
    pub update_deadline_secs: u64,
    /// Where the updater keeps the versions marked bad [default: the cache dir].
    pub update_state: Option<PathBuf>,
    /// Seconds a keyring call may take before the agent gives up and says what to do (a locked keyring waits
    /// for someone to type its password).
    pub keyring_timeout_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            edge_url: DEFAULT_EDGE_URL.into(),
            coordinator_url: None,
            enrollment_token: None,
            endpoint: None,
            region: None,
            display_name: None,
            probe_interval_ms: 3000,
            max_gpu_temp_c: 85,
            control_socket: None,
            containers: true,
            allowed_images: None,
            cpu_percent: 50,
            memory_mb: 4096,
            allow_gpu: true,
            gpus: None,
            scratch_mb: 1024,
            gpu_percent: 100,
            allow_network_services: false,
            models_disk_mb: 20 * 1024,
            models_dir: None,
            docker_host: None,
            instance: "default".into(),
            gateway_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            tunnel: TunnelKind::None,
            catalogue_keys: Vec::new(),
            service_reach: ServiceReach::default(),
            socket_dir: None,
            cloudflared: PathBuf::from("cloudflared"),
            tunnel_hostname: None,
            schedule: Vec::new(),
            on_ac_power_only: false,
            idle_only: false,
            idle_after_minutes: 5,
            dht: true,
            dht_listen: "/ip4/0.0.0.0/tcp/0".into(),
            dht_server: false,
            dht_lan: false,
            dht_seeds: Vec::new(),
            dht_refresh_secs: 60,
            dht_stagger_ms: 2000,
            dht_join_wait_ms: 3000,
            dht_seed_cache: None,
            update_check: true,
            update_channel: "stable".into(),
            update_interval_secs: 6 * 3600,
            update_deadline_secs: 120,
            update_state: None,
            keyring_timeout_secs: 30,
        }
    }
}

/// Settings that cannot be used: the message names the key and what is allowed.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file cannot be read.
    #[error("cannot read the settings file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// Not valid TOML, or a key of the wrong type.
    #[error("the settings file {0} is not valid: {1}")]
    Parse(PathBuf, String),
    /// A value out of range.
    #[error("setting {key}: {message}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is allowed.
        message: String,
    },
}

fn check_url(key: &'static str, url: &str) -> Result<(), SettingsError> {
    if (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() > 8
        && url.len() <= 256
    {
        Ok(())
    } else {
        Err(SettingsError::Invalid {
            key,
            message: format!("must be an http:// or https:// URL, got {url:?}"),
        })
    }
}

impl Settings {
    /// How long a keyring call may take.
    pub fn keyring_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.keyring_timeout_secs)
    }

    /// `$XDG_CONFIG_HOME/commons/agent.toml`.
    pub fn default_path() -> PathBuf {
        dirs::config_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join("commons")
            .join("agent.toml")
    }

    /// Reads the file (defaults when it does not exist) and checks it. Keys it does not know are ignored with a
    /// warning rather than refused: after an update is rolled back, the older version must still start with
    /// settings a newer one wrote.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let (s, unknown) = match std::fs::read_to_string(path) {
            Ok(text) => {
                Self::parse(&text).map_err(|e| SettingsError::Parse(path.into(), e.to_string()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Self::default(), Vec::new()),
            Err(e) => return Err(SettingsError::Read(path.into(), e)),
        };
        for key in unknown {
            tracing::warn!(
                file = %path.display(),
                "ignoring the unknown setting {key:?} (a typo, or a setting of a newer version)"
            );
        }
        s.validate()?;
        Ok(s)
    }

    /// Parses settings, and the keys it did not know.
    pub fn parse(text: &str) -> Result<(Self, Vec<String>), toml::de::Error> {
        let mut unknown = Vec::new();
        let s = serde_ignored::deserialize(toml::Deserializer::parse(text)?, |p| {
            unknown.push(p.to_string());
        })?;
        Ok((s, unknown))
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), SettingsError> {
        check_url("edge_url", &self.edge_url)?;
        if cfg!(not(unix)) && self.service_reach == ServiceReach::Socket {
            return Err(SettingsError::Invalid {
                key: "service_reach",
                message: "\"socket\" needs Linux: this system's container engine runs containers in a virtual \
                          machine, so use \"ports\""
                    .into(),
            });
        }
        for (key, a) in std::iter::once(("dht_listen", &self.dht_listen))
            .chain(self.dht_seeds.iter().map(|s| ("dht_seeds", s)))
        {
            if a.parse::<commons_dht::Multiaddr>().is_err() {
                return Err(SettingsError::Invalid {
                    key,
                    message: format!("{a:?} is not a multiaddr (e.g. /ip4/0.0.0.0/tcp/0)"),
                });
            }
        }
        if !(1..=1800).contains(&self.dht_refresh_secs)
            || self.dht_stagger_ms > 60_000
            || self.dht_join_wait_ms > 60_000
        {
            return Err(SettingsError::Invalid {
                key: "dht_refresh_secs",
                message: "dht_refresh_secs must be from 1 to 1800, dht_stagger_ms and dht_join_wait_ms at most 60000"
                    .into(),
            });
        }
        if !commons_shared::release::CHANNELS.contains(&self.update_channel.as_str()) {
            return Err(SettingsError::Invalid {
                key: "update_channel",
                message: format!("must be stable or beta, got {:?}", self.update_channel),
            });
        }
        if !(60..=30 * 86_400).contains(&self.update_interval_secs) {
            return Err(SettingsError::Invalid {
                key: "update_interval_secs",
                message: format!(
                    "must be from 60 to 2592000 (30 days), got {}",
                    self.update_interval_secs
                ),
            });
        }
        if !(1..=600).contains(&self.keyring_timeout_secs) {
            return Err(SettingsError::Invalid {
                key: "keyring_timeout_secs",
                message: format!("must be from 1 to 600, got {}", self.keyring_timeout_secs),
            });
        }
        if !(5..=3600).contains(&self.update_deadline_secs) {
            return Err(SettingsError::Invalid {
                key: "update_deadline_secs",
                message: format!("must be from 5 to 3600, got {}", self.update_deadline_secs),
            });
        }
        if let Some(u) = &self.coordinator_url {
            check_url("coordinator_url", u)?;
        }
        if let Some(u) = &self.endpoint {
            check_url("endpoint", u)?;
        }
        if !(500..=60_000).contains(&self.probe_interval_ms) {
            return Err(SettingsError::Invalid {
                key: "probe_interval_ms",
                message: format!("must be from 500 to 60000, got {}", self.probe_interval_ms),
            });
        }
        if !(40..=100).contains(&self.max_gpu_temp_c) {
            return Err(SettingsError::Invalid {
                key: "max_gpu_temp_c",
                message: format!("must be from 40 to 100 °C, got {}", self.max_gpu_temp_c),
            });
        }
        if !(1..=100).contains(&self.cpu_percent) {
            return Err(SettingsError::Invalid {
                key: "cpu_percent",
                message: format!("must be from 1 to 100, got {}", self.cpu_percent),
            });
        }
        if !(64..=1_048_576).contains(&self.memory_mb) {
            return Err(SettingsError::Invalid {
                key: "memory_mb",
                message: format!("must be from 64 to 1048576, got {}", self.memory_mb),
            });
        }
        if self.instance.is_empty()
            || self.instance.len() > 32
            || !self
                .instance
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(SettingsError::Invalid {
                key: "instance",
                message: "must be 1 to 32 letters, digits or '-'".into(),
            });
        }
        if let Some(bad) = self
            .schedule
            .iter()
            .find(|w| crate::schedule::Window::parse(w).is_none())
        {
            return Err(SettingsError::Invalid {
                key: "schedule",
                message: format!(
                    "{bad:?} is not a window; write \"HH:MM-HH:MM\" (00:00 to 24:00, start and end differ)"
                ),
            });
        }
        if !(16..=1_048_576).contains(&self.scratch_mb) {
            return Err(SettingsError::Invalid {
                key: "scratch_mb",
                message: format!("must be from 16 to 1048576, got {}", self.scratch_mb),
            });
        }
        if !(10..=100).contains(&self.gpu_percent) {
            return Err(SettingsError::Invalid {
                key: "gpu_percent",
                message: format!("must be from 10 to 100, got {}", self.gpu_percent),
            });
        }
        if !(256..=16 * 1_048_576).contains(&self.models_disk_mb) {
            return Err(SettingsError::Invalid {
                key: "models_disk_mb",
                message: format!(
                    "must be from 256 to 16777216 (16 TiB), got {}",
                    self.models_disk_mb
                ),
            });
        }
        if !(1..=240).contains(&self.idle_after_minutes) {
            return Err(SettingsError::Invalid {
                key: "idle_after_minutes",
                message: format!("must be from 1 to 240, got {}", self.idle_after_minutes),
            });
        }
        if let Some(name) = &self.display_name {
            commons_shared::usage::check_display_name(name).map_err(|e| {
                SettingsError::Invalid {
                    key: "display_name",
                    message: match e {
                        commons_shared::validate::InputError::Field { message, .. } => message,
                        other => other.to_string(),
                    },
                }
            })?;
        }
        if self.tunnel == TunnelKind::Named {
            match &self.tunnel_hostname {
                Some(u) => check_url("tunnel_hostname", u)?,
                None => {
                    return Err(SettingsError::Invalid {
                        key: "tunnel_hostname",
                        message: "is required with tunnel = \"named\"".into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The container policy these settings give.
    pub fn policy(&self) -> crate::containers::Policy {
        crate::containers::Policy {
            allowed_images: self
                .allowed_images
                .clone()
                .unwrap_or_else(crate::containers::catalogue_images),
            cpu_percent: self.cpu_percent,
            memory_bytes: self.memory_mb * 1024 * 1024,
            allow_gpu: self.allow_gpu,
            instance: self.instance.clone(),
            gpus: self.gpus.clone(),
            scratch_mb: self.scratch_mb,
            gpu_percent: self.gpu_percent,
            allow_network: self.allow_network_services,
            models_dir: self.models_dir(),
            models_cap_bytes: self.models_disk_mb * 1024 * 1024,
            docker_host: self.docker_host.clone(),
            reach: match self.service_reach {
                ServiceReach::Socket => crate::containers::Reach::Socket(self.socket_dir()),
                ServiceReach::Ports => crate::containers::Reach::Ports,
            },
        }
    }

    /// The schedule windows.
    pub fn windows(&self) -> Vec<crate::schedule::Window> {
        self.schedule
            .iter()
            .filter_map(|w| crate::schedule::Window::parse(w))
            .collect()
    }

    /// Where the control socket is.
    pub fn control_socket(&self) -> PathBuf {
        self.control_socket.clone().unwrap_or_else(|| {
            dirs::runtime_dir()
                .unwrap_or_else(std::env::temp_dir)
                .join("commons-agent.sock")
        })
    }

    /// The model cache's folder (shared by every instance: a model is stored once).
    pub fn models_dir(&self) -> PathBuf {
        self.models_dir.clone().unwrap_or_else(|| {
            dirs::cache_dir()
                .unwrap_or_else(std::env::temp_dir)
                .join("commons")
                .join("models")
        })
    }

    /// The folder of the services' sockets (one folder per container inside).
    pub fn socket_dir(&self) -> PathBuf {
        self.socket_dir.clone().unwrap_or_else(|| {
            dirs::cache_dir()
                .unwrap_or_else(std::env::temp_dir)
                .join("commons")
                .join(format!("sockets-{}", self.instance))
        })
    }

    /// Where the DHT seed list is cached.
    pub fn seed_cache_path(&self) -> PathBuf {
        self.dht_seed_cache.clone().unwrap_or_else(|| {
            dirs::cache_dir()
                .unwrap_or_else(|| PathBuf::from("."))
                .join("commons")
                .join(format!("dht-seeds-{}.json", self.instance))
        })
    }

    /// Where the updater of `product` keeps the versions marked bad.
    pub fn update_state_path(&self, product: &str) -> PathBuf {
        self.update_state.clone().unwrap_or_else(|| {
            dirs::cache_dir()
                .unwrap_or_else(|| PathBuf::from("."))
                .join("commons")
                .join(format!("update-{product}-{}.json", self.instance))
        })
    }

    /// Where to register: the coordinator when one is set, else the edge.
    pub fn entry_url(&self) -> &str {
        self.coordinator_url.as_deref().unwrap_or(&self.edge_url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever a settings file holds, reading and checking it ends in settings or an error that names the
        /// key, never a panic; and settings that pass read back the same once written.
        #[test]
        fn any_file_is_settings_or_an_error_and_good_ones_read_back(
            lines in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "cpu_percent", "memory_mb", "gpu_percent", "max_gpu_temp_c", "edge_url", "coordinator_url",
                        "tunnel", "service_reach", "dht_listen", "idle_only", "display_name", "schedule", "unknown",
                    ]),
                    "(\"[ -~]{0,24}\"|-?[0-9]{1,7}|true|false|\\[\\])",
                ),
                0..8,
            )
        ) {
            let mut text = String::new();
            for (key, value) in &lines {
                text.push_str(&format!("{key} = {value}\n"));
            }
            if let Ok((s, _)) = Settings::parse(&text) {
                match s.validate() {
                    Ok(()) => {
                        let written = toml::to_string(&s).unwrap();
                        let (back, unknown) = Settings::parse(&written).unwrap();
                        proptest::prop_assert_eq!(back, s);
                        proptest::prop_assert!(unknown.is_empty());
                    }
                    Err(e) => proptest::prop_assert!(!e.to_string().is_empty()),
                }
            }
        }
    }

    #[test]
    fn tunnel_kinds_are_pinned_to_their_setting_text() {
        for (kind, text) in TunnelKind::ALL.into_iter().zip(["none", "quick", "named"]) {
            assert_eq!(kind.as_str(), text);
            let (s, _) = Settings::parse(&format!("tunnel = \"{text}\"")).unwrap();
            assert_eq!(s.tunnel, kind);
            assert_eq!(serde_json::to_value(kind).unwrap(), serde_json::json!(text));
        }
    }

    #[test]
    fn service_reach_is_pinned_to_its_setting_text() {
        for (reach, text) in ServiceReach::ALL.into_iter().zip(["socket", "ports"]) {
            assert_eq!(reach.as_str(), text);
            let (s, _) = Settings::parse(&format!("service_reach = \"{text}\"")).unwrap();
            assert_eq!(s.service_reach, reach);
        }
        let e = Settings::parse("service_reach = \"bridge\"").unwrap_err();
        assert!(e.to_string().contains("service_reach"), "{e}");
    }

    #[test]
    fn defaults_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        assert_eq!(Settings::load(&p).unwrap(), Settings::default());
        std::fs::write(
            &p,
            "coordinator_url = \"http://127.0.0.1:8080\"\nmax_gpu_temp_c = 80\n",
        )
        .unwrap();
        let s = Settings::load(&p).unwrap();
        assert_eq!(s.entry_url(), "http://127.0.0.1:8080");
        assert_eq!(s.max_gpu_temp_c, 80);
    }

    #[test]
    fn bad_settings_name_the_key_and_range() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        for (text, needle) in [
            (
                "max_gpu_temp_c = 300",
                "max_gpu_temp_c: must be from 40 to 100",
            ),
            (
                "probe_interval_ms = 10",
                "probe_interval_ms: must be from 500 to 60000",
            ),
            ("edge_url = \"ftp://x\"", "edge_url: must be an http"),
            ("cpu_percent = 0", "cpu_percent: must be from 1 to 100"),
            ("memory_mb = 1", "memory_mb: must be from 64"),
            ("instance = \"a b\"", "instance: must be"),
            (
                "tunnel = \"ssh\"",
                "tunnel: must be \"none\", \"quick\" or \"named\"",
            ),
            ("tunnel = \"named\"", "tunnel_hostname: is required"),
            ("max_gpu_temp_c = \"hot\"", "max_gpu_temp_c"),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = Settings::load(&p).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_ignored_and_named() {
        let (s, unknown) =
            Settings::parse("colour = \"red\"\nmax_gpu_temp_c = 80\nupdate_channel = \"beta\"\n")
                .unwrap();
        assert_eq!(unknown, vec!["colour".to_owned()]);
        assert_eq!((s.max_gpu_temp_c, s.update_channel.as_str()), (80, "beta"));
    }
}
