//! What the reverse path costs: the same requests to a worker's gateway through a real coordinator on loopback,
//! once over a new TCP connection to the worker's endpoint (direct) and once back over the worker's own
//! connection (its channel, HTTP/2: `commons_server::channel`), opened by the agent's code
//! (`commons_agent::channel`). Prints the latency of small requests (p50, p99) on each path and the throughput
//! of a 100 MiB upload on each.
//!
//! `cargo run --release -p commons-tests --bin commons-reversebench [-- --requests N --upload-mib M]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use commons_tests::figures::{Figure, Goal, distribution, record};
use commons_tests::{
    Coordinator, Seen, WorkerServer, catalogue_only, echo_routes, heartbeat, pct, register,
};

#[derive(Debug, Parser)]
#[command(about)]
struct Cli {
    /// Small requests per path.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// The upload's size, MiB.
    #[arg(long, default_value_t = 100)]
    upload_mib: usize,
}

async fn coordinator(upload: usize) -> Coordinator {
    Coordinator::start(move |c, dir| {
        c.catalogue = Some(catalogue_only(dir, &[("echo", 1)]));
        c.proxy_body_limit_bytes = upload + (1 << 20);
    })
    .await
}

/// Latencies of `n` small requests, ms, sorted.
async fn latencies(client: &reqwest::Client, url: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 50 {
        let start = Instant::now();
        let r = client.get(url).send().await?;
        anyhow::ensure!(r.status() == 200, "{url} answered {}", r.status());
        r.bytes().await?;
        // The first 50 warm the connections up.
        if i >= 50 {
            out.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

/// MiB/s of one upload of `bytes`.
async fn upload(client: &reqwest::Client, url: &str, bytes: usize) -> anyhow::Result<f64> {
    let body = vec![7u8; bytes];
    let start = Instant::now();
    let r = client.post(url).body(body).send().await?;
    anyhow::ensure!(r.status() == 200, "{url} answered {}", r.status());
    let v: serde_json::Value = r.json().await?;
    anyhow::ensure!(v["body_len"] == bytes, "the worker got all of it: {v}");
    Ok(bytes as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let bytes = cli.upload_mib << 20;
    let client = reqwest::Client::new();

    // Direct: the worker's endpoint, a TCP connection per request.
    let direct_c = coordinator(bytes).await;
    let direct_w = WorkerServer::start("direct").await;
    let w = register(&client, &direct_c.url(), &direct_w.url()).await;
    heartbeat(&client, &direct_c.url(), &w, "healthy", 0.0).await;

    // Reverse: the same routes served on the worker's channel. Its endpoint is a closed port, so that only the
    // channel can carry the requests.
    let reverse_c = coordinator(bytes).await;
    let closed = WorkerServer::start("closed").await;
    let closed_url = closed.url();
    closed.stop().await;
    let w = register(&client, &reverse_c.url(), &closed_url).await;
    heartbeat(&client, &reverse_c.url(), &w, "healthy", 0.0).await;
    let seen = Arc::new(Seen::default());
    let kept = commons_agent::channel::keep(
        commons_agent::channel::Opener {
            coordinator_url: reverse_c.url(),
            worker_id: w.id.clone(),
            worker_token: w.token.clone(),
        },
        echo_routes("reverse", seen.clone()),
    );
    let opened = Instant::now();
    while !kept.open.load(std::sync::atomic::Ordering::Relaxed) {
        anyhow::ensure!(
            opened.elapsed() < Duration::from_secs(10),
            "the channel did not open"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let path = "/api/service/echo/ping";
    let direct = latencies(&client, &format!("{}{path}", direct_c.url()), cli.requests).await?;
    let reverse = latencies(&client, &format!("{}{path}", reverse_c.url()), cli.requests).await?;
    anyhow::ensure!(
        seen.requests.load(std::sync::atomic::Ordering::Relaxed) as usize == cli.requests + 50,
        "every reverse request went over the channel"
    );
    println!(
        "small requests ({} each): direct p50 {:.3} ms, p99 {:.3} ms; reverse p50 {:.3} ms, p99 {:.3} ms; the reverse path adds {:.3} ms at p50",
        cli.requests,
        pct(&direct, 0.5),
        pct(&direct, 0.99),
        pct(&reverse, 0.5),
        pct(&reverse, 0.99),
        pct(&reverse, 0.5) - pct(&direct, 0.5)
    );
    let up = "/api/service/echo/upload";
    let direct_up = upload(&client, &format!("{}{up}", direct_c.url()), bytes).await?;
    let reverse_up = upload(&client, &format!("{}{up}", reverse_c.url()), bytes).await?;
    println!(
        "{} MiB upload: direct {direct_up:.0} MiB/s, reverse {reverse_up:.0} MiB/s ({:.0} % of direct)",
        cli.upload_mib,
        100.0 * reverse_up / direct_up
    );
    let mut figures: Vec<Figure> = [("direct", &direct), ("reverse", &reverse)]
        .into_iter()
        .map(|(name, sorted)| {
            Figure::new(
                "reverse",
                format!("{name} path, p50"),
                "ms",
                pct(sorted, 0.5),
            )
            .points("percentile", distribution(|q| pct(sorted, q)))
        })
        .collect();
    figures.push(
        Figure::new(
            "reverse",
            "added by the reverse path, p50",
            "ms",
            pct(&reverse, 0.5) - pct(&direct, 0.5),
        )
        .goal(Goal::AtMost(1.0)),
    );
    figures.push(
        Figure::new(
            "reverse",
            format!("{} MiB upload, reverse against direct", cli.upload_mib),
            "%",
            100.0 * reverse_up / direct_up,
        )
        .goal(Goal::AtLeast(50.0)),
    );
    record(&figures);
    drop(kept);
    Ok(())
}
