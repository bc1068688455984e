//! `commons-agentbench`: the volunteer agent's figures.
//!
//! - registration to Active, with a container whose image is present (needs DOCKER_HOST; `--no-containers` to skip);
//! - the agent process's RSS when idle and its CPU use while active with no requests (the real `commons-agent`
//!   binary, from next to this one);
//! - failover time: a coordinator dies, the agent is active on another through the edge.
//!
//! ```text
//! cargo build --release -p commons-agent -p commons-tests && .ci/engine.sh
//! DOCKER_HOST=unix:///tmp/commons-engine/engine.sock target/release/commons-agentbench
//! ```

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use commons_agent::agent::{self, State};
use commons_agent::credentials::FileStore;
use commons_agent::settings::Settings;
use commons_tests::figures::{Figure, Goal, record};
use commons_tests::{Coordinator, Edge, eventually};

/// Measures the agent.
#[derive(Debug, Parser)]
struct Cli {
    /// Seconds of idle measurement (RSS and CPU).
    #[arg(long, default_value_t = 20)]
    idle_secs: u64,
    /// Skip containers (no engine).
    #[arg(long)]
    no_containers: bool,
    /// Run the agent (and the coordinator) without the DHT.
    #[arg(long)]
    no_dht: bool,
}

fn proc_stat(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks, rss_kib))
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let bin = std::env::current_exe()?.with_file_name("commons-agent");
    if !bin.exists() {
        bail!(
            "no agent binary at {}; build it with `cargo build --release -p commons-agent`",
            bin.display()
        );
    }
    let c = Coordinator::start(|cfg, dir| {
        cfg.catalogue = Some(commons_tests::tiny_catalogue(
            dir,
            "tiny",
            "127.0.0.1:5000/tiny:1",
            r#"["sleep", "3600"]"#,
        ));
        // The agent joins the DHT through the seeds in the coordinator's registration answer.
        cfg.dht = !cli.no_dht;
    })
    .await;
    let dir = tempfile::tempdir()?;
    let sock = dir.path().join("agent.sock");
    std::fs::write(
        dir.path().join("agent.toml"),
        format!(
            "containers = {}\nallowed_images = [\"127.0.0.1:5000/\"]\nmemory_mb = 64\ninstance = \"bench\"\n\
             dht = {}\ndht_listen = \"/ip4/127.0.0.1/tcp/0\"\ndht_stagger_ms = 0\ndht_seed_cache = {:?}\n\
             catalogue_keys = [{:?}]\n",
            !cli.no_containers,
            !cli.no_dht,
            dir.path().join("seeds.json"),
            commons_tests::test_catalogue_key().1,
        ),
    )?;
    let started = Instant::now();
    let mut child = Command::new(&bin)
        .arg("--config")
        .arg(dir.path().join("agent.toml"))
        .arg("--credentials-file")
        .arg(dir.path().join("creds.json"))
        .arg("--control-socket")
        .arg(&sock)
        .args(["run", "--coordinator", &c.url()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start the agent")?;
    let pid = child.id();
    let mut active = None;
    while started.elapsed() < Duration::from_secs(30) {
        if let Ok(v) = commons_agent::control::call(&sock, "GET", "/status").await
            && v["state"]["state"] == "active"
        {
            active = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let active = active.context("the agent never became active")?;
    println!(
        "registration to Active ({}): {:.0} ms (goal < 2000 ms)",
        if cli.no_containers {
            "no containers"
        } else {
            "one container, image present"
        },
        active.as_secs_f64() * 1000.0
    );
    // Let start-up settle, then measure an idle, active agent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (t0, _) = proc_stat(pid).context("/proc")?;
    let w0 = Instant::now();
    let mut peak = 0;
    while w0.elapsed() < Duration::from_secs(cli.idle_secs) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(proc_stat(pid).map_or(0, |s| s.1));
    }
    let (t1, rss) = proc_stat(pid).context("/proc")?;
    let hz = 100.0; // USER_HZ on Linux
    let cpu = (t1 - t0) as f64 / hz / w0.elapsed().as_secs_f64() * 100.0;
    println!(
        "idle agent over {} s: RSS {:.1} MiB (peak {:.1} MiB; goal <= 20 MB), CPU {:.2} % of one core (goal <= 0.5 %)",
        cli.idle_secs,
        rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        cpu
    );
    commons_agent::control::call(&sock, "POST", "/quit").await?;
    let status = child.wait()?;
    println!("quit: exit {:?}", status.code());

    // Failover, in process: edge + two coordinators, default agent settings.
    let client = reqwest::Client::new();
    let edge = Edge::start(|_| {}).await;
    let key = edge.federation_key(&client, "bench").await;
    let mut coords = Vec::new();
    for _ in 0..2 {
        coords.push(Coordinator::federated(&edge, &key, 500, |_, _| {}).await);
    }
    anyhow::ensure!(eventually(10, || async { edge.coordinator_count(&client).await == 2 }).await);
    let settings = Settings {
        edge_url: edge.url(),
        containers: false,
        dht: false,
        ..Settings::default()
    };
    let probe = Arc::new(commons_agent::hardware::RecordedProbe(Err(
        commons_agent::hardware::NoGpu("bench".into()),
    )));
    let mut times = Vec::new();
    let mut a = agent::start(
        settings,
        Arc::new(FileStore::new(dir.path().join("f.json"))),
        probe,
    );
    a.wait_for(Duration::from_secs(10), |s| *s == State::Active)
        .await
        .context("active")?;
    let first = a.session.borrow().coordinator_url.clone();
    let i = coords
        .iter()
        .position(|c| c.url() == first)
        .context("joined one of ours")?;
    let dead = coords.remove(i);
    let t = Instant::now();
    dead.server.abort().await;
    let mut s = a.session.clone();
    tokio::time::timeout(
        Duration::from_secs(30),
        s.wait_for(|s| s.coordinator_url != first),
    )
    .await??;
    a.wait_for(Duration::from_secs(10), |s| *s == State::Active)
        .await
        .context("active again")?;
    times.push(t.elapsed());
    println!(
        "failover (default settings: probe every 3 s): active on another coordinator after {:.2} s (goal < 10 s)",
        times[0].as_secs_f64()
    );
    let containers = if cli.no_containers {
        "no containers"
    } else {
        "one container"
    };
    record(&[
        Figure::new(
            "agent",
            format!("registration to Active ({containers})"),
            "ms",
            active.as_secs_f64() * 1000.0,
        )
        .goal(Goal::AtMost(2000.0)),
        Figure::new(
            "agent",
            format!("idle agent RSS ({containers})"),
            "MiB",
            rss as f64 / 1024.0,
        )
        .goal(Goal::AtMost(20.0 * 1e6 / f64::from(1 << 20))),
        Figure::new("agent", "idle agent CPU", "% of a core", cpu).goal(Goal::AtMost(0.5)),
        Figure::new(
            "agent",
            "failover to another coordinator",
            "s",
            times[0].as_secs_f64(),
        )
        .goal(Goal::AtMost(10.0)),
    ]);
    a.send(agent::Command::Quit).await;
    a.join().await?;
    Ok(())
}
