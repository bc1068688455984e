//! Headless Chromium for the portal's end-to-end tests and benchmark: Debian's `chromium` driven through its
//! `chromedriver` (WebDriver, with fantoccini), plus where the built portal and the screenshots live.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// A chromedriver process, killed on drop.
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
        let child = Command::new(&bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {bin} ({e}): install Debian's chromium and chromium-driver (.ci/setup does)")
            });
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
        panic!("chromedriver did not answer on port {port} within 10 s");
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
        let serde_json::Value::Object(caps) = caps else {
            unreachable!()
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a WebDriver session with headless Chromium")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
