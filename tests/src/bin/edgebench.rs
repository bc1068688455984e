//! `commons-edgebench`: what the edge costs.
//!
//! 1. Forwarding overhead: the same request straight to a worker, through its coordinator, and through
//!    edge → coordinator → worker, on loopback; p50 and p99 of each.
//! 2. A simulated day, its intervals divided by `--scale`: 20 workers register through the edge, heartbeat their
//!    coordinators directly, and serve ordinary traffic that enters at the edge; the edge's own per-kind counts
//!    are printed, per real day.
//!
//! ```text
//! cargo run --release -p commons-tests --bin commons-edgebench
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use commons_tests::figures::{Figure, Goal, distribution, record};
use commons_tests::pct;
use commons_tests::{Coordinator, Edge, WorkerServer, catalogue_only, eventually};
use serde_json::{Value, json};

/// Measures the edge's forwarding overhead and its request counts over a simulated day.
#[derive(Debug, Parser)]
struct Cli {
    /// Requests per path in the overhead measurement.
    #[arg(long, default_value_t = 3000)]
    requests: usize,
    /// A day lasts 86,400 s / scale.
    #[arg(long, default_value_t = 2880)]
    scale: u64,
    /// Workers in the simulated day.
    #[arg(long, default_value_t = 20)]
    workers: usize,
    /// Service requests per real day entering at the edge.
    #[arg(long, default_value_t = 5000)]
    service_per_day: u64,
}

async fn timed(client: &reqwest::Client, url: &str, n: usize) -> Result<Vec<f64>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = client.get(url).send().await?;
        anyhow::ensure!(r.status() == 200, "{url} answered {}", r.status());
        r.bytes().await?;
        v.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    v.sort_by(f64::total_cmp);
    Ok(v)
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let client = reqwest::Client::new();
    let edge_interval_ms = (60_000 / cli.scale).max(10);
    let edge = Edge::start(|c| {
        c.heartbeat_interval_secs = 60;
        c.coordinator_ttl_secs = 300;
    })
    .await;
    let key = edge.federation_key(&client, "bench").await;
    let mut coords = Vec::new();
    for _ in 0..2 {
        coords.push(
            Coordinator::federated(&edge, &key, edge_interval_ms, |c, dir| {
                c.catalogue = Some(catalogue_only(dir, &[("echo", 50)]));
                c.heartbeat_interval_secs = 30;
                c.stale_after_secs = 90;
            })
            .await,
        );
    }

    // Workers register through the edge; their answers send their heartbeats straight to a coordinator.
    let mut servers = Vec::new();
    let mut regs = Vec::new();
    for i in 0..cli.workers {
        let w = WorkerServer::start(&format!("w{i}")).await;
        let gib = 1u64 << 30;
        let body = json!({"capabilities": {"cpu": {"cores": 4}, "memory_bytes": 16 * gib}, "endpoint": w.url()});
        let r: Value = client
            .post(format!("{}/api/worker/register", edge.url()))
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        anyhow::ensure!(r["worker_id"].is_string(), "registration failed: {r}");
        regs.push(r);
        servers.push(w);
    }
    let hb_every = Duration::from_millis((30_000 / cli.scale).max(1));
    let stop = tokio::sync::watch::channel(false);
    let mut beats = Vec::new();
    for r in regs.clone() {
        let (client, mut stop_rx) = (client.clone(), stop.0.subscribe());
        beats.push(tokio::spawn(async move {
            let url = format!(
                "{}{}",
                r["coordinator_url"].as_str().unwrap_or_default(),
                r["heartbeat_url"].as_str().unwrap_or_default()
            );
            let token = r["worker_token"].as_str().unwrap_or_default().to_owned();
            let body = json!({"worker_id": r["worker_id"], "status": "healthy", "load": 0.2});
            let mut sent = 0u64;
            loop {
                let _ = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await;
                sent += 1;
                tokio::select! {
                    _ = tokio::time::sleep(hb_every) => {}
                    _ = stop_rx.changed() => return sent,
                }
            }
        }));
    }
    let ready = eventually(10, || async {
        edge.admin(&client, "/api/admin/topology").await["services"]["echo"].as_u64()
            == Some(cli.workers as u64)
    })
    .await;
    anyhow::ensure!(ready, "the edge never saw all workers healthy");

    // 1. Overhead.
    let worker = &servers[0];
    let direct = timed(
        &client,
        &format!("{}/api/service/echo/ping", worker.url()),
        cli.requests,
    )
    .await?;
    let via_coord = timed(
        &client,
        &format!("{}/api/service/echo/ping", coords[0].url()),
        cli.requests,
    )
    .await?;
    let via_edge = timed(
        &client,
        &format!("{}/api/service/echo/ping", edge.url()),
        cli.requests,
    )
    .await?;
    println!(
        "forwarding on loopback, {} sequential requests each (ms):",
        cli.requests
    );
    println!(
        "  direct to a worker          p50 {:.3}  p99 {:.3}",
        pct(&direct, 0.5),
        pct(&direct, 0.99)
    );
    println!(
        "  coordinator -> worker       p50 {:.3}  p99 {:.3}",
        pct(&via_coord, 0.5),
        pct(&via_coord, 0.99)
    );
    println!(
        "  edge -> coordinator -> worker p50 {:.3}  p99 {:.3}",
        pct(&via_edge, 0.5),
        pct(&via_edge, 0.99)
    );
    println!(
        "  added by edge + coordinator: p50 {:.3} ms, p99 {:.3} ms",
        pct(&via_edge, 0.5) - pct(&direct, 0.5),
        pct(&via_edge, 0.99) - pct(&direct, 0.99)
    );
    let mut figures: Vec<Figure> = [
        ("direct to a worker", &direct),
        ("coordinator -> worker", &via_coord),
        ("edge -> coordinator -> worker", &via_edge),
    ]
    .into_iter()
    .map(|(path, sorted)| {
        Figure::new("edge", format!("{path}, p50"), "ms", pct(sorted, 0.5))
            .points("percentile", distribution(|q| pct(sorted, q)))
    })
    .collect();
    figures.push(
        Figure::new(
            "edge",
            "added by edge + coordinator, p50",
            "ms",
            pct(&via_edge, 0.5) - pct(&direct, 0.5),
        )
        .goal(Goal::AtMost(1.0)),
    );
    record(&figures);

    // 2. A simulated day. Counts so far (set-up and the overhead run) are subtracted.
    let before = edge.request_counts(&client).await;
    let day = Duration::from_millis(86_400_000 / cli.scale);
    let service_every = day.div_f64(cli.service_per_day.max(1) as f64);
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < day {
        let r = client
            .get(format!("{}/api/service/echo/day", edge.url()))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "service request failed: {}", r.status());
        sent += 1;
        let next = service_every.mul_f64(sent as f64);
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    let _ = stop.0.send(true);
    let mut heartbeats = 0;
    for b in beats {
        heartbeats += b.await.context("heartbeat task")?;
    }
    let after = edge.request_counts(&client).await;
    let count =
        |m: &std::collections::HashMap<String, u64>, kind: &str| m.get(kind).copied().unwrap_or(0);
    println!(
        "simulated day: scale 1/{} ({:.1} s), {} workers, 2 coordinators heartbeating the edge every {} ms (60 s real)",
        cli.scale,
        day.as_secs_f64(),
        cli.workers,
        edge_interval_ms
    );
    println!("  worker heartbeats sent to coordinators (never through the edge): {heartbeats}");
    let mut total = 0;
    for kind in commons_shared::edge::REQUEST_KINDS {
        let n = count(&after, kind) - count(&before, kind);
        total += n;
        println!("  edge requests, {kind:<12} {n}");
    }
    println!(
        "  edge requests per day in all: {total} (+ {} registrations at start); the seeds measured 51,990/day before their DHT and aim for 25",
        cli.workers
    );
    for c in coords {
        c.server.shutdown().await?;
    }
    Ok(())
}
