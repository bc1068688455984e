//! Making the worker reachable: no tunnel (LAN or public address), or `cloudflared` — a quick tunnel (a new
//! `https://….trycloudflare.com` address each start, read from its output) or a named tunnel (a fixed hostname,
//! its token from the keyring). The process is supervised: restarted with backoff when it dies, stopped with the
//! agent (and killed if the agent is), and every new address is published for the agent to report.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use commons_shared::backoff::Backoff;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How the worker is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Directly at this URL.
    None(String),
    /// A cloudflared quick tunnel to the gateway.
    Quick {
        /// The cloudflared executable.
        program: PathBuf,
        /// The local URL it forwards to.
        to: String,
    },
    /// A cloudflared named tunnel with a fixed hostname.
    Named {
        /// The cloudflared executable.
        program: PathBuf,
        /// The tunnel token.
        token: String,
        /// Its public URL.
        url: String,
    },
}

/// Finds a quick tunnel's address in a line of cloudflared's output.
pub fn find_url(line: &str) -> Option<String> {
    let start = line.find("https://")?;
    let url: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '/' | '.' | '-'))
        .collect();
    url.ends_with(".trycloudflare.com").then_some(url)
}

/// A supervised tunnel; its current public URL is on [`Tunnel::url`] (`None` while it is (re)starting).
#[derive(Debug)]
pub struct Tunnel {
    /// The current URL.
    pub url: watch::Receiver<Option<String>>,
    /// Starts so far.
    pub starts: watch::Receiver<u32>,
    task: Option<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

async fn stop_requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn spawn(program: &PathBuf, args: &[&str]) -> std::io::Result<Child> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Never leave it running if the agent dies.
        .kill_on_drop(true)
        .spawn()
}

impl Tunnel {
    /// Starts the tunnel.
    pub fn start(mode: Mode) -> Self {
        let (url_tx, url) = watch::channel(None);
        let (starts_tx, starts) = watch::channel(0u32);
        let (stop, mut stopped) = watch::channel(false);
        let (program, args, fixed) = match mode {
            Mode::None(u) => {
                url_tx.send_replace(Some(u));
                return Self {
                    url,
                    starts,
                    task: None,
                    stop,
                };
            }
            Mode::Quick { program, to } => (
                program,
                vec![
                    "tunnel".to_owned(),
                    "--no-autoupdate".into(),
                    "--url".into(),
                    to,
                ],
                None,
            ),
            Mode::Named {
                program,
                token,
                url: u,
            } => (
                program,
                vec![
                    "tunnel".to_owned(),
                    "--no-autoupdate".into(),
                    "run".into(),
                    "--token".into(),
                    token,
                ],
                Some(u),
            ),
        };
        let task = tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
            loop {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let mut child = match spawn(&program, &args) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(program = %program.display(), error = %e, "cannot start cloudflared");
                        tokio::select! { _ = tokio::time::sleep(backoff.fail()) => {}, _ = stop_requested(&mut stopped) => return }
                        continue;
                    }
                };
                starts_tx.send_modify(|n| *n += 1);
                if let Some(u) = &fixed {
                    url_tx.send_replace(Some(u.clone()));
                }
                let (tx, mut lines) = tokio::sync::mpsc::channel::<String>(64);
                for out in [
                    child
                        .stdout
                        .take()
                        .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
                    child.stderr.take().map(|e| Box::new(e) as _),
                ]
                .into_iter()
                .flatten()
                {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let mut r = BufReader::new(out).lines();
                        while let Ok(Some(l)) = r.next_line().await {
                            if tx.send(l).await.is_err() {
                                break;
                            }
                        }
                    });
                }
                drop(tx);
                let started = std::time::Instant::now();
                let exited = loop {
                    tokio::select! {
                        l = lines.recv() => if let Some(l) = l && fixed.is_none() && let Some(u) = find_url(&l) {
                            tracing::info!(url = %u, "tunnel up");
                            url_tx.send_replace(Some(u));
                        },
                        s = child.wait() => break s,
                        _ = stop_requested(&mut stopped) => {
                            let _ = child.start_kill();
                            let _ = child.wait().await;
                            url_tx.send_replace(None);
                            return;
                        }
                    }
                };
                url_tx.send_replace(None);
                tracing::warn!(status = ?exited, "cloudflared exited; restarting");
                if started.elapsed() > Duration::from_secs(60) {
                    backoff.reset();
                }
                tokio::select! { _ = tokio::time::sleep(backoff.fail()) => {}, _ = stop_requested(&mut stopped) => return }
            }
        });
        Self {
            url,
            starts,
            task: Some(task),
            stop,
        }
    }

    /// Stops the tunnel process and waits for it to be gone.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::find_url;

    #[test]
    fn urls_in_cloudflared_output() {
        let line = "2024-10-01T10:00:00Z INF |  https://gentle-river-1234.trycloudflare.com                    |";
        assert_eq!(
            find_url(line).as_deref(),
            Some("https://gentle-river-1234.trycloudflare.com")
        );
        assert_eq!(
            find_url("INF Requesting new quick Tunnel on trycloudflare.com..."),
            None
        );
        assert_eq!(
            find_url("see https://www.cloudflare.com/website-terms/"),
            None
        );
    }
}
