//! `commons-servicebench`: what the pool's path costs a real service, and what a second agent adds.
//!
//! An edge, a coordinator registered with it, and agents (in process) running the ocr image `cargo xtask images`
//! built, on a real engine, each container without network behind its socket.
//!
//! 1. Latency the path adds: the same request straight to the container's socket, and through edge → coordinator
//!    → agent gateway → socket; p50 and p99 of each, for `GET /health` (the path alone) and a small OCR request
//!    (one word).
//! 2. OCR throughput through the edge with one agent, then with two, `--clients` requests at a time for `--secs`.
//!
//! ```text
//! .ci/engine.sh && export DOCKER_HOST=unix:///tmp/commons-engine/engine.sock
//! cargo xtask images --registry 127.0.0.1:5000
//! cargo run --release -p commons-tests --bin commons-servicebench
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use commons_tests::pct;
use commons_tests::{eventually, service_engine, service_socket, start_service_agent};
use http_body_util::{BodyExt, Full};

/// Measures the latency the pool's path adds to a service, and OCR throughput with one and two agents.
#[derive(Debug, Parser)]
struct Cli {
    /// Requests per path in the latency measurement.
    #[arg(long, default_value_t = 300)]
    requests: usize,
    /// Requests in flight in the throughput measurement.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Seconds of each throughput measurement.
    #[arg(long, default_value_t = 10)]
    secs: u64,
}

fn summary(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    (pct(&ms, 0.5), pct(&ms, 0.99))
}

/// One request over the container's unix socket (a new connection each time, as the gateway makes).
async fn direct(socket: &Path, method: &str, path: &str, body: &[u8]) -> Result<u16> {
    let io = tokio::net::UnixStream::connect(socket).await?;
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(Full::new(bytes::Bytes::copy_from_slice(body)))?;
    let resp = commons_server::forward::request(io, req).await?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}

async fn via_edge(
    client: &reqwest::Client,
    edge: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<u16> {
    let url = format!("{edge}/api/service/ocr{path}");
    let r = match method {
        "GET" => client.get(url).send().await?,
        _ => client.post(url).body(body.to_vec()).send().await?,
    };
    let status = r.status().as_u16();
    r.bytes().await?;
    Ok(status)
}

async fn throughput(client: &reqwest::Client, edge: &str, png: &[u8], cli: &Cli) -> (f64, usize) {
    let until = Instant::now() + Duration::from_secs(cli.secs);
    let mut tasks = Vec::new();
    for _ in 0..cli.clients {
        let (client, edge, png) = (client.clone(), edge.to_owned(), png.to_vec());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, 0usize);
            while Instant::now() < until {
                match via_edge(&client, &edge, "POST", "/ocr", &png).await {
                    Ok(200) => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    let (mut ok, mut failed) = (0, 0);
    for t in tasks {
        let (o, f) = t.await.unwrap_or((0, 0));
        ok += o;
        failed += f;
    }
    (ok as f64 / cli.secs as f64, failed)
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let client = reqwest::Client::new();
    let (edge, coordinator) = commons_tests::ocr_pool(&client, 2).await;
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let pid = std::process::id();
    let instances = [format!("bench-a-{pid}"), format!("bench-b-{pid}")];
    let a = start_service_agent(&edge.url(), &instances[0], dirs[0].path()).await;
    let png = commons_ocr::sample::png_of(&commons_ocr::sample::pdf_with_text(&["Commons"]))
        .context("pdftoppm (poppler-utils)")?;
    let doc = commons_ocr::sample::png_of(&commons_ocr::sample::pdf_with_text(&[
        "Volunteers answer",
        "this request, line by line,",
        "on donated machines.",
    ]))?;
    let ready = eventually(60, || async {
        matches!(
            via_edge(&client, &edge.url(), "GET", "/health", b"").await,
            Ok(200)
        )
    })
    .await;
    if !ready {
        bail!("the ocr service did not become reachable through the edge");
    }
    let socket = service_socket(&edge.url(), &instances[0], dirs[0].path())
        .await
        .context("the ocr container has no socket")?;

    println!(
        "1. latency, {} sequential requests per path, one agent (ms):",
        cli.requests
    );
    for (what, method, path, body) in [
        ("GET /health", "GET", "/health", &b""[..]),
        ("POST /ocr, one word", "POST", "/ocr", &png[..]),
    ] {
        let (mut d, mut e) = (Vec::new(), Vec::new());
        // Alternate, so that both paths see the same machine.
        for _ in 0..cli.requests {
            let t = Instant::now();
            let s = direct(&socket, method, path, body).await?;
            d.push(t.elapsed().as_secs_f64() * 1000.0);
            let t = Instant::now();
            let s2 = via_edge(&client, &edge.url(), method, path, body).await?;
            e.push(t.elapsed().as_secs_f64() * 1000.0);
            if s != 200 || s2 != 200 {
                bail!("{what}: status {s} direct, {s2} through the edge");
            }
        }
        let ((dp50, dp99), (ep50, ep99)) = (summary(d), summary(e));
        println!(
            "  {what:<22} direct p50 {dp50:.2}  p99 {dp99:.2} | via edge p50 {ep50:.2}  p99 {ep99:.2} | added p50 {:.2}  p99 {:.2}",
            ep50 - dp50,
            ep99 - dp99
        );
    }

    println!(
        "2. OCR throughput through the edge, a 3-line page, {} in flight, {} s:",
        cli.clients, cli.secs
    );
    let (one, failed_one) = throughput(&client, &edge.url(), &doc, &cli).await;
    println!("  one agent   {one:.1} requests/s ({failed_one} failed)");
    let b = start_service_agent(&edge.url(), &instances[1], dirs[1].path()).await;
    let both_serve = eventually(60, || async {
        let list = coordinator.admin(&client, "/api/admin/services").await;
        list["services"][0]["healthy"] == 2
    })
    .await;
    if !both_serve {
        bail!("the second agent's container did not turn healthy");
    }
    let (two, failed_two) = throughput(&client, &edge.url(), &doc, &cli).await;
    println!(
        "  two agents  {two:.1} requests/s ({failed_two} failed): {:.2}x (on this machine's {} cores, both agents share them)",
        two / one.max(0.001),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    for (h, (instance, dir)) in [a, b].into_iter().zip(instances.iter().zip(&dirs)) {
        h.send(commons_agent::agent::Command::Quit).await;
        let _ = h.join().await;
        service_engine(&edge.url(), instance, dir.path())
            .await
            .remove_all()
            .await?;
    }
    Ok(())
}
