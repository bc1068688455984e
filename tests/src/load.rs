//! What the load benchmarks share (`commons-loadgen`, `commons-soak`): a server process started and read for its URL,
//! its memory from `/proc`, and a kept-alive HTTP/1 client connection.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// A child process, killed when dropped.
#[derive(Debug)]
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `bench` until it ends or the process is interrupted (Ctrl-C, SIGTERM). Interrupted, `bench` is dropped at
/// once, and with it the [`Proc`]s it started: a benchmark cut short leaves no server running.
pub async fn until_interrupted(bench: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    // The signal first: its handler is installed before the benchmark's first (long) poll.
    tokio::select! {
        biased;
        () = commons_server::shutdown_signal() => {
            eprintln!("interrupted: the servers it started are stopped, the figures so far are above");
            Ok(())
        }
        done = bench => done,
    }
}

/// Starts a server process that prints its URL as the last word of its first line.
pub fn spawn(mut cmd: Command) -> Result<(Proc, String)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the server process")?;
    let mut out = BufReader::new(child.stdout.take().context("no stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_owned();
    if !url.starts_with("http://") {
        bail!("the server did not print its URL: {line:?}");
    }
    Ok((Proc(child), url))
}

/// A `/proc/{pid}/status` figure in KiB (VmRSS, RssAnon, RssFile).
pub fn proc_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The process's resident memory, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    proc_kib(pid, "VmRSS:")
}

/// A kept-alive HTTP/1 connection to `url` (`http://host:port`).
pub async fn connect(url: &str) -> Result<SendRequest<Full<Bytes>>> {
    let addr = url.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Sends `method path` with a JSON `body` (and a bearer `token`) and reads the whole answer.
pub async fn send(
    s: &mut SendRequest<Full<Bytes>>,
    method: &str,
    host: &str,
    path: &str,
    token: Option<&str>,
    body: Bytes,
) -> Result<(u16, Bytes)> {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    s.ready().await?;
    let resp = s.send_request(req.body(Full::new(body))?).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// The `p` quantile (0 to 1) of sorted microseconds, in ms.
pub fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((sorted_us.len() as f64 * p).ceil() as usize).clamp(1, sorted_us.len()) - 1;
    f64::from(sorted_us[i]) / 1000.0
}
