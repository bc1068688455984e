//! Signed self-updates with rollback.
//!
//! 1. [`Updater::check`] asks the joined coordinator's feed for the newest release on the channel. A version that
//!    is not newer is a downgrade and refused; a version marked bad (it failed its trial before) is skipped.
//! 2. [`Updater::download`] checks the signature's key and file name first, then streams the artifact next to the
//!    running binary while hashing it: the SHA-256 must be the feed's and the minisign signature must verify
//!    against the key compiled into this build. Anything else is refused and the running version keeps running.
//! 3. The caller stops the agent for a handover ([`crate::agent::Command::Handover`]: containers stopped, still
//!    registered), then [`Updater::install`] swaps the binary (the old one kept as `<exe>.previous`) and runs the
//!    new one as a *trial* ([`TRIAL_ENV`]): it must start, resume as this worker, be heard by the coordinator and
//!    report the expected version within the deadline. Then the caller execs it; if not, the old binary is put
//!    back, the version is marked bad, and the caller execs the old one again.
//!
//! A binary the user cannot replace (a system package in /usr/bin) is not touched: the updater says so and names
//! the package to install instead.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use commons_shared::release::{self, Refusal, ReleaseInfo, UpdateFeed, Verifier};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::settings::Settings;

/// The largest feed read.
const MAX_FEED_BYTES: usize = 256 * 1024;

/// Downloads are staged beside the binary under this prefix.
const STAGING_PREFIX: &str = ".commons-update-";

/// Removes downloads an earlier process left behind (killed mid-download), an hour old or more.
fn remove_stale_downloads(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        if old && e.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Set on a trial run of a new version: the file to report to.
pub const TRIAL_ENV: &str = "COMMONS_UPDATE_TRIAL";
/// Set on the first run after an update: the version it replaced.
pub const UPDATED_FROM_ENV: &str = "COMMONS_UPDATED_FROM";
/// Set on the first run after an update (or a rollback) when the volunteer had paused donating: it starts paused.
pub const PAUSED_ENV: &str = "COMMONS_START_PAUSED";
/// Set on the first run after an update (or a rollback) of the desktop app when it was donating: it donates again.
pub const DONATING_ENV: &str = "COMMONS_RESUME_DONATING";

/// Whether `env` is "1" for this process, read once: a later start in the same process (a Retry) starts as usual.
fn once(env: &str, taken: &std::sync::atomic::AtomicBool) -> bool {
    !taken.swap(true, std::sync::atomic::Ordering::Relaxed)
        && std::env::var_os(env).is_some_and(|v| v == "1")
}

/// Whether this process was started paused by an update's restart.
pub fn start_paused() -> bool {
    static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    once(PAUSED_ENV, &TAKEN)
}

/// Whether this process was restarted by an update while donating, and should donate again at once.
pub fn resume_donating() -> bool {
    static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    once(DONATING_ENV, &TAKEN)
}

/// What the restarted process is told.
#[derive(Debug, Clone, Copy, Default)]
pub struct Restart<'a> {
    /// The version it replaces (none after a rollback).
    pub updated_from: Option<&'a str>,
    /// The volunteer had paused donating.
    pub paused: bool,
    /// It was donating (the desktop app starts donating only when told to).
    pub donating: bool,
}

/// This build's version, as a `&'static str`: the calling package's, unless a release build sets
/// `COMMONS_BUILD_VERSION`. A macro, so that only the binary's crate is rebuilt when a build sets it.
#[macro_export]
macro_rules! build_version {
    () => {
        match option_env!("COMMONS_BUILD_VERSION") {
            Some(v) => v,
            None => env!("CARGO_PKG_VERSION"),
        }
    };
}

/// This build's [`Build`] for `product`: [`build_version!`], and the release key it trusts — the project's
/// ([`commons_shared::release::PROJECT_KEY`]), unless the build sets `COMMONS_RELEASE_KEY` (a fork's key, a test's).
#[macro_export]
macro_rules! this_build {
    ($product:literal) => {
        $crate::update::Build {
            product: $product,
            version: $crate::build_version!().into(),
            key: match option_env!("COMMONS_RELEASE_KEY") {
                Some(k) => k,
                None => $crate::update::PROJECT_KEY,
            }
            .into(),
        }
    };
}

pub use commons_shared::release::PROJECT_KEY;

/// What this build is and whom it trusts.
#[derive(Debug, Clone)]
pub struct Build {
    /// `agent` or `desktop`.
    pub product: &'static str,
    /// This build's version.
    pub version: String,
    /// The release public key (minisign) compiled into this build.
    pub key: String,
}

/// Why an update did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The artifact or the offer was refused.
    #[error("update {version} refused: {why}")]
    Refused {
        /// The offered version.
        version: String,
        /// Why.
        why: Refusal,
    },
    /// The binary is not ours to replace.
    #[error(
        "{exe} cannot replace itself ({why}; a system package's binary is not the agent's to change); {}",
        install_hint(package.as_ref())
    )]
    NotWritable {
        /// The binary.
        exe: String,
        /// The error.
        why: String,
        /// The system package to install instead, when the coordinator offers one.
        package: Option<Package>,
    },
    /// The new version did not prove healthy; it was rolled back and marked bad.
    #[error(
        "{version} did not start properly ({why}); rolled back to {previous} and marked {version} bad"
    )]
    RolledBack {
        /// The version tried.
        version: String,
        /// The version restored.
        previous: String,
        /// What went wrong.
        why: String,
    },
    /// The feed or the download failed.
    #[error("update check failed: {0}")]
    Fetch(String),
    /// Reading or writing a file failed.
    #[error("{0}")]
    Io(String),
}

/// A system package offered in place of a binary that cannot replace itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// Where to download it (absolute).
    pub url: String,
    /// Its SHA-256.
    pub sha256: String,
}

fn install_hint(package: Option<&Package>) -> String {
    match package {
        Some(p) => format!(
            "install the new package instead: {} (sha256 {})",
            p.url, p.sha256
        ),
        None => "update it with the system package manager".into(),
    }
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> UpdateError {
    let what = what.to_string();
    move |e| UpdateError::Io(format!("{what}: {e}"))
}

/// The updater's own record: the versions that failed their trial here.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Record {
    #[serde(default)]
    bad: Vec<String>,
}

/// A trial run's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialReport {
    /// The version that started.
    pub version: String,
    /// The worker it resumed as.
    pub worker_id: String,
}

/// A newer release offered by the feed.
#[derive(Debug, Clone)]
pub struct Offer {
    /// The release.
    pub release: ReleaseInfo,
    /// The system package of the product, for a binary that cannot replace itself.
    pub package: Option<ReleaseInfo>,
}

/// A verified artifact, ready to install.
#[derive(Debug)]
pub struct Staged {
    /// What it is.
    pub info: ReleaseInfo,
    file: tempfile::TempPath,
}

/// Checks, downloads, verifies and installs updates of one binary.
#[derive(Debug, Clone)]
pub struct Updater {
    build: Build,
    channel: String,
    exe: PathBuf,
    state: PathBuf,
    http: reqwest::Client,
}

impl Updater {
    /// An updater for `exe` (the running binary) on `channel`, keeping its record at `state`.
    pub fn new(build: Build, channel: &str, exe: PathBuf, state: PathBuf) -> Self {
        Self {
            build,
            channel: channel.to_owned(),
            exe,
            state,
            http: commons_server::tls::http()
                .connect_timeout(Duration::from_secs(10))
                // A server that stops sending mid-download must not hold the updater forever.
                .read_timeout(Duration::from_secs(60))
                .build()
                .unwrap_or_default(),
        }
    }

    /// The updater of the running binary as `settings` say (`None` when `update_check` is off).
    pub fn from_settings(build: Build, settings: &Settings) -> std::io::Result<Option<Self>> {
        if !settings.update_check {
            return Ok(None);
        }
        let state = settings.update_state_path(build.product);
        Ok(Some(Self::new(
            build,
            &settings.update_channel,
            std::env::current_exe()?,
            state,
        )))
    }

    /// This build.
    pub fn build(&self) -> &Build {
        &self.build
    }

    /// The binary it replaces.
    pub fn exe(&self) -> &Path {
        &self.exe
    }

    fn record(&self) -> Record {
        std::fs::read(&self.state)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn mark_bad(&self, version: &str) {
        let mut r = self.record();
        if !r.bad.iter().any(|v| v == version) {
            r.bad.push(version.to_owned());
        }
        let write = || -> std::io::Result<()> {
            if let Some(d) = self.state.parent() {
                std::fs::create_dir_all(d)?;
            }
            std::fs::write(&self.state, serde_json::to_vec_pretty(&r)?)
        };
        if let Err(e) = write() {
            tracing::error!(error = %e, file = %self.state.display(), "cannot record the bad version");
        }
    }

    /// Whether `version` failed a trial here before.
    pub fn is_bad(&self, version: &str) -> bool {
        self.record().bad.iter().any(|v| v == version)
    }

    /// The feed for this build at `coordinator`.
    pub async fn feed(&self, coordinator: &str) -> Result<UpdateFeed, UpdateError> {
        let url = format!(
            "{}/api/updates/{}/{}/{}",
            coordinator.trim_end_matches('/'),
            self.build.product,
            self.channel,
            release::this_platform()
        );
        let res = self
            .http
            .get(&url)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| UpdateError::Fetch(format!("{url}: {e}")))?;
        if !res.status().is_success() {
            return Err(UpdateError::Fetch(format!("{url}: HTTP {}", res.status())));
        }
        // A feed is a few KiB; read at most MAX_FEED_BYTES of whatever the server sends.
        let mut body = Vec::new();
        let mut chunks = res.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| UpdateError::Fetch(format!("{url}: {e}")))?;
            if body.len() + chunk.len() > MAX_FEED_BYTES {
                return Err(UpdateError::Fetch(format!(
                    "{url}: the feed is larger than {MAX_FEED_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| UpdateError::Fetch(format!("{url}: {e}")))
    }

    /// The release to install, if the feed offers a newer one that has not failed here before.
    pub async fn check(&self, coordinator: &str) -> Result<Option<Offer>, UpdateError> {
        let UpdateFeed { latest, package } = self.feed(coordinator).await?;
        let Some(latest) = latest else {
            return Ok(None);
        };
        let refused = |why| UpdateError::Refused {
            version: latest.version.clone(),
            why,
        };
        if !release::is_newer(&latest.version, &self.build.version).map_err(refused)? {
            return Ok(None);
        }
        if self.is_bad(&latest.version) {
            tracing::debug!(version = %latest.version, "skipping a version marked bad");
            return Ok(None);
        }
        Ok(Some(Offer {
            release: latest,
            package,
        }))
    }

    /// Downloads the offered release from `coordinator` beside the binary and verifies it (key and name, size,
    /// SHA-256, signature). Nothing is installed. A binary that cannot be replaced (nothing can be created beside
    /// it) is [`UpdateError::NotWritable`], naming the package the coordinator offers instead.
    pub async fn download(&self, coordinator: &str, offer: &Offer) -> Result<Staged, UpdateError> {
        let info = &offer.release;
        let dir = self.exe.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::Builder::new()
            .prefix(STAGING_PREFIX)
            .tempfile_in(dir)
            .map_err(|e| UpdateError::NotWritable {
                exe: self.exe.display().to_string(),
                why: e.to_string(),
                package: offer.package.as_ref().map(|p| Package {
                    url: format!("{}{}", coordinator.trim_end_matches('/'), p.url),
                    sha256: p.sha256.clone(),
                }),
            })?;
        let refused = |why| UpdateError::Refused {
            version: info.version.clone(),
            why,
        };
        let name =
            release::artifact_name(self.build.product, &info.version, &release::this_platform());
        let verifier = Verifier::new(&self.build.key, &info.signature, &name).map_err(refused)?;
        let mut check = verifier.check().map_err(refused)?;
        if info.size_bytes > release::MAX_ARTIFACT_BYTES || !info.url.starts_with('/') {
            return Err(UpdateError::Fetch(format!(
                "the feed's entry for {} is not usable (size {}, url {:?})",
                info.version, info.size_bytes, info.url
            )));
        }
        remove_stale_downloads(dir);
        let url = format!("{}{}", coordinator.trim_end_matches('/'), info.url);
        let res = self
            .http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| UpdateError::Fetch(format!("{url}: {e}")))?;
        let mut body = res.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| UpdateError::Fetch(format!("{url}: {e}")))?;
            if check.size() + chunk.len() as u64 > info.size_bytes {
                // More than the feed says: a mismatch, whatever the rest is.
                return Err(refused(Refusal::Checksum {
                    expected: format!("{} ({} bytes)", info.sha256, info.size_bytes),
                    actual: format!("more than {} bytes", info.size_bytes),
                }));
            }
            check.update(&chunk);
            tmp.write_all(&chunk)
                .map_err(io_err("cannot write the download"))?;
        }
        let checked = check.finish();
        if checked.size != info.size_bytes || !checked.sha256.eq_ignore_ascii_case(&info.sha256) {
            return Err(refused(Refusal::Checksum {
                expected: format!("{} ({} bytes)", info.sha256, info.size_bytes),
                actual: format!("{} ({} bytes)", checked.sha256, checked.size),
            }));
        }
        checked.signature.map_err(refused)?;
        tmp.flush().map_err(io_err("cannot write the download"))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
                .map_err(io_err("cannot make the download executable"))?;
        }
        Ok(Staged {
            info: info.clone(),
            file: tmp.into_temp_path(),
        })
    }

    /// The previous binary, kept until the next update.
    pub fn backup_path(&self) -> PathBuf {
        let mut p = self.exe.clone().into_os_string();
        p.push(".previous");
        PathBuf::from(p)
    }

    /// Finishes an update once the agent has handed over: installs `staged` (trial run within `deadline`), then
    /// replaces this process with the new binary, or with the old one again when the trial failed; this process's
    /// arguments carry over. Returns only when the restart itself fails.
    pub async fn install_and_restart(
        &self,
        staged: Staged,
        deadline: Duration,
        paused: bool,
        donating: bool,
    ) -> std::io::Error {
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        let installed = match self.install(staged, &args, deadline).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "the update did not install; starting the old version again");
                false
            }
        };
        let restart = Restart {
            updated_from: installed.then_some(self.build.version.as_str()),
            paused,
            donating,
        };
        exec(&self.exe, &args, restart)
    }

    /// Swaps in `staged` and runs it as a trial with `args` (the running process's, without the program name).
    /// `Ok` when it proved healthy (the caller then execs the binary); otherwise the old binary is back in place,
    /// the version is marked bad, and the error says why.
    pub async fn install(
        &self,
        staged: Staged,
        args: &[std::ffi::OsString],
        deadline: Duration,
    ) -> Result<(), UpdateError> {
        let version = staged.info.version.clone();
        let backup = self.backup_path();
        swap(staged.file, &self.exe, &backup)?;
        tracing::warn!(from = %self.build.version, to = %version, "installed; trying the new version");
        match self.trial(args, deadline, &version).await {
            Ok(report) => {
                tracing::warn!(version = %report.version, worker = %report.worker_id, "the new version is healthy");
                Ok(())
            }
            Err(why) => {
                let restored = std::fs::rename(&backup, &self.exe);
                self.mark_bad(&version);
                let e = UpdateError::RolledBack {
                    version,
                    previous: self.build.version.clone(),
                    why: match restored {
                        Ok(()) => why,
                        Err(e) => format!("{why}; and the old binary could not be restored: {e}"),
                    },
                };
                tracing::error!("{e}");
                Err(e)
            }
        }
    }

    /// Runs the installed binary as a trial and waits for its report.
    async fn trial(
        &self,
        args: &[std::ffi::OsString],
        deadline: Duration,
        expected: &str,
    ) -> Result<TrialReport, String> {
        let report = tempfile::NamedTempFile::new()
            .map_err(|e| format!("cannot create the trial's report file: {e}"))?
            .into_temp_path();
        let mut child = tokio::process::Command::new(&self.exe)
            .args(args)
            .env(TRIAL_ENV, &*report)
            .env_remove(UPDATED_FROM_ENV)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("it cannot be started: {e}"))?;
        let status = match tokio::time::timeout(deadline, child.wait()).await {
            Ok(s) => s.map_err(|e| e.to_string())?,
            Err(_) => {
                let _ = child.kill().await;
                return Err(format!("not healthy within {} s", deadline.as_secs()));
            }
        };
        if !status.success() {
            return Err(format!("it exited with {status}"));
        }
        let r: TrialReport = std::fs::read(&report)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("it exited without reporting healthy")?;
        if r.version != expected {
            return Err(format!(
                "it reports version {} instead of {expected}",
                r.version
            ));
        }
        Ok(r)
    }
}

/// A new version's trial run (in the new binary, when [`TRIAL_ENV`] names `report`): start as `version`, paused and
/// without containers, DHT or tunnel; once the coordinator has heard this worker, write the report and hand back
/// (still registered) for the real start.
pub async fn trial(
    mut s: crate::settings::Settings,
    creds: std::sync::Arc<dyn crate::credentials::CredentialStore>,
    probe: std::sync::Arc<dyn crate::hardware::GpuProbe>,
    version: &str,
    report: &Path,
) -> Result<(), TrialError> {
    use crate::agent::{self, Command, State};
    s.containers = false;
    s.dht = false;
    s.tunnel = crate::settings::TunnelKind::None;
    let options = agent::Options {
        version: version.into(),
        paused: true,
    };
    let mut handle = agent::start_with(s, creds, probe, options);
    // The old process's deadline bounds this; the hour only stops a trial whose parent has gone.
    let state = handle
        .wait_for(Duration::from_secs(3600), |s| {
            matches!(s, State::Active | State::Paused | State::Error(_))
        })
        .await;
    if let Some(State::Error(e)) = state {
        return Err(TrialError::Failed(e));
    }
    let worker_id = handle.session.borrow().worker_id.clone();
    let body = serde_json::to_vec(&TrialReport {
        version: version.into(),
        worker_id,
    })
    .map_err(std::io::Error::other);
    body.and_then(|b| std::fs::write(report, b))
        .map_err(|source| TrialError::Report {
            path: report.to_owned(),
            source,
        })?;
    handle.send(Command::Handover).await;
    Ok(handle.join().await?)
}

/// Why a trial run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrialError {
    /// The agent stopped with this error before the coordinator heard it.
    #[error("the trial run failed: {0}")]
    Failed(String),
    /// The report cannot be written.
    #[error("cannot write the trial report {path}: {source}")]
    Report {
        /// The report.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The agent failed.
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
}

/// Puts `new` in place of `exe`, keeping the old binary as `backup`. The running binary may be `exe`: on unix it
/// stays in place as a hard link (or a copy) and is replaced; Windows cannot overwrite a running .exe but can
/// rename it, so there it moves aside to `backup` first (and back when the new one cannot be put in place).
fn swap(new: tempfile::TempPath, exe: &Path, backup: &Path) -> Result<(), UpdateError> {
    let _ = std::fs::remove_file(backup);
    #[cfg(windows)]
    let kept = std::fs::rename(exe, backup);
    #[cfg(not(windows))]
    let kept = std::fs::hard_link(exe, backup).or_else(|_| std::fs::copy(exe, backup).map(|_| ()));
    kept.map_err(io_err(format!(
        "cannot keep the old binary as {}",
        backup.display()
    )))?;
    new.persist(exe).map_err(|e| {
        #[cfg(windows)]
        let _ = std::fs::rename(backup, exe);
        UpdateError::Io(format!("cannot swap in the new binary: {}", e.error))
    })?;
    Ok(())
}

/// Replaces this process with `exe` run with `args`: the new version after an update, or the old one again after a
/// rollback, told what it needs to carry on (see [`Restart`]). Returns only on failure.
pub fn exec(exe: &Path, args: &[std::ffi::OsString], restart: Restart<'_>) -> std::io::Error {
    let flag = |b: bool| if b { "1" } else { "0" };
    let mut c = std::process::Command::new(exe);
    c.args(args)
        .env_remove(TRIAL_ENV)
        .env_remove(UPDATED_FROM_ENV)
        .env(PAUSED_ENV, flag(restart.paused))
        .env(DONATING_ENV, flag(restart.donating));
    if let Some(v) = restart.updated_from {
        c.env(UPDATED_FROM_ENV, v);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        c.exec()
    }
    // No exec elsewhere: start the new process and leave.
    #[cfg(not(unix))]
    match c.spawn() {
        Ok(_) => std::process::exit(0),
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "not a test: the swap test runs it as the binary it replaces while it runs"]
    fn running_binary_stand_in() {
        std::thread::sleep(Duration::from_secs(10));
    }

    #[test]
    fn a_running_binary_is_swapped_for_the_new_one_and_kept_as_the_backup() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir
            .path()
            .join(format!("agent{}", std::env::consts::EXE_SUFFIX));
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        let old = std::fs::read(&exe).unwrap();
        // The binary runs while it is swapped (Windows refuses to overwrite a running .exe).
        let mut running = std::process::Command::new(&exe)
            .args([
                "update::tests::running_binary_stand_in",
                "--exact",
                "--ignored",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let backup = dir.path().join("agent.old");
        std::fs::write(&backup, "a stale backup").unwrap();
        let new = tempfile::NamedTempFile::new_in(dir.path()).unwrap();
        std::fs::write(new.path(), "the new version").unwrap();
        swap(new.into_temp_path(), &exe, &backup).unwrap();
        assert_eq!(std::fs::read(&exe).unwrap(), b"the new version");
        assert!(
            std::fs::read(&backup).unwrap() == old,
            "the old binary is the backup"
        );
        let _ = running.kill();
        let _ = running.wait();
        // A new binary that cannot be put in place leaves the old one where it was.
        let gone = tempfile::NamedTempFile::new_in(dir.path())
            .unwrap()
            .into_temp_path();
        std::fs::remove_file(&gone).unwrap();
        assert!(swap(gone, &exe, &backup).is_err());
        assert_eq!(std::fs::read(&exe).unwrap(), b"the new version");
    }
}
