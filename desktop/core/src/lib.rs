//! The Commons volunteer agent, window-free: everything the desktop app does for a volunteer, as a library the
//! Tauri shell and the headless `commons-agent` binary both use. It never imports a GUI toolkit.
//!
//! - [`hardware`]: CPU, memory, disks (sysinfo) and NVIDIA GPUs (NVML behind [`hardware::GpuProbe`]).
//! - [`settings`]: the volunteer's TOML settings; [`schedule`]: when donating is allowed (windows, mains power); [`idle`]: whether the
//!   volunteer is at the keyboard.
//! - [`credentials`]: worker id and token in the OS keyring, or a 0600 file for servers.
//! - [`client`]: the coordinator's worker API.
//! - [`containers`]: the assigned services in unprivileged, capped, labelled containers (bollard).
//! - [`agent`]: joining, heartbeats, pause and resume, failover, quitting; its state on a watch channel.
//! - [`control`]: the local control API on a unix socket.
//! - [`gateway`]: the local reverse proxy in front of the containers; [`channel`]: the reverse path, over which
//!   the coordinator reaches it through the agent's own connection; [`tunnel`]: how the world reaches it.
//! - [`update`]: signed self-updates: check the feed, verify, swap, trial run, rollback.
#![deny(missing_docs)]

pub mod agent;
pub mod channel;
pub mod client;
pub mod containers;
pub mod control;
pub mod credentials;
pub mod dht;
pub mod gateway;
pub mod hardware;
pub mod idle;
pub mod models;
pub mod schedule;
pub mod settings;
pub mod tunnel;
pub mod update;

/// Reads the CA file `COMMONS_CA_FILE` names, if any, into what the agent trusts besides the public roots (a
/// coordinator or release feed with a private CA's certificate). Call it once at start.
pub use commons_server::tls::load_trust;

/// Runs a blocking call (the keyring's D-Bus, NVML, sysinfo) on tokio's blocking threads, so that it never stalls
/// the async ones; a panic in it is the caller's.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled: the runtime is shutting down, and this task with it.
        Err(_) => std::future::pending().await,
    }
}
