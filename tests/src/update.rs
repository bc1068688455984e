//! The self-update tests' and bench's parts: the agent builds of `cargo xtask update-fixtures`, signing with the
//! `minisign` tool, publishing through `commons-coordinator release add`, and a volunteer running a build.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::Coordinator;

/// The platform the fixtures are built for.
pub const PLATFORM: &str = "linux-x86_64";

/// The platform of the Windows fixtures (`cargo xtask update-fixtures --windows`).
pub const WINDOWS: &str = "windows-x86_64";

/// `$CARGO_TARGET_DIR/<dir>`, found from this program's place (a test in `…/debug/deps/`, a bench in `…/release/`).
fn target(dir: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .find(|a| a.join("update-fixtures").is_dir())
        .or_else(|| exe.ancestors().nth(3))
        .unwrap()
        .join(dir)
}

/// The agent builds 0.1.0 and 0.1.1 and their release key pair (`cargo xtask update-fixtures`).
pub fn fixtures() -> PathBuf {
    let dir = target("update-fixtures");
    assert!(
        dir.join("commons-agent-0.1.1").is_file(),
        "{} lacks the agent builds: run `cargo xtask update-fixtures` first (.ci/test does)",
        dir.display()
    );
    dir
}

/// The binary `name` of package `package`, built beside the tests (of this tree, whatever its version).
fn built(package: &str, name: &str) -> PathBuf {
    let bin = target("debug").join(name);
    assert!(
        bin.is_file(),
        "{} is missing: cargo build -p {package}",
        bin.display()
    );
    bin
}

/// The `commons-coordinator` binary built beside the tests.
pub fn coordinator_bin() -> PathBuf {
    built("commons-coordinator", "commons-coordinator")
}

/// The headless `commons-agent` binary built beside the tests.
pub fn agent_bin() -> PathBuf {
    built("commons-agent", "commons-agent")
}

/// Signs `file` with the minisign secret key `key` (its default trusted comment names the file).
pub fn sign(file: &Path, key: &Path) {
    let out = std::process::Command::new("minisign")
        .arg("-S")
        .arg("-s")
        .arg(key)
        .arg("-m")
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .expect("minisign is installed (apt install minisign)");
    assert!(
        out.status.success(),
        "minisign: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A signed artifact for `version`: `bytes` under the name the signature must carry, in `dir`.
pub fn artifact(dir: &Path, version: &str, bytes: &[u8], key: &Path) -> PathBuf {
    artifact_for(dir, PLATFORM, version, bytes, key)
}

/// [`artifact`] for another platform than this one.
pub fn artifact_for(
    dir: &Path,
    platform: &str,
    version: &str,
    bytes: &[u8],
    key: &Path,
) -> PathBuf {
    let file = dir.join(format!("commons-agent-{version}-{platform}"));
    std::fs::write(&file, bytes).unwrap();
    sign(&file, key);
    file
}

/// `commons-coordinator release add` into `releases`, trusting `key`.
pub fn release_add(
    releases: &Path,
    file: &Path,
    version: &str,
    key: &Path,
) -> std::process::Output {
    release_add_for(releases, PLATFORM, file, version, key)
}

/// [`release_add`] for another platform than this one.
pub fn release_add_for(
    releases: &Path,
    platform: &str,
    file: &Path,
    version: &str,
    key: &Path,
) -> std::process::Output {
    std::process::Command::new(coordinator_bin())
        .args(["release", "add"])
        .arg(file)
        .args([
            "--version",
            version,
            "--channel",
            "stable",
            "--platform",
            platform,
        ])
        .args(["--notes", "test release"])
        .arg("--releases-dir")
        .arg(releases)
        .arg("--release-key")
        .arg(key)
        .output()
        .unwrap()
}

/// [`release_add`], which must succeed.
pub fn publish(releases: &Path, file: &Path, version: &str, key: &Path) {
    publish_for(releases, PLATFORM, file, version, key);
}

/// [`publish`] for another platform than this one.
pub fn publish_for(releases: &Path, platform: &str, file: &Path, version: &str, key: &Path) {
    let out = release_add_for(releases, platform, file, version, key);
    assert!(
        out.status.success(),
        "release add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A coordinator serving `releases/` from its data dir.
pub async fn coordinator() -> (Coordinator, PathBuf) {
    let c = Coordinator::start(|cfg, dir| {
        cfg.releases_dir = Some(dir.join("releases"));
        cfg.heartbeat_interval_secs = 1;
    })
    .await;
    let releases = c.dir.path().join("releases");
    (c, releases)
}

/// A coordinator offering the agent build 0.1.1, signed with the release key the fixtures carry.
pub async fn coordinator_offering_0_1_1() -> Coordinator {
    let fx = fixtures();
    let (c, releases) = coordinator().await;
    let work = tempfile::tempdir().unwrap();
    let new = artifact(
        work.path(),
        "0.1.1",
        &std::fs::read(fx.join("commons-agent-0.1.1")).unwrap(),
        &fx.join("test-release.key"),
    );
    publish(&releases, &new, "0.1.1", &fx.join("test-release.pub"));
    c
}

/// A volunteer's server: a copy of an agent build in a writable folder, running against a coordinator, natively or
/// (a Windows build) under Wine.
#[derive(Debug)]
pub struct Volunteer {
    /// Its folder: `bin/commons-agent` (`.exe` under Wine), settings, credentials, log.
    pub dir: tempfile::TempDir,
    /// The binary.
    pub exe: PathBuf,
    /// The process started (Wine's, for a Windows build).
    pub child: tokio::process::Child,
    /// A Windows build run by Wine: after an update its agent runs as a new process that this one did not start,
    /// so Wine's processes are ended when the volunteer is dropped (`wineserver -k`).
    wine: bool,
}

/// Wine, which runs the Windows fixtures (`COMMONS_WINE`, default Debian's `/usr/lib/wine/wine64`), in the prefix
/// `WINEPREFIX` names (.ci/windows sets it and builds its stand-in DLLs there).
fn wine() -> PathBuf {
    std::env::var_os("COMMONS_WINE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/wine/wine64"))
}

/// A path of this machine as a Windows program under Wine sees it (`/` is drive `Z:`).
pub fn wine_path(p: &Path) -> String {
    format!("Z:{}", p.display().to_string().replace('/', "\\"))
}

impl Volunteer {
    /// Runs the fixture build `version` against `c`.
    pub fn start(version: &str, c: &Coordinator) -> Self {
        Self::start_in(version, c, false, false)
    }

    /// With `read_only`, the binary's folder is mounted read-only for the agent (in a mount namespace of its own),
    /// as /usr/bin is for a system package's binary; with `paused`, it starts paused by the volunteer (as after an
    /// update's restart while paused).
    pub fn start_in(version: &str, c: &Coordinator, read_only: bool, paused: bool) -> Self {
        let fixture = fixtures().join(format!("commons-agent-{version}"));
        Self::launch(&fixture, "commons-agent", c, false, |dir, exe| {
            let mut cmd = if read_only {
                let mut c = tokio::process::Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg(r#"mount -o bind,ro "$0" "$0" && exec "$@""#)
                    .arg(dir.join("bin"))
                    .arg(exe);
                c
            } else {
                tokio::process::Command::new(exe)
            };
            cmd.env("COMMONS_START_PAUSED", if paused { "1" } else { "0" });
            cmd
        })
    }

    /// Runs the Windows fixture build `version` (`cargo xtask update-fixtures --windows`) against `c`, under Wine.
    pub fn start_windows(version: &str, c: &Coordinator) -> Self {
        let fixture = fixtures().join(format!("windows/commons-agent-{version}.exe"));
        assert!(
            fixture.is_file(),
            "{} is missing: run `cargo xtask update-fixtures --windows` first (.ci/windows does)",
            fixture.display()
        );
        Self::launch(&fixture, "commons-agent.exe", c, true, |_, exe| {
            let mut cmd = tokio::process::Command::new(wine());
            cmd.arg(exe);
            cmd
        })
    }

    /// Copies `fixture` into a new folder as `bin/<name>`, writes its settings and starts `command(folder,
    /// binary)` with the agent's arguments, its output into the folder's log.
    fn launch(
        fixture: &Path,
        name: &str,
        c: &Coordinator,
        wine: bool,
        command: impl FnOnce(&Path, &Path) -> tokio::process::Command,
    ) -> Self {
        // The paths the agent is given, as it sees them.
        let seen = |p: &Path| {
            if wine {
                wine_path(p)
            } else {
                p.display().to_string()
            }
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        let exe = dir.path().join("bin").join(name);
        std::fs::copy(fixture, &exe).unwrap();
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "coordinator_url = {:?}\ncontainers = false\ndht = false\nupdate_deadline_secs = {}\nupdate_state = {:?}\n",
                c.url(),
                // Wine starts slowly.
                if wine { 60 } else { 30 },
                seen(&dir.path().join("update.json"))
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = command(dir.path(), &exe)
            .arg("--config")
            .arg(seen(&config))
            .arg("--credentials-file")
            .arg(seen(&dir.path().join("credentials.json")))
            .arg("--control-socket")
            .arg(seen(&dir.path().join("agent.sock")))
            .arg("run")
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Self {
            dir,
            exe,
            child,
            wine,
        }
    }

    /// Its log so far (stdout and stderr, of every process it became).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Waits for `needle` in the log: up to 30 s, 90 s under Wine (which starts slowly).
    pub async fn wait_log(&self, needle: &str) -> String {
        for _ in 0..if self.wine { 900 } else { 300 } {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no {needle:?} in the agent's log:\n{}", self.log());
    }

    /// What `--version` of the binary now in place says (run by Wine for a Windows build).
    pub fn installed_version(&self) -> String {
        let mut cmd = if self.wine {
            let mut c = std::process::Command::new(wine());
            c.arg(&self.exe);
            c
        } else {
            std::process::Command::new(&self.exe)
        };
        let out = cmd.arg("--version").output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Whether the process is still running.
    pub fn still_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Volunteer {
    fn drop(&mut self) {
        if self.wine {
            let server = wine().with_file_name("wineserver");
            let _ = std::process::Command::new(server).arg("-k").status();
        }
    }
}
