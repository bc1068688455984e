//! WebDriver for the end-to-end tests (with fantoccini): headless Chromium for the portal (Debian's `chromium`
//! through its `chromedriver`), and the desktop app's window (`tauri-driver` over Debian's `WebKitWebDriver`, under
//! Xvfb with a session bus); plus where the built portal and the screenshots live.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_owned()
}

/// The built portal (`cargo xtask portal`); panics with the command to run when it is missing.
pub fn portal_dist() -> PathBuf {
    let dist = workspace().join("portal").join("dist");
    assert!(
        dist.join("index.html").is_file() && dist.join("commons_portal_bg.wasm").is_file(),
        "the portal is not built: run `cargo xtask portal` first (.ci/test does)"
    );
    dist
}

/// Where screenshots go: `$COMMONS_ARTIFACTS`, else `artifacts/` in the workspace.
pub fn artifacts() -> PathBuf {
    let dir = std::env::var_os("COMMONS_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("artifacts"));
    std::fs::create_dir_all(&dir).expect("creating the artifacts directory");
    dir
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A WebDriver server (chromedriver, or tauri-driver with its display and bus), killed on drop with everything it
/// started.
#[derive(Debug)]
pub struct Driver {
    child: Child,
    port: u16,
    profile: tempfile::TempDir,
}

impl Driver {
    /// Starts `chromedriver` (or `$CHROMEDRIVER`) on a free loopback port and waits until it answers.
    pub async fn start() -> Self {
        let bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let port = free_port();
        let mut cmd = Command::new(&bin);
        cmd.arg(format!("--port={port}"));
        Self::serve(
            cmd,
            port,
            "install Debian's chromium and chromium-driver (.ci/setup does)",
        )
        .await
    }

    /// Starts `tauri-driver` (over Debian's `WebKitWebDriver`) on a free loopback port in a [`desktop_session`]; the
    /// apps it starts live in `home`.
    pub async fn tauri(home: &Path) -> Self {
        let (port, native) = (free_port(), free_port());
        let mut cmd = desktop_session(home);
        cmd.args(["tauri-driver", "--port", &port.to_string()])
            .args(["--native-port", &native.to_string()])
            .env("RUST_LOG", "info");
        Self::serve(
            cmd,
            port,
            "install xvfb, keyutils, dbus, gnome-keyring, webkit2gtk-driver and `cargo install tauri-driver` (.ci/setup does)",
        )
        .await
    }

    async fn serve(mut cmd: Command, port: u16, hint: &str) -> Self {
        // Its own process group, so that Drop stops the display and bus it started too. What it (and the app it
        // starts) prints goes to the artifacts, next to the screenshots.
        let log = std::fs::File::create(artifacts().join(format!("webdriver-{port}.log")))
            .expect("creating the WebDriver log");
        let child = cmd
            .process_group(0)
            .stdout(log.try_clone().expect("a log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?} ({e}): {hint}", cmd.get_program()));
        // Owned at once, so that a panic below still kills it (Drop).
        let driver = Self {
            child,
            port,
            profile: tempfile::tempdir().unwrap(),
        };
        let status = format!("http://127.0.0.1:{port}/status");
        let client = reqwest::Client::new();
        for _ in 0..100 {
            if client
                .get(&status)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return driver;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the WebDriver server did not answer on port {port} within 10 s");
    }

    /// A session with a Tauri app (its window): `app` is the binary tauri-driver starts.
    pub async fn app(&self, app: &Path) -> Client {
        let caps = json!({
            "browserName": "wry",
            "tauri:options": { "application": app },
        });
        self.session(caps).await
    }

    async fn session(&self, caps: serde_json::Value) -> Client {
        let serde_json::Value::Object(caps) = caps else {
            unreachable!()
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap_or_else(|e| panic!("a WebDriver session on port {}: {e}", self.port))
    }

    /// A new headless Chromium session (1280 × 900, fresh profile).
    pub async fn browser(&self) -> Client {
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,900",
                    format!("--user-data-dir={}", self.profile.path().join(format!("p{}", rand::random::<u32>())).display()),
                ],
            },
        });
        self.session(caps).await
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command to run in a desktop session of its own (`desktop/app/tests/support/desktop-session`: Xvfb, a session
/// bus, an unlocked GNOME Keyring), with its XDG config, data, cache and runtime folders under `home`: add the
/// program and its arguments. `HOME` is `home` too (login items go under it).
pub fn desktop_session(home: &Path) -> Command {
    let mut cmd = Command::new(workspace().join("desktop/app/tests/support/desktop-session"));
    cmd.env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("XDG_RUNTIME_DIR", home.join("runtime"))
        .env("HOME", home);
    cmd
}

/// Waits up to `secs` for an element, polling.
pub async fn wait_for(b: &Client, css: &str, secs: u64) -> fantoccini::elements::Element {
    b.wait()
        .at_most(Duration::from_secs(secs))
        .every(Duration::from_millis(50))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css:?} within {secs} s: {e}"))
}

/// Polls a script until it returns `true`, up to `secs`; returns whether it did.
pub async fn until(b: &Client, secs: u64, script: &str) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if b.execute(script, vec![]).await.ok() == Some(json!(true)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Saves a screenshot as `<artifacts>/<name>.png` and returns its path.
pub async fn screenshot(b: &Client, name: &str) -> PathBuf {
    let png = b.screenshot().await.expect("a screenshot");
    let path = artifacts().join(format!("{name}.png"));
    std::fs::write(&path, png).expect("writing a screenshot");
    path
}

/// Clicks the first element matching `css` (it must be there).
pub async fn click(b: &Client, css: &str) {
    b.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css:?} to click: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("clicking {css:?}: {e}"));
}

/// The text of an element, waiting up to `secs` for it.
pub async fn text_of(b: &Client, css: &str, secs: u64) -> String {
    wait_for(b, css, secs)
        .await
        .text()
        .await
        .unwrap_or_else(|e| panic!("reading {css:?}: {e}"))
}
