//! `commons-llmbench`: what the pool's path adds to the time to first token, and how fast a model arrives.
//!
//! 1. Time to first token: the same streaming chat completion (one token) straight to the llm container's socket,
//!    and through edge → coordinator → agent gateway → socket; p50 and p99 of each and what the path adds. An edge,
//!    a coordinator registered with it and one agent (in process) run the llm image `cargo xtask images` built, on
//!    a real engine, serving the tests' tiny model (downloaded by the agent from a loopback server).
//! 2. Download and verify speed of the model cache: a `--model-mib` file from a loopback HTTP server into an empty
//!    cache, its SHA-256 checked as it arrives, then the same file already cached (a size check).
//!
//! ```text
//! .ci/engine.sh && export DOCKER_HOST=unix:///tmp/commons-engine/engine.sock
//! source .ci/setup   # the tests' Python (gguf) for the tiny model
//! cargo xtask images --registry 127.0.0.1:5000
//! cargo run --release -p commons-tests --bin commons-llmbench
//! ```

use std::path::Path;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Parser;
use commons_agent::models::ModelCache;
use commons_shared::api::ModelArtifact;
use commons_tests::{
    FileServer, eventually, llm_service, operator_catalogue, pct, pool, service_engine,
    service_socket, start_service_agent, tiny_model,
};
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use sha2::Digest;

/// Measures the time to first token the pool's path adds, and the model cache's download and verify speed.
#[derive(Debug, Parser)]
struct Cli {
    /// Streaming requests per path.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Size of the model file downloaded, MiB.
    #[arg(long, default_value_t = 512)]
    model_mib: usize,
}

const CHAT: &str = r#"{"model":"tiny","stream":true,"max_tokens":1,"messages":[{"role":"user","content":"hello"}]}"#;

fn summary(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    (pct(&ms, 0.5), pct(&ms, 0.99))
}

/// Milliseconds to the first chunk of the answer, straight over the container's socket (a new connection each
/// time, as the gateway makes); the rest is read to the end.
async fn direct(socket: &Path) -> Result<f64> {
    let t = Instant::now();
    let io = tokio::net::UnixStream::connect(socket).await?;
    let req = hyper::Request::post("/v1/chat/completions")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from_static(CHAT.as_bytes())))?;
    let resp = commons_server::forward::request(io, req).await?;
    if resp.status() != 200 {
        bail!("direct: status {}", resp.status());
    }
    let mut body = resp.into_body();
    let first = body.frame().await;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if first.is_none() {
        bail!("direct: an empty answer");
    }
    while body.frame().await.is_some() {}
    Ok(ms)
}

/// The same through the edge.
async fn via_edge(client: &reqwest::Client, edge: &str) -> Result<f64> {
    let t = Instant::now();
    let r = client
        .post(format!("{edge}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(CHAT)
        .send()
        .await?;
    if r.status() != 200 {
        bail!("via the edge: status {}", r.status());
    }
    let mut stream = r.bytes_stream();
    let first = stream.next().await;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if first.is_none() {
        bail!("via the edge: an empty answer");
    }
    while stream.next().await.is_some() {}
    Ok(ms)
}

async fn download(cli: &Cli) -> Result<()> {
    let files = FileServer::start().await;
    let size = cli.model_mib << 20;
    let data: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_mul(131)).collect();
    let m = ModelArtifact {
        name: "bench.gguf".into(),
        sha256: hex::encode(sha2::Sha256::digest(&data)),
        size: size as u64,
        url: files.put("bench.gguf", data),
    };
    let dir = tempfile::tempdir()?;
    let cache = ModelCache::new(dir.path().to_owned(), (size as u64) * 2);
    let t = Instant::now();
    cache.ensure(std::slice::from_ref(&m), &[], None).await?;
    let fetched = t.elapsed();
    let t = Instant::now();
    cache.ensure(std::slice::from_ref(&m), &[], None).await?;
    let cached = t.elapsed();
    println!(
        "2. model cache, a {} MiB file from loopback HTTP: downloaded and verified in {:.2} s ({:.0} MiB/s); already cached: {:.2} ms",
        cli.model_mib,
        fetched.as_secs_f64(),
        cli.model_mib as f64 / fetched.as_secs_f64(),
        cached.as_secs_f64() * 1000.0
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let client = reqwest::Client::new();
    let files = FileServer::start().await;
    let (path, sha, size) = tiny_model();
    let url = files.put("tiny.gguf", std::fs::read(path)?);
    let (edge, _coordinator) = pool(&client, |dir| {
        operator_catalogue(dir, &llm_service(&url, sha, *size, 1))
    })
    .await;
    let dir = tempfile::tempdir()?;
    let instance = format!("llmbench-{}", std::process::id());
    let agent = start_service_agent(&edge.url(), &instance, dir.path()).await;
    let ready = eventually(90, || async {
        via_edge(&client, &edge.url()).await.is_ok()
    })
    .await;
    if !ready {
        bail!("the llm service did not become reachable through the edge");
    }
    let Some(socket) = service_socket(&edge.url(), &instance, dir.path()).await else {
        bail!("the llm container has no socket");
    };
    let (mut d, mut e) = (Vec::new(), Vec::new());
    // Alternate, so that both paths see the same machine.
    for _ in 0..cli.requests {
        d.push(direct(&socket).await?);
        e.push(via_edge(&client, &edge.url()).await?);
    }
    let ((dp50, dp99), (ep50, ep99)) = (summary(d), summary(e));
    println!(
        "1. time to first token, {} streaming chat requests per path (ms): direct p50 {dp50:.2}  p99 {dp99:.2} | via edge p50 {ep50:.2}  p99 {ep99:.2} | added p50 {:.2}  p99 {:.2}",
        cli.requests,
        ep50 - dp50,
        ep99 - dp99
    );
    agent.send(commons_agent::agent::Command::Quit).await;
    let _ = agent.join().await;
    service_engine(&edge.url(), &instance, dir.path())
        .await
        .remove_all()
        .await?;
    download(&cli).await?;
    Ok(())
}
