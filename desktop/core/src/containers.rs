//! Running the assigned services in containers, through the Docker Engine API (bollard).
//!
//! A volunteer's machine is sacred: the agent only ever lists, stops or removes containers that carry its
//! labels (owner and instance); each container runs unprivileged (all capabilities dropped, no new
//! privileges, read-only root with a tmpfs, an init process), capped in CPU, memory and processes, with its port
//! bound to 127.0.0.1 only; a GPU is requested only when the service needs one and the volunteer allows it; and
//! an image runs only when the volunteer's allow-list admits it, so a coordinator cannot make a volunteer run an
//! arbitrary image.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, DeviceRequest, HostConfig, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, RemoveContainerOptions,
    StopContainerOptions,
};
use commons_shared::api::{ContainerAssignment, ContainerState, ContainerStatus};
use commons_shared::backoff::Backoff;
use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::models::{Local, ModelCache};

/// How long a crashed container waits before it is started again.
const RESTART_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

/// Label: who owns the container.
pub const LABEL_OWNER: &str = "org.commons.owner";
/// The owner label's value.
pub const OWNER: &str = "commons-agent";
/// Label: which agent instance on this machine.
pub const LABEL_INSTANCE: &str = "org.commons.instance";
/// Label: the service.
pub const LABEL_SERVICE: &str = "org.commons.service";
/// Label: the host port on 127.0.0.1.
pub const LABEL_HOST_PORT: &str = "org.commons.host-port";
/// Label: the unix socket the container's service listens on (host path), in socket mode.
pub const LABEL_SOCKET: &str = "org.commons.socket";
/// Label: a digest of what the container was created from (a changed assignment means a new container).
pub const LABEL_SPEC: &str = "org.commons.spec";

/// The container engine failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No engine answers.
    #[error(
        "Docker is not running: {0}. To donate, {START_THE_ENGINE} (or point DOCKER_HOST at it); until then this machine donates no containers"
    )]
    NotRunning(String),
    /// The image is not on the volunteer's allow-list.
    #[error("the image {0:?} is not on this volunteer's allow-list (settings: allowed_images)")]
    NotAllowed(String),
    /// The engine refused something.
    #[error("container engine: {0}")]
    Engine(#[from] bollard::errors::Error),
    /// A model the service needs cannot be had.
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
}

/// What a volunteer does when no engine answers, in plain words: on Windows, Docker Desktop (its named pipe, which
/// bollard's local defaults reach) on WSL 2.
#[cfg(windows)]
const START_THE_ENGINE: &str = "install Docker Desktop and start it (it needs WSL 2: if Docker Desktop says so, \
     run `wsl --install` once as administrator and restart)";
#[cfg(target_os = "macos")]
const START_THE_ENGINE: &str = "install Docker Desktop and start it";
#[cfg(not(any(windows, target_os = "macos")))]
const START_THE_ENGINE: &str = "start Docker Desktop or install docker.io";

/// The engine failing, in plain words with what to do next (for a window; the log keeps the details).
pub fn engine_hint(e: &EngineError) -> String {
    match e {
        EngineError::NotRunning(_) => format!(
            "Docker is not running — {START_THE_ENGINE}, then press Retry. Until then this computer donates no \
             services."
        ),
        other => other.to_string(),
    }
}

/// What the volunteer allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Images allowed: an exact reference, or a prefix ending in '/' or ':'.
    pub allowed_images: Vec<String>,
    /// Share of all cores the containers may use together, percent.
    pub cpu_percent: u32,
    /// Memory per container, bytes.
    pub memory_bytes: u64,
    /// Whether containers may use the GPU.
    pub allow_gpu: bool,
    /// This agent's instance name (several agents can share one engine).
    pub instance: String,
    /// Which GPUs containers may use (indices); `None`: all.
    pub gpus: Option<Vec<u32>>,
    /// Writable scratch space per container (a tmpfs at /tmp; the root is read-only), MiB: the disk cap.
    pub scratch_mb: u64,
    /// The engine's socket (`unix:///…`); `None`: `DOCKER_HOST` or the platform default.
    pub docker_host: Option<String>,
    /// How the gateway reaches the containers' services.
    pub reach: Reach,
    /// Share of the GPU that GPU containers may use, percent (below 100, they are duty-cycled).
    pub gpu_percent: u32,
    /// Whether a service whose catalogue entry needs a network may have the engine's (otherwise it is refused).
    pub allow_network: bool,
    /// The model cache's folder.
    pub models_dir: PathBuf,
    /// The most the model cache may hold, bytes.
    pub models_cap_bytes: u64,
}

/// How the gateway reaches a container's service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reach {
    /// Over a unix socket in `dir/<container>/` (mounted at `/run/commons` in the container, which has no
    /// network): the service listens on `/run/commons/http.sock`, as `COMMONS_LISTEN` tells it.
    Socket(PathBuf),
    /// Over a port published on 127.0.0.1 (the container keeps the engine's network).
    Ports,
}

/// Where the gateway finds one container's service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// `127.0.0.1:{port}`.
    Port(u16),
    /// A unix socket on the host.
    Socket(PathBuf),
}

/// Where a container's service listens inside it, in socket mode.
pub const SERVICE_SOCKET: &str = "/run/commons/http.sock";

impl Policy {
    /// Whether an image may run.
    pub fn allows(&self, image: &str) -> bool {
        self.allowed_images.iter().any(|a| {
            a == image || ((a.ends_with('/') || a.ends_with(':')) && image.starts_with(a.as_str()))
        })
    }
}

/// The images of the shipped catalogue: the default allow-list.
pub fn catalogue_images() -> Vec<String> {
    commons_shared::catalogue::Catalogue::builtin()
        .services()
        .iter()
        .flat_map(|s| s.images().map(str::to_owned))
        .collect()
}

/// One pull progress event: bytes of one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The image.
    pub image: String,
    /// The layer id.
    pub layer: String,
    /// What the engine says ("Downloading", "Pull complete", ...), to show.
    pub status: String,
    /// The layer is in place (pulled now, or already there): its bar is full.
    pub done: bool,
    /// Bytes so far.
    pub current: u64,
    /// Bytes in all (0 when unknown).
    pub total: u64,
}

/// One of our containers as the engine has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ours {
    /// Container id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Service.
    pub service: String,
    /// Running now.
    pub running: bool,
    /// Spec digest label.
    pub spec: String,
    /// Where its service is reached.
    pub upstream: Upstream,
}

/// The engine, and what the agent wants running on it.
#[derive(Debug)]
pub struct Engine {
    docker: Docker,
    policy: Policy,
    restarts: HashMap<String, (u32, Instant)>,
    models: ModelCache,
    /// The GPU containers being duty-cycled, by container id.
    throttled: parking_lot::Mutex<HashMap<String, DutyCycle>>,
}

/// Duty-cycling one container to a share of the time, as BOINC throttles the CPU: in each period it runs for
/// `percent` of it and is paused (the cgroup freezer: no process of it is scheduled, so it submits no GPU work)
/// for the rest. This caps a GPU container's GPU use where the driver offers no cap of its own. Dropping it stops
/// the cycling and leaves the container running.
#[derive(Debug)]
pub struct DutyCycle {
    percent: u32,
    _stop: tokio::sync::watch::Sender<()>,
}

impl DutyCycle {
    /// The period: short enough that a paused container answers within it, long enough that pausing (a few
    /// milliseconds) is a small part of it.
    pub const PERIOD: Duration = Duration::from_millis(1000);

    /// Starts cycling container `id` to `percent` (1 to 99) of the time.
    ///
    /// The engine takes time to pause a busy container (the freezer waits for its tasks: about a quarter of a second
    /// on a loaded 2-core machine, against a few milliseconds to unpause), and the container runs until the pause
    /// lands. So each call is made early by the time the last ones took (a moving average), so that the container
    /// freezes and thaws on schedule. A pause the engine could not make (its freezer timed out) is tried again in the
    /// next period; the cycling ends only when the container is gone.
    pub fn start(docker: Docker, id: String, percent: u32) -> Self {
        let (tx, mut rx) = tokio::sync::watch::channel(());
        let on = Self::PERIOD * percent.clamp(1, 99) / 100;
        let off = Self::PERIOD - on;
        tokio::spawn(async move {
            let mut start = tokio::time::Instant::now();
            let (mut pause_lag, mut unpause_lag) = (Duration::ZERO, Duration::ZERO);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(start + on - pause_lag) => {}
                    _ = rx.changed() => break,
                }
                let asked = tokio::time::Instant::now();
                let paused = match docker.pause_container(&id).await {
                    Ok(()) => {
                        pause_lag = average(pause_lag, asked.elapsed()).min(on / 2);
                        true
                    }
                    Err(e) if gone(&e) => break,
                    Err(e) => {
                        tracing::debug!(container = %id, error = %e, "cannot pause now; trying again next period");
                        false
                    }
                };
                let stopped = tokio::select! {
                    _ = tokio::time::sleep_until(start + Self::PERIOD - unpause_lag) => false,
                    _ = rx.changed() => true,
                };
                if paused {
                    let asked = tokio::time::Instant::now();
                    match docker.unpause_container(&id).await {
                        Ok(()) => unpause_lag = average(unpause_lag, asked.elapsed()).min(off / 2),
                        Err(e) if gone(&e) => break,
                        Err(e) => tracing::warn!(container = %id, error = %e, "cannot unpause"),
                    }
                }
                if stopped {
                    break;
                }
                start += Self::PERIOD;
                // Behind by more than a period (a slow engine): start afresh rather than catch up.
                let now = tokio::time::Instant::now();
                if now > start + Self::PERIOD {
                    start = now;
                }
            }
        });
        Self { percent, _stop: tx }
    }
}

/// A moving average of how long engine calls take (a quarter of the newest).
fn average(old: Duration, new: Duration) -> Duration {
    (old * 3 + new) / 4
}

/// The engine says the container is no longer there (or no longer running): nothing is left to cycle.
fn gone(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404 | 409,
            ..
        }
    )
}

fn spec_digest(a: &ContainerAssignment, p: &Policy) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        &a.image,
        a.port,
        &a.env,
        &a.args,
        &a.models,
        a.network,
        a.requires_gpu && p.allow_gpu,
        p.cpu_percent,
        p.memory_bytes,
        &p.gpus,
        p.scratch_mb,
        &p.reach,
    )
        .hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Whether the service behind `upstream` answers `GET path` with a 2xx within a second.
pub async fn answers(upstream: &Upstream, path: &str) -> bool {
    use commons_server::forward;
    let check = async {
        match upstream {
            Upstream::Port(p) => match TcpStream::connect(("127.0.0.1", *p)).await {
                Ok(io) => forward::answers(io, path).await,
                Err(_) => false,
            },
            Upstream::Socket(s) => match connect_socket(s).await {
                Ok(io) => forward::answers(io, path).await,
                Err(_) => false,
            },
        }
    };
    tokio::time::timeout(Duration::from_secs(1), check)
        .await
        .unwrap_or(false)
}

/// How a container is wired to the host.
struct Network {
    /// `none` in socket mode.
    mode: Option<String>,
    /// The socket folder, in socket mode.
    binds: Option<Vec<String>>,
    /// The agent's own uid:gid in socket mode, so that the socket it makes is the agent's (and no one else's).
    user: Option<String>,
    /// The published port, in ports mode.
    ports: Option<HashMap<String, Option<Vec<PortBinding>>>>,
}

/// Connects to a service's unix socket.
#[cfg(unix)]
pub(crate) async fn connect_socket(socket: &Path) -> std::io::Result<tokio::net::UnixStream> {
    tokio::net::UnixStream::connect(socket).await
}

/// No service answers on a unix socket here: the engine (Docker Desktop) runs containers in a virtual machine, so
/// services answer on ports (`service_reach = "ports"`, the default off Linux).
#[cfg(not(unix))]
pub(crate) async fn connect_socket(socket: &Path) -> std::io::Result<TcpStream> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        format!(
            "{} is a unix socket, which this system's container engine cannot share",
            socket.display()
        ),
    ))
}

/// Off unix there is no socket folder (see [`connect_socket`]); settings refuse `service_reach = "socket"`.
#[cfg(not(unix))]
fn socket_folder(_dir: &Path, _name: &str) -> Result<(PathBuf, String), EngineError> {
    Err(EngineError::NotRunning(
        "services cannot answer on a unix socket on this system: set service_reach = \"ports\""
            .into(),
    ))
}

/// The socket folder of container `name` under `dir`: made private to the agent (0700), emptied of an old socket;
/// with the agent's `uid:gid` for the container to run as.
#[cfg(unix)]
fn socket_folder(dir: &Path, name: &str) -> Result<(PathBuf, String), EngineError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let folder = dir.join(name);
    let made = (|| -> std::io::Result<String> {
        std::fs::create_dir_all(&folder)?;
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o700))?;
        match std::fs::remove_file(folder.join("http.sock")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let m = std::fs::metadata(&folder)?;
        Ok(format!("{}:{}", m.uid(), m.gid()))
    })();
    let user = made.map_err(|e| {
        EngineError::NotRunning(format!(
            "cannot make the socket folder {}: {e}",
            folder.display()
        ))
    })?;
    Ok((folder, user))
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Engine {
    /// Connects to the engine at `DOCKER_HOST` (or the platform default) and agrees on an API version.
    pub async fn connect(policy: Policy) -> Result<Self, EngineError> {
        let docker = match &policy.docker_host {
            #[cfg(not(windows))]
            Some(host) => Docker::connect_with_socket(host, 120, bollard::API_DEFAULT_VERSION),
            // Straight to the pipe (`npipe:////./pipe/docker_engine`, Docker Desktop's): bollard's
            // `connect_with_socket` first asks the file system whether the path exists, which Wine answers no for a
            // pipe that is there. A missing pipe fails at the first call below, as a missing socket does.
            #[cfg(windows)]
            Some(host) => Docker::connect_with_named_pipe(host, 120, bollard::API_DEFAULT_VERSION),
            None => Docker::connect_with_local_defaults(),
        }
        .map_err(|e| EngineError::NotRunning(e.to_string()))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| EngineError::NotRunning(e.to_string()))?;
        docker
            .ping()
            .await
            .map_err(|e| EngineError::NotRunning(e.to_string()))?;
        Ok(Self {
            docker,
            models: ModelCache::new(policy.models_dir.clone(), policy.models_cap_bytes),
            policy,
            restarts: HashMap::new(),
            throttled: Default::default(),
        })
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// A new policy: containers created under the old one no longer match their spec, so the next reconcile
    /// replaces them (the engine socket stays the one connected to).
    pub fn set_policy(&mut self, policy: Policy) {
        self.models = ModelCache::new(policy.models_dir.clone(), policy.models_cap_bytes);
        self.policy = Policy {
            docker_host: self.policy.docker_host.clone(),
            ..policy
        };
    }

    /// Pulls an image, sending per-layer progress.
    pub async fn pull(
        &self,
        image: &str,
        progress: Option<&mpsc::Sender<Progress>>,
    ) -> Result<(), EngineError> {
        if !self.policy.allows(image) {
            return Err(EngineError::NotAllowed(image.into()));
        }
        let opts = CreateImageOptions {
            from_image: Some(image.into()),
            ..Default::default()
        };
        let mut stream = self.docker.create_image(Some(opts), None, None);
        while let Some(item) = stream.next().await {
            let info = item?;
            if let (Some(tx), Some(layer)) = (progress, info.id.clone()) {
                let d = info.progress_detail.unwrap_or_default();
                let status = info.status.unwrap_or_default();
                // The engine says a layer is in place only in its status text; this is the one place that reads it.
                let done = ["Pull complete", "Already exists"]
                    .iter()
                    .any(|s| status.starts_with(s));
                // Never wait for a slow reader: a full channel drops the event.
                let _ = tx.try_send(Progress {
                    image: image.into(),
                    layer,
                    status,
                    done,
                    current: d.current.unwrap_or(0).max(0) as u64,
                    total: d.total.unwrap_or(0).max(0) as u64,
                });
            }
        }
        Ok(())
    }

    async fn has_image(&self, image: &str) -> bool {
        self.docker.inspect_image(image).await.is_ok()
    }

    /// Our containers (this owner and instance), running or not.
    pub async fn ours(&self) -> Result<Vec<Ours>, EngineError> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![
                format!("{LABEL_OWNER}={OWNER}"),
                format!("{LABEL_INSTANCE}={}", self.policy.instance),
            ],
        )]);
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.unwrap_or_default();
                // Belt and braces: never trust the filter alone with a volunteer's containers.
                if labels.get(LABEL_OWNER).map(String::as_str) != Some(OWNER)
                    || labels.get(LABEL_INSTANCE) != Some(&self.policy.instance)
                {
                    return None;
                }
                Some(Ours {
                    id: c.id?,
                    name: c
                        .names
                        .unwrap_or_default()
                        .first()
                        .map(|n| n.trim_start_matches('/').to_owned())
                        .unwrap_or_default(),
                    service: labels.get(LABEL_SERVICE).cloned().unwrap_or_default(),
                    running: matches!(
                        c.state,
                        Some(
                            ContainerSummaryStateEnum::RUNNING
                                | ContainerSummaryStateEnum::RESTARTING
                                // Paused in its duty cycle (GPU share): running, in the cycle's pauses.
                                | ContainerSummaryStateEnum::PAUSED
                        )
                    ),
                    spec: labels.get(LABEL_SPEC).cloned().unwrap_or_default(),
                    upstream: match labels.get(LABEL_SOCKET) {
                        Some(path) => Upstream::Socket(path.into()),
                        None => Upstream::Port(
                            labels
                                .get(LABEL_HOST_PORT)
                                .and_then(|p| p.parse().ok())
                                .unwrap_or(0),
                        ),
                    },
                })
            })
            .collect())
    }

    fn container_name(&self, a: &ContainerAssignment) -> String {
        format!("{}-{}", a.name, self.policy.instance)
    }

    /// Creates and starts a container for an assignment.
    pub async fn create(
        &self,
        a: &ContainerAssignment,
        models: &[Local],
    ) -> Result<Ours, EngineError> {
        if !self.policy.allows(&a.image) {
            return Err(EngineError::NotAllowed(a.image.clone()));
        }
        let name = self.container_name(a);
        let spec = spec_digest(a, &self.policy);
        let port_key = format!("{}/tcp", a.port);
        let mut labels = HashMap::from([
            (LABEL_OWNER.to_owned(), OWNER.to_owned()),
            (LABEL_INSTANCE.to_owned(), self.policy.instance.clone()),
            (LABEL_SERVICE.to_owned(), a.service.clone()),
            (LABEL_SPEC.to_owned(), spec.clone()),
        ]);
        let mut env: Vec<String> = a.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let (upstream, network) = match &self.policy.reach {
            Reach::Socket(dir) => {
                let (folder, user) = socket_folder(dir, &name)?;
                let socket = folder.join("http.sock");
                labels.insert(LABEL_SOCKET.to_owned(), socket.display().to_string());
                env.push(format!("COMMONS_LISTEN=unix:{SERVICE_SOCKET}"));
                let network = Network {
                    // No network, unless the signed catalogue says the service needs one and the volunteer allows
                    // it (the agent refuses the assignment otherwise).
                    mode: (!(a.network && self.policy.allow_network)).then(|| "none".into()),
                    binds: Some(vec![format!("{}:/run/commons", folder.display())]),
                    user: Some(user),
                    ports: None,
                };
                (Upstream::Socket(socket), network)
            }
            Reach::Ports => {
                let host_port = free_port()
                    .map_err(|e| EngineError::NotRunning(format!("no free port: {e}")))?;
                labels.insert(LABEL_HOST_PORT.to_owned(), host_port.to_string());
                let network = Network {
                    mode: None,
                    binds: None,
                    user: None,
                    ports: Some(HashMap::from([(
                        port_key.clone(),
                        Some(vec![PortBinding {
                            host_ip: Some("127.0.0.1".into()),
                            host_port: Some(host_port.to_string()),
                        }]),
                    )])),
                };
                (Upstream::Port(host_port), network)
            }
        };
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as i64;
        let nano_cpus =
            cores * 1_000_000_000 * i64::from(self.policy.cpu_percent.clamp(1, 100)) / 100;
        let device_requests = (a.requires_gpu && self.policy.allow_gpu).then(|| {
            vec![DeviceRequest {
                count: if self.policy.gpus.is_some() {
                    None
                } else {
                    Some(-1)
                },
                device_ids: self
                    .policy
                    .gpus
                    .as_ref()
                    .map(|g| g.iter().map(u32::to_string).collect()),
                capabilities: Some(vec![vec!["gpu".into()]]),
                ..Default::default()
            }]
        });
        let host = HostConfig {
            privileged: Some(false),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            readonly_rootfs: Some(true),
            tmpfs: Some(HashMap::from([(
                "/tmp".into(),
                format!("rw,noexec,nosuid,size={}m", self.policy.scratch_mb),
            )])),
            init: Some(true),
            memory: Some(self.policy.memory_bytes as i64),
            nano_cpus: Some(nano_cpus),
            pids_limit: Some(256),
            network_mode: network.mode,
            binds: {
                let binds: Vec<String> = network
                    .binds
                    .into_iter()
                    .flatten()
                    .chain(models.iter().map(Local::bind))
                    .collect();
                (!binds.is_empty()).then_some(binds)
            },
            port_bindings: network.ports.clone(),
            device_requests,
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(a.image.clone()),
            env: Some(env),
            cmd: (!a.args.is_empty()).then(|| a.args.clone()),
            labels: Some(labels),
            user: network.user,
            exposed_ports: network.ports.map(|_| vec![port_key]),
            host_config: Some(host),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await?;
        self.docker.start_container(&created.id, None).await?;
        Ok(Ours {
            id: created.id,
            name,
            service: a.service.clone(),
            running: true,
            spec,
            upstream,
        })
    }

    /// Stops one of ours.
    pub async fn stop(&self, id: &str) -> Result<(), EngineError> {
        match self
            .docker
            .stop_container(
                id,
                Some(StopContainerOptions {
                    t: Some(5),
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304 | 404,
                ..
            }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes one of ours (stopping it first).
    pub async fn remove(&self, id: &str) -> Result<(), EngineError> {
        match self
            .docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes one of ours and its socket folder.
    async fn remove_ours(&self, c: &Ours) -> Result<(), EngineError> {
        self.remove(&c.id).await?;
        if let (Upstream::Socket(socket), Reach::Socket(dir)) = (&c.upstream, &self.policy.reach)
            && let Some(folder) = socket.parent().filter(|f| f.starts_with(dir))
            && let Err(e) = std::fs::remove_dir_all(folder)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(folder = %folder.display(), error = %e, "cannot remove a socket folder");
        }
        Ok(())
    }

    /// Duty-cycles the running GPU containers of `desired` to the volunteer's GPU share (none at 100 %), and stops
    /// cycling the others.
    fn throttle(&self, desired: &[ContainerAssignment], ours: &BTreeMap<String, Ours>) {
        let share = self.policy.gpu_percent;
        let mut throttled = self.throttled.lock();
        let wanted: HashMap<&str, u32> = desired
            .iter()
            .filter(|a| a.requires_gpu && self.policy.allow_gpu && share < 100)
            .filter_map(|a| ours.get(&a.service))
            .filter(|c| c.running)
            .map(|c| (c.id.as_str(), share))
            .collect();
        throttled.retain(|id, d| wanted.get(id.as_str()) == Some(&d.percent));
        for (id, percent) in wanted {
            throttled.entry(id.to_owned()).or_insert_with(|| {
                tracing::info!(container = %id, percent, "duty-cycling a GPU container");
                DutyCycle::start(self.docker.clone(), id.to_owned(), percent)
            });
        }
    }

    /// Stops all of ours (pause).
    pub async fn stop_all(&self) -> Result<(), EngineError> {
        self.throttled.lock().clear();
        for c in self.ours().await? {
            self.stop(&c.id).await?;
        }
        Ok(())
    }

    /// Removes all of ours (quit): nothing of ours is left behind.
    pub async fn remove_all(&mut self) -> Result<(), EngineError> {
        self.throttled.lock().clear();
        for c in self.ours().await? {
            self.remove_ours(&c).await?;
        }
        self.restarts.clear();
        Ok(())
    }

    /// Makes the engine match `desired`: adopts matching containers (after an agent restart too), removes stale or
    /// changed ones, pulls and creates missing ones, restarts crashed ones with backoff (1 s doubling to 60 s).
    /// Returns the state of every desired container for the heartbeat.
    pub async fn reconcile(
        &mut self,
        desired: &[ContainerAssignment],
        progress: Option<&mpsc::Sender<Progress>>,
    ) -> Result<Vec<ContainerStatus>, EngineError> {
        let mut have: BTreeMap<String, Ours> = BTreeMap::new();
        for c in self.ours().await? {
            let wanted = desired.iter().find(|a| a.service == c.service);
            match wanted {
                Some(a)
                    if spec_digest(a, &self.policy) == c.spec && !have.contains_key(&c.service) =>
                {
                    have.insert(c.service.clone(), c);
                }
                _ => self.remove_ours(&c).await?,
            }
        }
        let mut out = Vec::with_capacity(desired.len());
        // Models that no eviction may take: every one the assignment needs.
        let needed: Vec<&str> = desired
            .iter()
            .flat_map(|d| d.models.iter().map(|m| m.sha256.as_str()))
            .collect();
        for a in desired {
            let name = a.name.clone();
            if !self.policy.allows(&a.image) {
                tracing::warn!(image = %a.image, "refusing an image outside the allow-list");
                out.push(ContainerStatus {
                    name,
                    state: ContainerState::Failed,
                    restarts: 0,
                });
                continue;
            }
            match have.get(&a.service) {
                Some(c) if c.running => out.push(ContainerStatus {
                    name,
                    // Running, but serving only once its health check passes.
                    state: match &a.health {
                        Some(path) if !answers(&c.upstream, path).await => ContainerState::Starting,
                        _ => ContainerState::Running,
                    },
                    restarts: self.restarts.get(&a.service).map_or(0, |r| r.0),
                }),
                Some(c) => {
                    // Crashed: restart with backoff.
                    let (n, at) = *self
                        .restarts
                        .get(&a.service)
                        .unwrap_or(&(0, Instant::now() - Duration::from_secs(3600)));
                    let wait = RESTART_BACKOFF.after(n);
                    if at.elapsed() >= wait {
                        self.docker.start_container(&c.id, None).await?;
                        self.restarts
                            .insert(a.service.clone(), (n + 1, Instant::now()));
                    }
                    out.push(ContainerStatus {
                        name,
                        state: ContainerState::Restarting,
                        restarts: n + 1,
                    });
                }
                None => {
                    if !self.has_image(&a.image).await {
                        self.pull(&a.image, progress).await?;
                    }
                    let models = self
                        .models
                        .ensure(&a.models, &needed, progress.map(|p| (p, a.image.as_str())))
                        .await?;
                    self.create(a, &models).await?;
                    out.push(ContainerStatus {
                        name,
                        // Serving once its health check passes, at a later pass.
                        state: if a.health.is_some() {
                            ContainerState::Starting
                        } else {
                            ContainerState::Running
                        },
                        restarts: 0,
                    });
                }
            }
        }
        self.throttle(desired, &have);
        Ok(out)
    }

    /// The raw engine (tests inspect containers with it).
    pub fn docker(&self) -> &Docker {
        &self.docker
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A policy that allows nothing, with the engine at `docker_host`.
    fn policy(docker_host: Option<String>) -> Policy {
        Policy {
            allowed_images: Vec::new(),
            cpu_percent: 50,
            memory_bytes: 1 << 30,
            allow_gpu: false,
            instance: "t".into(),
            gpus: None,
            scratch_mb: 64,
            gpu_percent: 100,
            allow_network: false,
            models_dir: PathBuf::from("/nonexistent"),
            models_cap_bytes: 0,
            docker_host,
            reach: Reach::Ports,
        }
    }

    #[test]
    fn allow_list() {
        let p = Policy {
            allowed_images: vec![
                "docker.io/library/redis:7.4-alpine".into(),
                "127.0.0.1:5000/".into(),
                "ghcr.io/commons/ocr:".into(),
            ],
            ..policy(None)
        };
        assert!(p.allows("docker.io/library/redis:7.4-alpine"));
        assert!(!p.allows("docker.io/library/redis:latest"));
        assert!(p.allows("127.0.0.1:5000/tiny:1"));
        assert!(p.allows("ghcr.io/commons/ocr:2"));
        assert!(!p.allows("ghcr.io/commons/ocr-evil:2"));
        assert!(!p.allows("evil.example/miner:1"));
        assert!(catalogue_images().iter().all(|i| {
            Policy {
                allowed_images: catalogue_images(),
                ..p.clone()
            }
            .allows(i)
        }));
    }

    /// Docker Desktop's engine answers on a named pipe, which Docker Desktop alone provides; a stand-in answers the
    /// two calls [`Engine::connect`] makes (the API version, then a ping) on a real pipe, and the agent reaches it
    /// through bollard's named-pipe client as it reaches Docker Desktop. With no engine on the pipe, the volunteer
    /// is told what to install.
    #[cfg(windows)]
    #[tokio::test]
    async fn the_engine_is_reached_over_a_named_pipe_as_docker_desktop_serves_it() {
        use std::sync::{Arc, Mutex};

        use http_body_util::Full;
        use hyper::body::Bytes;
        use tokio::net::windows::named_pipe::ServerOptions;

        let name = format!(r"\\.\pipe\commons-test-engine-{}", std::process::id());
        let asked = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut next = ServerOptions::new()
            .first_pipe_instance(true)
            .create(&name)
            .unwrap();
        let (pipe, seen) = (name.clone(), asked.clone());
        tokio::spawn(async move {
            while next.connect().await.is_ok() {
                let fresh = ServerOptions::new().create(&pipe).unwrap();
                let connected = std::mem::replace(&mut next, fresh);
                let seen = seen.clone();
                let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let path = req.uri().path().to_owned();
                    seen.lock().unwrap().push(path.clone());
                    let (status, body) = if path.ends_with("/_ping") {
                        (200, "OK")
                    } else if path.ends_with("/version") {
                        (
                            200,
                            r#"{"Version":"27.0.0","ApiVersion":"1.47","MinAPIVersion":"1.24","Os":"linux","Arch":"amd64"}"#,
                        )
                    } else {
                        (404, r#"{"message":"not served by this stand-in"}"#)
                    };
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(body.as_bytes())))
                                .unwrap(),
                        )
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(connected), service),
                );
            }
        });
        // The form of Docker Desktop's own address, npipe:////./pipe/docker_engine.
        let host = format!("npipe://{}", name.replace('\\', "/"));
        Engine::connect(policy(Some(host)))
            .await
            .expect("the engine on the pipe answers");
        let asked = asked.lock().unwrap().clone();
        assert!(asked.iter().any(|p| p.ends_with("/version")), "{asked:?}");
        assert!(asked.iter().any(|p| p.ends_with("/_ping")), "{asked:?}");

        let gone = Engine::connect(policy(Some(
            "npipe:////./pipe/commons-test-no-engine".into(),
        )))
        .await
        .expect_err("no engine answers on that pipe");
        assert!(matches!(gone, EngineError::NotRunning(_)), "{gone}");
        assert!(
            engine_hint(&gone).contains("install Docker Desktop and start it"),
            "{}",
            engine_hint(&gone)
        );
    }
}
