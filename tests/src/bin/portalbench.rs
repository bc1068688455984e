//! `commons-portalbench`: the portal's figures in headless Chromium against a real coordinator with N registered
//! workers (default 1,000): time to the first render of the laid-out topology (from navigation, wasm load and the
//! live feed's snapshot included), frames per second while the layout settles, and the wasm's size.
//!
//! `cargo xtask portal && cargo run --release -p commons-tests --bin commons-portalbench -- --workers 1000`

use std::time::Duration;

use clap::Parser;
use commons_coordinator::server::test_utils::ADMIN_TOKEN;
use commons_tests::browser::{Driver, portal_dist, screenshot, until, wait_for};
use commons_tests::figures::{Figure, Goal, record};
use commons_tests::{Coordinator, register};
use fantoccini::Locator;
use serde_json::Value;

#[derive(Debug, Parser)]
struct Args {
    /// Workers to register.
    #[arg(long, default_value_t = 1000)]
    workers: usize,
    /// Page loads to measure.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dist = portal_dist();
    let size = |f: &str| {
        std::fs::metadata(dist.join(f))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let wasm = size("commons_portal_bg.wasm");
    let wasm_gz = size("commons_portal_bg.wasm.gz");
    let all_gz: u64 = [
        "commons_portal_bg.wasm.gz",
        "commons_portal.js.gz",
        "index.html.gz",
        "style.css.gz",
    ]
    .iter()
    .map(|f| size(f))
    .sum();

    let d = dist.clone();
    let c = Coordinator::start(move |c, _| {
        c.portal_dir = Some(d);
        c.live_interval_ms = 1000;
    })
    .await;
    let url = c.url();
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    let mut pending = futures::stream::FuturesUnordered::new();
    for i in 0..args.workers {
        let (http, url) = (http.clone(), url.clone());
        pending.push(async move {
            register(
                &http,
                &url,
                &format!(
                    "http://10.{}.{}.{}:8000",
                    i / 65536,
                    (i / 256) % 256,
                    i % 256
                ),
            )
            .await
        });
        if pending.len() >= 32 {
            futures::StreamExt::next(&mut pending).await;
        }
    }
    while futures::StreamExt::next(&mut pending).await.is_some() {}
    eprintln!(
        "registered {} workers in {:.1} s",
        args.workers,
        started.elapsed().as_secs_f64()
    );

    let driver = Driver::start().await;
    let b = driver.browser().await;
    b.goto(&url).await?;
    wait_for(&b, "#token", 20)
        .await
        .send_keys(ADMIN_TOKEN)
        .await?;
    b.find(Locator::Css("#login")).await?.click().await?;
    wait_for(&b, "#card-total", 20).await;

    let nodes = args.workers + 1;
    let (mut first, mut fps, mut settle) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..args.runs {
        b.goto("about:blank").await?;
        b.goto(&format!("{url}/#/topology")).await?;
        let read = format!(
            "return window.__commons && window.__commons.topology_nodes == {nodes} && window.__commons.settle_nodes == {nodes}"
        );
        if !until(&b, 60, &read).await {
            anyhow::bail!("run {run}: the topology did not render and settle within 60 s");
        }
        let m: Value = b.execute("return window.__commons", vec![]).await?;
        let f = |k: &str| m[k].as_f64().unwrap_or(f64::NAN);
        eprintln!(
            "run {run}: first render {:.0} ms, settled in {:.0} ms over {} frames ({:.1} fps; {:.0} ms in layout ticks, {:.0} ms moving elements)",
            f("topology_first_render_ms"),
            f("settle_ms"),
            f("settle_frames"),
            f("settle_fps"),
            f("settle_tick_ms"),
            f("settle_paint_ms")
        );
        first.push(f("topology_first_render_ms"));
        fps.push(f("settle_fps"));
        settle.push(f("settle_ms"));
        if run == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let shot = screenshot(&b, &format!("portalbench-topology-{}", args.workers)).await;
            eprintln!("screenshot: {}", shot.display());
        }
    }
    b.close().await?;

    println!(
        "portal benchmark: {} workers ({} nodes), headless Chromium, {} page loads",
        args.workers, nodes, args.runs
    );
    println!(
        "  time to first render of the laid-out topology: median {:.0} ms (goal < 1500 ms)",
        median(first.clone())
    );
    println!(
        "  frames per second while the layout settles:   median {:.1} fps (goal >= 30)",
        median(fps.clone())
    );
    println!(
        "  layout settling time:                          median {:.0} ms",
        median(settle.clone())
    );
    println!(
        "  wasm: {:.0} KiB, {:.0} KiB gzip (goal <= 500 KB gzip); whole portal {:.0} KiB gzip",
        wasm as f64 / 1024.0,
        wasm_gz as f64 / 1024.0,
        all_gz as f64 / 1024.0
    );
    record(&[
        Figure::new(
            "portal",
            format!(
                "first render of the laid-out topology, {} workers",
                args.workers
            ),
            "ms",
            median(first.clone()),
        )
        .goal(Goal::AtMost(1500.0))
        .points(
            "page load",
            first
                .iter()
                .enumerate()
                .map(|(i, v)| ((i + 1) as f64, *v))
                .collect(),
        ),
        Figure::new(
            "portal",
            "frames per second while the layout settles",
            "fps",
            median(fps),
        )
        .goal(Goal::AtLeast(30.0)),
        Figure::new("portal", "layout settling time", "ms", median(settle)),
        // The goal is 500 KB (decimal).
        Figure::new("portal", "wasm, gzip", "KiB", wasm_gz as f64 / 1024.0)
            .goal(Goal::AtMost(500_000.0 / 1024.0)),
    ]);
    Ok(())
}
