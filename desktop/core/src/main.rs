//! `commons-agent`: the headless volunteer agent for servers and CI.
//!
//! `run` joins and donates until SIGTERM, Ctrl-C or `quit`; `detect` prints the hardware; `status`, `pause`,
//! `resume` and `quit` talk to the running agent over its control socket.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use commons_agent::agent::{self, Command, State};
use commons_agent::control;
use commons_agent::credentials::{CredentialStore, FileStore, KeyringStore};
use commons_agent::hardware;
use commons_agent::settings::Settings;
use commons_agent::update;

/// This build's version (a release build may set it: [`commons_agent::build_version!`]).
const VERSION: &str = commons_agent::build_version!();

/// The Commons volunteer agent (headless).
#[derive(Debug, Parser)]
#[command(version = VERSION, about)]
struct Cli {
    /// Settings file [default: $XDG_CONFIG_HOME/commons/agent.toml].
    #[arg(long, global = true, env = "COMMONS_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Keep the worker credentials in this file (mode 0600) instead of the OS keyring.
    #[arg(long, global = true, env = "COMMONS_CREDENTIALS_FILE")]
    credentials_file: Option<PathBuf>,
    /// The control socket [default: from the settings].
    #[arg(long, global = true, env = "COMMONS_CONTROL_SOCKET")]
    control_socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Join and donate until stopped.
    Run {
        /// Join through this edge.
        #[arg(long)]
        edge: Option<String>,
        /// Join this coordinator directly.
        #[arg(long)]
        coordinator: Option<String>,
        /// Enrollment token, when the coordinator asks for one.
        #[arg(long, env = "COMMONS_ENROLLMENT_TOKEN", hide_env_values = true)]
        enrollment_token: Option<String>,
    },
    /// Print this machine's capabilities.
    Detect {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// The running agent's state, in words.
    Status {
        /// As JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Pause the running agent.
    Pause,
    /// Resume the running agent.
    Resume,
    /// Stop the running agent: unregister and exit.
    Quit,
    /// Check that the OS keyring keeps a secret (writes, reads and deletes a test entry).
    KeyringCheck,
    /// Find a worker for a service: in the DHT first (cached seeds, else the edge's), else the coordinator.
    Find {
        /// The service, e.g. ocr.
        service: String,
        /// The coordinator to fall back to [default: the settings' coordinator, else the edge].
        #[arg(long)]
        coordinator: Option<String>,
        /// Ask the coordinator only.
        #[arg(long)]
        no_dht: bool,
    },
}

fn settings(cli: &Cli) -> anyhow::Result<Settings> {
    let path = cli.config.clone().unwrap_or_else(Settings::default_path);
    let mut s = Settings::load(&path)?;
    if let Some(p) = &cli.control_socket {
        s.control_socket = Some(p.clone());
    }
    Ok(s)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    commons_server::tls::load_trust()?;
    let s = settings(&cli)?;
    match cli.command {
        Cmd::Detect { json } => detect(json),
        Cmd::KeyringCheck => keyring_check(&s),
        Cmd::Find {
            service,
            coordinator,
            no_dht,
        } => find(s, &service, coordinator, no_dht).await,
        Cmd::Status { json } => {
            let status = control::call(&s.control_socket(), "GET", "/status").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                let status: control::Status = serde_json::from_value(status).map_err(|e| {
                    anyhow::anyhow!(
                        "the running agent answered something this version cannot read: {e}"
                    )
                })?;
                print!("{status}");
            }
            Ok(())
        }
        Cmd::Pause | Cmd::Resume | Cmd::Quit => {
            let route = match cli.command {
                Cmd::Pause => "/pause",
                Cmd::Resume => "/resume",
                _ => "/quit",
            };
            control::call(&s.control_socket(), "POST", route).await?;
            println!("ok");
            Ok(())
        }
        Cmd::Run {
            edge,
            coordinator,
            enrollment_token,
        } => {
            let mut s = s;
            if let Some(e) = edge {
                s.edge_url = e;
            }
            if coordinator.is_some() {
                s.coordinator_url = coordinator;
            }
            if enrollment_token.is_some() {
                s.enrollment_token = enrollment_token;
            }
            s.validate()?;
            donate(s, cli.credentials_file.as_deref()).await
        }
    }
}

/// `detect`: this machine's capabilities.
fn detect(json: bool) -> anyhow::Result<()> {
    let d = hardware::detect(hardware::default_probe().as_ref());
    if json {
        println!("{}", serde_json::to_string_pretty(&d.capabilities)?);
    } else {
        print!("{}", hardware::table(&d));
    }
    Ok(())
}

/// `keyring-check`: the OS keyring keeps, returns and forgets a secret.
fn keyring_check(s: &Settings) -> anyhow::Result<()> {
    use commons_agent::credentials::Credentials;
    let store = KeyringStore::named(
        "commons-agent-check",
        &format!("check-{}", std::process::id()),
    )
    .with_timeout(s.keyring_timeout());
    let backend = store.backend()?;
    let probe = Credentials {
        worker_id: "check".into(),
        worker_token: "check".into(),
        coordinator_url: "http://127.0.0.1:1".into(),
    };
    store.save(&probe)?;
    anyhow::ensure!(
        store.load()? == Some(probe),
        "the keyring returned something else than was stored"
    );
    store.clear()?;
    println!("keyring ok: {backend:?}");
    Ok(())
}

/// `find`: a worker for `service`, through the DHT (a short-lived client node) or the coordinator.
async fn find(
    mut s: Settings,
    service: &str,
    coordinator: Option<String>,
    no_dht: bool,
) -> anyhow::Result<()> {
    if !commons_shared::catalogue::is_service_name(service) {
        anyhow::bail!("{service:?} is not a service name (1 to 32 lowercase letters, digits or -)");
    }
    let fallback = coordinator.unwrap_or_else(|| s.entry_url().to_owned());
    // A short-lived lookup: a client node, no stagger.
    s.dht_server = false;
    s.dht_stagger_ms = 0;
    s.dht_listen = "/ip4/0.0.0.0/tcp/0".into();
    let dht = if no_dht || !s.dht {
        None
    } else {
        let d = commons_agent::dht::start_with(&s, commons_dht::generate_keypair()).await?;
        match commons_agent::dht::join(&d, &s, &commons_agent::client::Client::new()).await {
            Ok(_) => Some(d),
            Err(e) => {
                eprintln!("not using the DHT: {e}");
                None
            }
        }
    };
    let route = commons_agent::dht::find_worker(dht.as_ref(), &fallback, service).await;
    println!("{}", serde_json::to_string_pretty(&route)?);
    Ok(())
}

/// `run`: joins and donates until stopped; installs an update the agent handed over for.
async fn donate(s: Settings, credentials_file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let creds: Arc<dyn CredentialStore> = match credentials_file {
        Some(p) => Arc::new(FileStore::new(p)),
        None => {
            let k = Arc::new(KeyringStore::new().with_timeout(s.keyring_timeout()));
            // Fail now, with what to do, rather than after joining.
            let probe = k.clone();
            tokio::task::spawn_blocking(move || probe.load()).await??;
            k
        }
    };
    let probe: Arc<dyn hardware::GpuProbe> = Arc::from(hardware::default_probe());
    if let Some(report) = std::env::var_os(update::TRIAL_ENV) {
        return Ok(update::trial(s, creds, probe, VERSION, &PathBuf::from(report)).await?);
    }
    if let Some(from) = std::env::var_os(update::UPDATED_FROM_ENV) {
        tracing::warn!(from = %from.to_string_lossy(), to = %VERSION, "updated");
    }
    let socket = s.control_socket();
    let updater = update::Updater::from_settings(commons_agent::this_build!("agent"), &s)
        .map_err(|e| anyhow::anyhow!("cannot tell where this binary is, to update it: {e}"))?;
    let (deadline, interval) = (
        std::time::Duration::from_secs(s.update_deadline_secs),
        std::time::Duration::from_secs(s.update_interval_secs),
    );
    let options = agent::Options {
        version: VERSION.into(),
        paused: update::start_paused(),
    };
    let mut handle = agent::start_with(s, creds, probe, options);
    if let Some(rx) = handle.take_progress() {
        tokio::spawn(pull_bars(rx));
    }
    let _control = control::serve(
        &socket,
        handle.state.clone(),
        handle.session.clone(),
        handle.commands(),
    )
    .await?;
    println!("commons-agent running; control socket {}", socket.display());
    let commands = handle.commands();
    tokio::spawn(async move {
        commons_server::shutdown_signal().await;
        let _ = commands.send(Command::Quit).await;
    });
    let staged = Arc::new(parking_lot::Mutex::new(None));
    if let Some(u) = updater.clone() {
        tokio::spawn(check_for_updates(
            u,
            handle.state.clone(),
            handle.session.clone(),
            handle.commands(),
            staged.clone(),
            interval,
        ));
    }
    let mut last = State::Stopped;
    loop {
        let state = handle.state.borrow().clone();
        if state != last {
            println!("state: {}", serde_json::to_string(&state)?);
            last = state.clone();
        }
        if state == State::Stopped && handle.session.borrow().registrations > 0 {
            break;
        }
        if handle.state.changed().await.is_err() {
            break;
        }
    }
    let handle_session = handle.session.clone();
    let ended = handle.finish().await?;
    let (Some(u), Some(new), agent::Ended::Handover) = (updater, staged.lock().take(), ended)
    else {
        return Ok(());
    };
    // The agent has handed over: install, try the new version, and become it (or the old one again).
    drop(_control);
    let paused = handle_session.borrow().paused;
    Err(u
        .install_and_restart(new, deadline, paused, true)
        .await
        .into())
}

/// Checks for an update once the agent is heard by its coordinator, then every `interval`; a verified download is
/// left in `staged` and the agent told to hand over.
async fn check_for_updates(
    u: update::Updater,
    mut state: tokio::sync::watch::Receiver<State>,
    session: tokio::sync::watch::Receiver<agent::Session>,
    commands: tokio::sync::mpsc::Sender<Command>,
    staged: Arc<parking_lot::Mutex<Option<update::Staged>>>,
    interval: std::time::Duration,
) {
    loop {
        if state
            .wait_for(|s| matches!(s, State::Active | State::Paused))
            .await
            .is_err()
        {
            return;
        }
        let coordinator = session.borrow().coordinator_url.clone();
        match u.check(&coordinator).await {
            Ok(Some(offer)) => {
                let info = &offer.release;
                tracing::warn!(version = %info.version, notes = %info.notes, "an update is available");
                match u.download(&coordinator, &offer).await {
                    Ok(new) => {
                        tracing::warn!(version = %info.version, "update verified; handing over");
                        *staged.lock() = Some(new);
                        let _ = commands.send(Command::Handover).await;
                        return;
                    }
                    Err(e) => tracing::warn!("{e}; {VERSION} keeps running"),
                }
            }
            Ok(None) => tracing::debug!("no update"),
            Err(e) => tracing::warn!("{e}; {VERSION} keeps running"),
        }
        tokio::time::sleep(interval).await;
    }
}

/// One progress bar per image layer while images are pulled (drawn on a terminal only).
async fn pull_bars(mut rx: tokio::sync::mpsc::Receiver<commons_agent::containers::Progress>) {
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>24} {bar:30} {bytes}/{total_bytes} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let mut bars = std::collections::HashMap::new();
    while let Some(p) = rx.recv().await {
        let bar = bars.entry(p.layer.clone()).or_insert_with(|| {
            let b = multi.add(ProgressBar::new(0));
            b.set_style(style.clone());
            b.set_prefix(format!(
                "{} {}",
                p.image.rsplit('/').next().unwrap_or(&p.image),
                p.layer
            ));
            b
        });
        if p.total > 0 {
            bar.set_length(p.total);
            bar.set_position(p.current.min(p.total));
        }
        bar.set_message(p.status);
        if p.done {
            bar.finish();
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    commons_server::init_tracing("warn");
    commons_server::exit("commons-agent", run(Cli::parse()).await)
}
