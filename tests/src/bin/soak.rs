//! `commons-soak`: a coordinator process under a long, steady load with churn, and how it holds up minute by minute.
//!
//! A real coordinator process (the binary next to this one, release build for the figures) on loopback, its DHT node
//! on. `--workers` workers register and heartbeat every `--heartbeat-secs`; every period `--churn-percent` of them
//! leave (unregister) and as many new ones register; a steady `--requests-per-sec` of service requests go through
//! the coordinator to the workers' endpoint (one loopback HTTP server that answers at once, the same for all). Every
//! `--period-secs` it prints: requests of each kind, errors (any answer but the expected one, or a failed
//! connection), p99 latency of heartbeats and service requests, and the coordinator's RSS. At the end: the totals and
//! the RSS change from the first period after warm-up to the last.
//!
//! ```text
//! cargo build --release -p commons-coordinator && cargo build --release -p commons-tests
//! $CARGO_TARGET_DIR/release/commons-soak --minutes 60                      # the hour
//! $CARGO_TARGET_DIR/release/commons-soak --minutes 2 --period-secs 10      # the short version
//! ```

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use clap::Parser;
use commons_tests::figures::{Figure, Goal, record};
use commons_tests::load::{connect, percentile_ms, rss_kib, send, spawn};
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use parking_lot::Mutex;
use serde_json::{Value, json};

/// Soak of the coordinator.
#[derive(Debug, Parser)]
struct Cli {
    /// Minutes to run.
    #[arg(long, default_value_t = 60)]
    minutes: u64,
    /// Workers registered at any time.
    #[arg(long, default_value_t = 10_000)]
    workers: usize,
    /// Seconds between one worker's heartbeats.
    #[arg(long, default_value_t = 30)]
    heartbeat_secs: u64,
    /// Percent of the workers replaced each period.
    #[arg(long, default_value_t = 1.0)]
    churn_percent: f64,
    /// Service requests per second.
    #[arg(long, default_value_t = 50)]
    requests_per_sec: u64,
    /// Seconds per reported period (and per churn step).
    #[arg(long, default_value_t = 60)]
    period_secs: u64,
    /// Periods counted as warm-up before the RSS baseline.
    #[arg(long, default_value_t = 2)]
    warmup_periods: u64,
    /// The coordinator binary [default: next to this one].
    #[arg(long)]
    coordinator_bin: Option<std::path::PathBuf>,
}

/// What one period saw.
#[derive(Default)]
struct Window {
    heartbeats_us: Vec<u32>,
    requests_us: Vec<u32>,
    errors: u64,
    churned: u64,
}

impl Window {
    /// Counts a failure of `what`, and says the first few of each kind.
    fn failed(&mut self, what: &str, status: Option<u16>) {
        // Once the run is over its coordinator is gone: what fails then is not counted or said.
        if ENDED.load(Ordering::Relaxed) {
            return;
        }
        self.errors += 1;
        let n = FAILURES.fetch_add(1, Ordering::Relaxed);
        if n < 20 {
            match status {
                Some(s) => eprintln!("soak: {what} answered {s}"),
                None => eprintln!("soak: {what} got no answer (the connection failed)"),
            }
        }
    }
}

/// Failures said so far (the first 20 are printed).
static FAILURES: AtomicU64 = AtomicU64::new(0);

/// The run is over (its figures are taken).
static ENDED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

type Shared = Arc<Mutex<Window>>;

fn register_body(endpoint: &str, i: u64) -> Bytes {
    let gib = 1u64 << 30;
    Bytes::from(
        json!({"capabilities": {"cpu": {"brand": "Soak CPU", "cores": 4, "threads": 8},
            "memory_bytes": 16 * gib, "disks": [{"mount": "/", "total_bytes": 200 * gib, "free_bytes": 80 * gib}],
            "os": "linux", "arch": "x86_64", "hostname": format!("soak-{i}"), "agent_version": "0.1.0"},
            "endpoint": endpoint})
        .to_string(),
    )
}

/// A worker's slot: its current registration, replaced on churn.
struct Slot {
    id: String,
    token: String,
    /// Being replaced by churn: unregistering, then registering anew. A worker that leaves sends no heartbeat.
    leaving: bool,
}

async fn register(url: &str, endpoint: &str, i: u64) -> Result<Slot> {
    let host = url.trim_start_matches("http://");
    let mut s = connect(url).await?;
    let (status, body) = send(
        &mut s,
        "POST",
        host,
        "/api/worker/register",
        None,
        register_body(endpoint, i),
    )
    .await?;
    if status != 200 {
        bail!(
            "registration answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let v: Value = serde_json::from_slice(&body)?;
    Ok(Slot {
        id: v["worker_id"].as_str().unwrap_or_default().to_owned(),
        token: v["worker_token"].as_str().unwrap_or_default().to_owned(),
        leaving: false,
    })
}

/// Sends a request on `s` and gives its status; `None` when the connection failed, after which `s` is a new one
/// (when one can be made: else the next call fails too, and counts).
async fn call(
    s: &mut SendRequest<Full<Bytes>>,
    url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Bytes,
) -> Option<u16> {
    let host = url.trim_start_matches("http://");
    match send(s, method, host, path, token, body).await {
        Ok((status, _)) => Some(status),
        Err(_) => {
            if let Ok(fresh) = connect(url).await {
                *s = fresh;
            }
            None
        }
    }
}

/// The workers' endpoint: answers every service request at once.
async fn worker_server() -> Result<String> {
    let app = axum::Router::new().fallback(|| async { "ok" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

#[tokio::main]
async fn main() -> Result<()> {
    commons_tests::load::until_interrupted(soak(Cli::parse())).await
}

async fn soak(cli: Cli) -> Result<()> {
    if cli.workers == 0 || cli.period_secs == 0 || cli.heartbeat_secs == 0 {
        bail!("--workers, --period-secs and --heartbeat-secs must be at least 1");
    }
    let bin = cli.coordinator_bin.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .unwrap_or_default()
            .with_file_name("commons-coordinator")
    });
    if !bin.exists() {
        bail!(
            "no coordinator binary at {}; build it with `cargo build --release -p commons-coordinator` or pass \
             --coordinator-bin",
            bin.display()
        );
    }
    let data = tempfile::tempdir()?;
    let config = data.path().join("soak.toml");
    std::fs::write(
        &config,
        format!(
            "anonymous_access = true\nanonymous_rate_per_minute = 1000000\nregister_rate_limit = 0\n\
             heartbeat_interval_secs = {}\nstale_after_secs = {}\noffline_after_secs = {}\n\
             max_connections_per_address = 100000\n",
            cli.heartbeat_secs,
            cli.heartbeat_secs * 3,
            cli.heartbeat_secs * 20
        ),
    )?;
    let mut cmd = Command::new(&bin);
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--dht-listen",
        "/ip4/127.0.0.1/tcp/0",
        "--data-dir",
    ])
    .arg(data.path().join("db"))
    .arg("--config")
    .arg(&config)
    .env("COMMONS_ADMIN_TOKEN", "soak-admin-token-0123456789")
    .env("RUST_LOG", "warn");
    let (coord, url) = spawn(cmd)?;
    let pid = coord.0.id();
    let endpoint = worker_server().await?;
    println!(
        "coordinator {url} (pid {pid}); {} workers, heartbeats every {} s, {} % churn per {} s, {} service requests/s, {} min",
        cli.workers,
        cli.heartbeat_secs,
        cli.churn_percent,
        cli.period_secs,
        cli.requests_per_sec,
        cli.minutes
    );
    let next_id = Arc::new(AtomicU64::new(0));
    let mut slots = Vec::with_capacity(cli.workers);
    for _ in 0..cli.workers {
        slots.push(Mutex::new(
            register(&url, &endpoint, next_id.fetch_add(1, Ordering::Relaxed)).await?,
        ));
    }
    let slots = Arc::new(slots);
    let window: Shared = Arc::default();
    let host = url.trim_start_matches("http://").to_owned();

    // Heartbeats: 16 connections, each for a share of the slots, each slot once per interval.
    let conns = 16usize;
    for c in 0..conns {
        let (url, slots, window) = (url.clone(), slots.clone(), window.clone());
        let every = Duration::from_secs(cli.heartbeat_secs);
        tokio::spawn(async move {
            let mut s = connect(&url).await.expect("the coordinator accepts");
            let mine: Vec<usize> = (c..slots.len()).step_by(conns).collect();
            let gap = every / mine.len().max(1) as u32;
            let mut tick = tokio::time::interval(gap.max(Duration::from_micros(100)));
            for &i in mine.iter().cycle() {
                tick.tick().await;
                let (id, token) = {
                    let slot = slots[i].lock();
                    if slot.leaving {
                        continue;
                    }
                    (slot.id.clone(), slot.token.clone())
                };
                let body = Bytes::from(
                    json!({"worker_id": id, "status": "healthy", "load": 0.2, "free_memory_bytes": 8u64 << 30})
                        .to_string(),
                );
                let t = Instant::now();
                let status = call(
                    &mut s,
                    &url,
                    "POST",
                    "/api/worker/heartbeat",
                    Some(&token),
                    body,
                )
                .await;
                let ok = match status {
                    Some(200) => true,
                    // A slot that churn began to replace between reading it and the answer: its old token is
                    // gone.
                    Some(401) => {
                        let slot = slots[i].lock();
                        slot.leaving || slot.id != id
                    }
                    _ => false,
                };
                let mut w = window.lock();
                w.heartbeats_us.push(t.elapsed().as_micros() as u32);
                if !ok {
                    w.failed("a heartbeat", status);
                }
            }
        });
    }
    // Service requests: a steady rate over 4 connections.
    for _ in 0..4 {
        let (url, window) = (url.clone(), window.clone());
        let rate = (cli.requests_per_sec / 4).max(1);
        tokio::spawn(async move {
            let mut s = connect(&url).await.expect("the coordinator accepts");
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate as u32);
            loop {
                tick.tick().await;
                let t = Instant::now();
                let status = call(
                    &mut s,
                    &url,
                    "GET",
                    "/api/service/ocr/health",
                    None,
                    Bytes::new(),
                )
                .await;
                let mut w = window.lock();
                w.requests_us.push(t.elapsed().as_micros() as u32);
                if status != Some(200) {
                    w.failed("a service request", status);
                }
            }
        });
    }

    println!("period  heartbeats  requests  churned  errors  hb p99 ms  req p99 ms  RSS MiB");
    let periods = (cli.minutes * 60 / cli.period_secs).max(1);
    let (mut baseline, mut last, mut total_errors, mut total_requests) = (None, 0u64, 0u64, 0u64);
    let churn =
        ((cli.workers as f64 * cli.churn_percent / 100.0).round() as usize).min(cli.workers);
    let start = Instant::now();
    // Per period: (minute at its end, RSS MiB, heartbeat p99 ms, request p99 ms).
    let mut series: Vec<(f64, f64, f64, f64)> = Vec::new();
    for p in 1..=periods {
        // Churn, spread over the period's first part: leave, then a new worker takes the slot.
        let mut rng = p as usize * 7919;
        for _ in 0..churn {
            rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let i = rng % slots.len();
            let (id, token) = {
                let mut slot = slots[i].lock();
                slot.leaving = true;
                (slot.id.clone(), slot.token.clone())
            };
            let mut s = connect(&url).await?;
            let path = format!("/api/worker/unregister/{id}");
            let gone = matches!(
                send(&mut s, "DELETE", &host, &path, Some(&token), Bytes::new()).await,
                Ok((200, _))
            );
            let fresh = register(&url, &endpoint, next_id.fetch_add(1, Ordering::Relaxed)).await;
            let mut w = window.lock();
            match (gone, fresh) {
                (true, Ok(new)) => {
                    *slots[i].lock() = new;
                    w.churned += 1;
                }
                (gone, fresh) => {
                    slots[i].lock().leaving = false;
                    if let Err(e) = fresh {
                        eprintln!("soak: a churn registration failed: {e}");
                    }
                    w.failed(
                        if gone {
                            "a churn registration"
                        } else {
                            "a churn unregistration"
                        },
                        None,
                    );
                }
            }
        }
        tokio::time::sleep_until((start + Duration::from_secs(p * cli.period_secs)).into()).await;
        let mut w = std::mem::take(&mut *window.lock());
        w.heartbeats_us.sort_unstable();
        w.requests_us.sort_unstable();
        let rss = rss_kib(pid);
        if p == cli.warmup_periods + 1 {
            baseline = Some(rss);
        }
        last = rss;
        series.push((
            (p * cli.period_secs) as f64 / 60.0,
            rss as f64 / 1024.0,
            percentile_ms(&w.heartbeats_us, 0.99),
            percentile_ms(&w.requests_us, 0.99),
        ));
        total_errors += w.errors;
        total_requests += (w.heartbeats_us.len() + w.requests_us.len()) as u64;
        println!(
            "{p:>6}  {:>10}  {:>8}  {:>7}  {:>6}  {:>9.2}  {:>10.2}  {:>7.1}",
            w.heartbeats_us.len(),
            w.requests_us.len(),
            w.churned,
            w.errors,
            percentile_ms(&w.heartbeats_us, 0.99),
            percentile_ms(&w.requests_us, 0.99),
            rss as f64 / 1024.0
        );
    }
    let baseline = baseline.unwrap_or(last);
    println!(
        "total: {total_requests} requests, {total_errors} errors; RSS {:.1} MiB after warm-up, {:.1} MiB at the end ({:+.1} %)",
        baseline as f64 / 1024.0,
        last as f64 / 1024.0,
        100.0 * (last as f64 - baseline as f64) / baseline.max(1) as f64
    );
    ENDED.store(true, Ordering::Relaxed);
    drop(coord);
    let (n, minutes) = (cli.workers, cli.minutes);
    let line = |f: fn(&(f64, f64, f64, f64)) -> f64| -> Vec<(f64, f64)> {
        series.iter().map(|s| (s.0, f(s))).collect()
    };
    let growth = 100.0 * (last as f64 - baseline as f64) / baseline.max(1) as f64;
    record(&[
        Figure::new(
            "soak",
            format!("errors, {n} workers, {minutes} min"),
            "",
            total_errors as f64,
        )
        .goal(Goal::AtMost(0.0)),
        Figure::new(
            "soak",
            format!("RSS growth after warm-up, {minutes} min"),
            "%",
            growth,
        )
        .goal(Goal::AtMost(5.0)),
        Figure::new(
            "soak",
            format!("coordinator RSS over time, {n} workers"),
            "MiB",
            last as f64 / 1024.0,
        )
        .points("minute", line(|s| s.1)),
        Figure::new(
            "soak",
            "heartbeat p99 per period",
            "ms",
            series.iter().map(|s| s.2).fold(0.0, f64::max),
        )
        .points("minute", line(|s| s.2)),
        Figure::new(
            "soak",
            "service request p99 per period",
            "ms",
            series.iter().map(|s| s.3).fold(0.0, f64::max),
        )
        .points("minute", line(|s| s.3)),
    ]);
    if total_errors > 0 {
        bail!("{total_errors} errors");
    }
    Ok(())
}
