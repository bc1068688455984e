//! `commons-accountingbench`: what accounting costs on the request path.
//!
//! Two coordinators in this process, the same but for `accounting` (on in one, off in the other), each with one
//! worker (an HTTP server on loopback that answers at once) for a service `echo`, each request with an API key.
//! Measured in alternating rounds, so both see the same machine:
//! - sequential requests: p50 and p99 through the coordinator;
//! - `--clients` concurrent clients for `--seconds`: requests per second.
//!
//! Then the ledger is read back: the usage report of the coordinator with accounting on must count every request
//! it routed.
//!
//! ```text
//! cargo run --release -p commons-tests --bin commons-accountingbench
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use commons_tests::{Coordinator, WorkerServer, heartbeat, operator_catalogue, pct, register};
use serde_json::json;

/// Measures the routing overhead of accounting.
#[derive(Debug, Parser)]
struct Cli {
    /// Sequential requests per round.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Concurrent clients in the throughput rounds.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds per throughput round.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Rounds of each (alternating on and off).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

struct Setup {
    c: Coordinator,
    _worker: WorkerServer,
    key: String,
}

async fn setup(client: &reqwest::Client, accounting: bool) -> Setup {
    let c = Coordinator::start(move |cfg, dir| {
        cfg.anonymous_access = false;
        cfg.accounting = accounting;
        cfg.accounting_flush_ms = 5000;
        cfg.catalogue = Some(operator_catalogue(
            dir,
            "[[service]]\nname = \"echo\"\nimage = \"example/echo:1\"\nport = 9000\nmin_ram = \"1GB\"\n\
             replicas = 1\nconcurrency = 64\n",
        ));
    })
    .await;
    let worker = WorkerServer::start("w").await;
    let w = register(client, &c.url(), &worker.url()).await;
    heartbeat(client, &c.url(), &w, "healthy", 0.1).await;
    let made = c
        .api_key(
            client,
            json!({"name": "bench", "rate_per_minute": 1_000_000}),
        )
        .await;
    let key = made["key"].as_str().unwrap_or_default().to_owned();
    Setup {
        c,
        _worker: worker,
        key,
    }
}

async fn sequential(client: &reqwest::Client, s: &Setup, n: usize) -> Result<Vec<f64>> {
    let url = format!("{}/api/service/echo/ping", s.c.url());
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = client.get(&url).bearer_auth(&s.key).send().await?;
        anyhow::ensure!(r.status() == 200, "{url} answered {}", r.status());
        r.bytes().await?;
        v.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    v.sort_by(f64::total_cmp);
    Ok(v)
}

async fn throughput(s: &Setup, clients: usize, seconds: u64) -> f64 {
    let url = format!("{}/api/service/echo/ping", s.c.url());
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url, key, done, stop) = (
            reqwest::Client::new(),
            url.clone(),
            s.key.clone(),
            done.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(r) = client.get(&url).bearer_auth(&key).send().await
                    && r.status() == 200
                    && r.bytes().await.is_ok()
                {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let n = done.load(Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let client = reqwest::Client::new();
    let on = setup(&client, true).await;
    let off = setup(&client, false).await;
    // Warm both.
    sequential(&client, &on, 200).await?;
    sequential(&client, &off, 200).await?;
    let (mut lat_on, mut lat_off, mut rps_on, mut rps_off) = (vec![], vec![], vec![], vec![]);
    for _ in 0..cli.rounds {
        lat_on.extend(sequential(&client, &on, cli.requests).await?);
        lat_off.extend(sequential(&client, &off, cli.requests).await?);
        rps_on.push(throughput(&on, cli.clients, cli.seconds).await);
        rps_off.push(throughput(&off, cli.clients, cli.seconds).await);
    }
    lat_on.sort_by(f64::total_cmp);
    lat_off.sort_by(f64::total_cmp);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!("| figure | accounting off | accounting on |");
    println!("| --- | --- | --- |");
    println!(
        "| sequential p50 / p99, ms ({} requests) | {:.3} / {:.3} | {:.3} / {:.3} |",
        lat_on.len(),
        pct(&lat_off, 0.5),
        pct(&lat_off, 0.99),
        pct(&lat_on, 0.5),
        pct(&lat_on, 0.99)
    );
    println!(
        "| requests/s, {} clients (mean of {} rounds of {} s) | {:.0} | {:.0} ({:+.1} %) |",
        cli.clients,
        cli.rounds,
        cli.seconds,
        mean(&rps_off),
        mean(&rps_on),
        100.0 * (mean(&rps_on) / mean(&rps_off) - 1.0)
    );
    // Every request routed is in the ledger once it has written (every 5 s here).
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let routed: u64 = on.c.admin(&client, "/api/admin/services").await["services"][0]["requests"]
        .as_u64()
        .unwrap_or(0);
    let report =
        on.c.admin(&client, "/api/admin/usage?hours=1&bucket_minutes=60")
            .await;
    let recorded = report["services"][0]["requests"].as_u64().unwrap_or(0);
    println!("ledger: {recorded} requests recorded of {routed} routed");
    anyhow::ensure!(recorded == routed, "the ledger lost requests");
    Ok(())
}
