//! `commons-loadgen`: registers N workers and drives heartbeats with C connections against a real coordinator
//! process, then against a bare axum handler (the ceiling), and prints the figures.
//!
//! ```text
//! cargo build --release -p commons-coordinator && cargo build --release -p commons-tests
//! target/release/commons-loadgen --workers 10000 --connections 64 --duration 10
//! ```

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use commons_tests::figures::{Figure, Goal, distribution, record};
use commons_tests::load::{connect, percentile_ms, proc_kib, rss_kib, send, spawn};
use serde_json::{Value, json};

/// Load generator for the Commons coordinator.
#[derive(Debug, Parser)]
#[command(about)]
struct Cli {
    /// Workers to register.
    #[arg(long, default_value_t = 10_000)]
    workers: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds of heartbeats.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// The coordinator binary [default: next to this one].
    #[arg(long)]
    coordinator_bin: Option<PathBuf>,
    /// Skip the bare-handler ceiling run.
    #[arg(long)]
    no_ceiling: bool,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// (internal) A bare axum server that only parses heartbeat JSON: the ceiling.
    #[command(hide = true)]
    BareServer,
}

struct Phase {
    count: usize,
    errors: usize,
    secs: f64,
    latencies_us: Vec<u32>,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.count as f64 / self.secs
    }
    fn p(&self, q: f64) -> f64 {
        percentile_ms(&self.latencies_us, q)
    }
}

fn register_body(i: usize) -> Bytes {
    let gib = 1u64 << 30;
    Bytes::from(
        json!({"capabilities": {"cpu": {"brand": "Load CPU", "cores": 4, "threads": 8, "frequency_mhz": 3000},
            "memory_bytes": 16 * gib, "disks": [{"mount": "/", "total_bytes": 200 * gib, "free_bytes": 80 * gib}],
            "os": "linux", "arch": "x86_64", "hostname": format!("load-{i}"), "agent_version": "0.1.0"},
            "endpoint": format!("http://127.0.0.1:{}", 20000 + i % 10000)})
        .to_string(),
    )
}

async fn register_all(url: &str, n: usize, conns: usize) -> Result<(Vec<(String, String)>, Phase)> {
    let host = url.trim_start_matches("http://").to_owned();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (url, host) = (url.to_owned(), host.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = connect(&url).await?;
            let mut out = Vec::new();
            let mut lat = Vec::new();
            for i in (c..n).step_by(conns) {
                let t = Instant::now();
                let (status, body) = send(
                    &mut s,
                    "POST",
                    &host,
                    "/api/worker/register",
                    None,
                    register_body(i),
                )
                .await?;
                lat.push(t.elapsed().as_micros() as u32);
                if status != 200 {
                    bail!(
                        "registration answered {status}: {}",
                        String::from_utf8_lossy(&body)
                    );
                }
                let v: Value = serde_json::from_slice(&body)?;
                out.push((
                    v["worker_id"].as_str().unwrap_or_default().to_owned(),
                    v["worker_token"].as_str().unwrap_or_default().to_owned(),
                ));
            }
            anyhow::Ok((out, lat))
        }));
    }
    let mut workers = Vec::with_capacity(n);
    let mut latencies_us = Vec::with_capacity(n);
    for t in tasks {
        let (w, l) = t.await??;
        workers.extend(w);
        latencies_us.extend(l);
    }
    latencies_us.sort_unstable();
    Ok((
        workers,
        Phase {
            count: n,
            errors: 0,
            secs: start.elapsed().as_secs_f64(),
            latencies_us,
        },
    ))
}

async fn heartbeats(
    url: &str,
    workers: Arc<Vec<(String, String)>>,
    conns: usize,
    secs: u64,
) -> Result<Phase> {
    let host = url.trim_start_matches("http://").to_owned();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (url, host, workers) = (url.to_owned(), host.clone(), workers.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = connect(&url).await?;
            let mine: Vec<(Bytes, &str)> = workers
                .iter()
                .skip(c)
                .step_by(conns)
                .enumerate()
                .map(|(k, (id, token))| {
                    let body = format!(
                        r#"{{"worker_id":"{id}","status":"healthy","load":{:.2},"free_memory_bytes":{},"gpus":[],"containers":[{{"name":"commons-ocr","state":"running","restarts":0}}]}}"#,
                        (k % 100) as f64 / 100.0,
                        8u64 << 30
                    );
                    (Bytes::from(body), token.as_str())
                })
                .collect();
            let (mut lat, mut errors, mut i) = (Vec::with_capacity(1 << 16), 0usize, 0usize);
            while Instant::now() < deadline && !mine.is_empty() {
                let (body, token) = &mine[i % mine.len()];
                i += 1;
                let t = Instant::now();
                let (status, _) = send(&mut s, "POST", &host, "/api/worker/heartbeat", Some(token), body.clone()).await?;
                lat.push(t.elapsed().as_micros() as u32);
                if status != 200 {
                    errors += 1;
                }
            }
            anyhow::Ok((lat, errors))
        }));
    }
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await??;
        latencies_us.extend(l);
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    latencies_us.sort_unstable();
    Ok(Phase {
        count: latencies_us.len(),
        errors,
        secs,
        latencies_us,
    })
}

async fn bare_server() -> Result<()> {
    use axum::routing::post;
    async fn hb(
        axum::Json(h): axum::Json<commons_shared::api::HeartbeatRequest>,
    ) -> axum::Json<Value> {
        axum::Json(json!({"status": "ok", "worker": h.worker_id.len()}))
    }
    let app = axum::Router::new().route("/api/worker/heartbeat", post(hb));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("bare server listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    commons_tests::load::until_interrupted(loadgen(Cli::parse())).await
}

async fn loadgen(cli: Cli) -> Result<()> {
    if let Some(Sub::BareServer) = cli.command {
        return bare_server().await;
    }
    if cli.workers == 0 || cli.connections == 0 {
        bail!("--workers and --connections must be at least 1");
    }
    let me = std::env::current_exe()?;
    let bin = cli
        .coordinator_bin
        .clone()
        .unwrap_or_else(|| me.with_file_name("commons-coordinator"));
    if !bin.exists() {
        bail!(
            "no coordinator binary at {}; build it with `cargo build --release -p commons-coordinator` or pass --coordinator-bin",
            bin.display()
        );
    }
    let data = tempfile::tempdir()?;
    // One client address stands in for every worker: the per-address connection limit (64) would refuse a
    // heartbeat connection opened before the server saw a registration connection close.
    let config = data.path().join("coordinator.toml");
    std::fs::write(&config, "max_connections_per_address = 4096\n")?;
    let mut cmd = Command::new(&bin);
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .arg("--config")
        .arg(&config)
        // The DHT node (on by default) on loopback, on a port the OS picks.
        .args(["--dht-listen", "/ip4/127.0.0.1/tcp/0"])
        .env("COMMONS_REGISTER_RATE_LIMIT", "0")
        .env("COMMONS_ADMIN_TOKEN", "loadgen-admin-token-0123456789")
        .env("RUST_LOG", "warn");
    let (coord, url) = spawn(cmd)?;
    let pid = coord.0.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = rss_kib(pid);
    println!(
        "coordinator {url} (pid {pid}), {} workers, {} connections, {} s of heartbeats",
        cli.workers, cli.connections, cli.duration
    );

    let (workers, reg) = register_all(&url, cli.workers, cli.connections).await?;
    let after_reg = rss_kib(pid);
    println!(
        "registration: {} in {:.2} s ({:.0}/s), p50 {:.2} ms, p99 {:.2} ms",
        reg.count,
        reg.secs,
        reg.rate(),
        reg.p(0.50),
        reg.p(0.99)
    );
    let workers = Arc::new(workers);
    let hb = heartbeats(&url, workers.clone(), cli.connections, cli.duration).await?;
    let after_hb = rss_kib(pid);
    println!(
        "heartbeats: {} in {:.2} s = {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, non-200: {}",
        hb.count,
        hb.secs,
        hb.rate(),
        hb.p(0.50),
        hb.p(0.99),
        hb.errors
    );
    println!(
        "coordinator RSS: idle {:.1} MiB, after registration {:.1} MiB, after heartbeats {:.1} MiB; per worker {:.2} KiB",
        idle as f64 / 1024.0,
        after_reg as f64 / 1024.0,
        after_hb as f64 / 1024.0,
        after_hb.saturating_sub(idle) as f64 / cli.workers as f64
    );
    println!(
        "  of which anonymous (heap) {:.1} MiB, file-backed (the binary's code pages) {:.1} MiB",
        proc_kib(pid, "RssAnon:") as f64 / 1024.0,
        proc_kib(pid, "RssFile:") as f64 / 1024.0
    );
    drop(coord);
    let n = cli.workers;
    let rss_mib = after_hb as f64 / 1024.0;
    let mut figures = vec![
        Figure::new(
            "loadgen",
            format!("heartbeats/s, {n} workers"),
            "/s",
            hb.rate(),
        ),
        Figure::new(
            "loadgen",
            format!("heartbeat p99, {n} workers"),
            "ms",
            hb.p(0.99),
        )
        .points("percentile", distribution(|q| hb.p(q))),
        Figure::new(
            "loadgen",
            format!("registration p99, {n} workers"),
            "ms",
            reg.p(0.99),
        )
        .points("percentile", distribution(|q| reg.p(q))),
        Figure::new("loadgen", "coordinator RSS against workers", "MiB", rss_mib)
            .points("workers", vec![(n as f64, rss_mib)]),
        Figure::new(
            "loadgen",
            format!("RSS per worker, {n} workers"),
            "KiB",
            after_hb.saturating_sub(idle) as f64 / n as f64,
        ),
    ];
    // The README's goals hold at the worker count each was set for: latencies at 10,000, memory per worker at
    // 100,000.
    let goals = [
        (10_000, "heartbeat p99", Goal::AtMost(8.0)),
        (10_000, "registration p99", Goal::AtMost(5.0)),
        (100_000, "RSS per worker", Goal::AtMost(2.0)),
    ];
    for f in &mut figures {
        for (count, prefix, goal) in goals {
            if n == count && f.name.starts_with(prefix) {
                f.goal = Some(goal);
            }
        }
    }
    // The issue's two memory goals: 10,000 workers in 20 MB, 100,000 in 256 MB.
    if n == 10_000 {
        figures.push(
            Figure::new("loadgen", "coordinator RSS, 10,000 workers", "MiB", rss_mib)
                .goal(Goal::AtMost(20.0)),
        );
    } else if n == 100_000 {
        figures.push(
            Figure::new(
                "loadgen",
                "coordinator RSS, 100,000 workers",
                "MiB",
                rss_mib,
            )
            .goal(Goal::AtMost(256.0)),
        );
    }

    if !cli.no_ceiling {
        let mut cmd = Command::new(&me);
        cmd.arg("bare-server");
        let (_bare, bare_url) = spawn(cmd)?;
        let ceiling = heartbeats(&bare_url, workers, cli.connections, cli.duration).await?;
        println!(
            "ceiling (bare axum handler parsing the same JSON, same client): {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
            ceiling.rate(),
            ceiling.p(0.50),
            ceiling.p(0.99)
        );
        println!(
            "coordinator throughput = {:.0}% of the ceiling",
            100.0 * hb.rate() / ceiling.rate()
        );
        figures.push(Figure::new(
            "loadgen",
            format!("bare-axum ceiling, heartbeats/s, {n} workers"),
            "/s",
            ceiling.rate(),
        ));
        figures.push(
            Figure::new(
                "loadgen",
                format!("heartbeat throughput against the ceiling, {n} workers"),
                "%",
                100.0 * hb.rate() / ceiling.rate(),
            )
            .goal(Goal::AtLeast(70.0)),
        );
    }
    record(&figures);
    Ok(())
}
