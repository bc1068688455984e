//! `commons-slowbench`: what slow and greedy clients cost everyone else.
//!
//! A coordinator in this process with its default limits (a 10 s header-read timeout, 64 connections per client
//! address). A client on 127.0.0.1 sends `--requests` sequential heartbeats over one kept-alive connection and the
//! latency is measured:
//! - with nothing else going on;
//! - while slowloris clients hold `--slow` half-sent requests, spread over `--addresses` other loopback addresses
//!   (127.0.0.2, ...: any 127/8 address is this machine), each sending one more header byte every second, and
//!   `--greedy` more connections come from one of them (refused past its limit).
//!
//! ```text
//! cargo run --release -p commons-tests --bin commons-slowbench
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use commons_tests::figures::{Figure, distribution, record};
use commons_tests::{Coordinator, pct};
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// Measures latency under a slowloris attack.
#[derive(Debug, Parser)]
struct Cli {
    /// Sequential heartbeats per measurement.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Half-sent requests held open.
    #[arg(long, default_value_t = 1000)]
    slow: usize,
    /// Loopback addresses they come from.
    #[arg(long, default_value_t = 16)]
    addresses: u8,
    /// Connections from one address past its limit.
    #[arg(long, default_value_t = 1000)]
    greedy: usize,
}

async fn connect(source: [u8; 4], to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    socket.connect(to).await
}

/// Sequential heartbeats: their latencies, ms, sorted.
async fn measure(client: &reqwest::Client, url: &str, id: &str, token: &str, n: usize) -> Vec<f64> {
    let hb = json!({"worker_id": id, "status": "healthy", "load": 0.1});
    let mut ms = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = client
            .post(format!("{url}/api/worker/heartbeat"))
            .bearer_auth(token)
            .json(&hb)
            .send()
            .await
            .expect("the coordinator answers");
        assert_eq!(r.status(), 200);
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    ms
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let c = Coordinator::start(|cfg, _| {
        let defaults = commons_coordinator::Config::default();
        cfg.max_connections_per_address = defaults.max_connections_per_address;
        cfg.header_read_timeout_secs = defaults.header_read_timeout_secs;
    })
    .await;
    let addr = c.server.local_addr();
    let client = reqwest::Client::new();
    let reg: serde_json::Value = client
        .post(format!("{}/api/worker/register", c.url()))
        .json(&json!({"capabilities": {"cpu": {"cores": 4}, "memory_bytes": 16u64 << 30}}))
        .send()
        .await?
        .json()
        .await?;
    let (id, token) = (
        reg["worker_id"].as_str().unwrap_or_default().to_owned(),
        reg["worker_token"].as_str().unwrap_or_default().to_owned(),
    );
    measure(&client, &c.url(), &id, &token, 200).await;
    let calm = measure(&client, &c.url(), &id, &token, cli.requests).await;

    // The attack: half-sent requests that trickle a header byte a second, and a flood from one address.
    let mut slow = Vec::new();
    for i in 0..cli.slow {
        let source = [127, 0, 1, 2 + (i % usize::from(cli.addresses.max(1))) as u8];
        let mut s = connect(source, addr).await?;
        s.write_all(b"POST /api/worker/heartbeat HTTP/1.1\r\nhost: c\r\n")
            .await?;
        slow.push(s);
    }
    let trickle = tokio::spawn(async move {
        loop {
            for s in &mut slow {
                let _ = s.write_all(b"x").await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut greedy = Vec::new();
    for _ in 0..cli.greedy {
        if let Ok(s) = connect([127, 0, 1, 2], addr).await {
            greedy.push(s);
        }
    }
    let attacked = measure(&client, &c.url(), &id, &token, cli.requests).await;
    trickle.abort();
    drop(greedy);

    println!(
        "heartbeats, one client, {} sequential requests: p50 / p99 ms",
        cli.requests
    );
    println!(
        "  calm:                                  {:.3} / {:.3}",
        pct(&calm, 0.5),
        pct(&calm, 0.99)
    );
    println!(
        "  {} slowloris requests from {} addresses + {} more connections from one: {:.3} / {:.3}",
        cli.slow,
        cli.addresses,
        cli.greedy,
        pct(&attacked, 0.5),
        pct(&attacked, 0.99)
    );
    record(&[
        Figure::new(
            "slow clients",
            "heartbeat p99, calm",
            "ms",
            pct(&calm, 0.99),
        )
        .points("percentile", distribution(|q| pct(&calm, q))),
        Figure::new(
            "slow clients",
            "heartbeat p99 under slowloris and a greedy address",
            "ms",
            pct(&attacked, 0.99),
        )
        .points("percentile", distribution(|q| pct(&attacked, q))),
    ]);
    Ok(())
}
