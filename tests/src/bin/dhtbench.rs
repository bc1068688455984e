//! `commons-dhtbench`: what the DHT costs and what it saves.
//!
//! 1. A network of `--nodes` libp2p nodes in this process (loopback, TCP + noise + yamux): join time of a node
//!    into the full network, record lookup p50/p99, find-all-providers p50/p99 over the service's shards,
//!    lookups after killing 30 % of the nodes, resident memory per node.
//! 2. A simulated day (86,400 s / `--scale`) for each of `--agents`: an edge, two coordinators and the agents,
//!    all in the DHT. Agents are installed before the day (one bootstrap request each, counted apart), restart
//!    once during the day, discover services through the DHT; the edge's own per-kind counts over the day are
//!    printed.
//!
//! ```text
//! cargo run --release -p commons-tests --bin commons-dhtbench
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use commons_agent::agent::{self, AgentHandle, State};
use commons_agent::credentials::FileStore;
use commons_agent::hardware::RecordedProbe;
use commons_agent::settings::Settings;
use commons_dht::{Config, Dht, Role, generate_keypair};
use commons_shared::dht::{WorkerRecord, worker_key};
use commons_tests::figures::{Figure, Goal, distribution, record};
use commons_tests::pct;
use commons_tests::{Coordinator, Edge, catalogue_only, eventually};
use rand::seq::{IndexedRandom, SliceRandom};

/// Measures DHT lookups and bootstrap, and the edge's requests over a simulated day.
#[derive(Debug, Parser)]
struct Cli {
    /// Nodes in the lookup network.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Lookups measured.
    #[arg(long, default_value_t = 1000)]
    lookups: usize,
    /// A day lasts 86,400 s / scale.
    #[arg(long, default_value_t = 1440)]
    scale: u64,
    /// Agent counts to simulate a day with.
    #[arg(long, value_delimiter = ',', default_value = "20,200")]
    agents: Vec<usize>,
    /// Skip the network measurements.
    #[arg(long)]
    day_only: bool,
    /// Seconds between the nodes publishing their records and the first lookup.
    #[arg(long, default_value_t = 3)]
    settle_secs: u64,
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0)
        / 1024.0
}

async fn node() -> Result<Dht> {
    let mut c = Config::new(generate_keypair(), Role::Agent);
    c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
    c.query_timeout = Duration::from_secs(5);
    Ok(Dht::start(c).await?)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn network(cli: &Cli) -> Result<()> {
    let before = rss_mib();
    let mut nodes = vec![node().await?];
    let mut seeds = nodes[0].addresses();
    let mut joins = Vec::new();
    while nodes.len() < cli.nodes {
        let batch = if nodes.len() < 5 {
            1
        } else {
            8.min(cli.nodes - nodes.len())
        };
        let mut fresh = Vec::new();
        for _ in 0..batch {
            fresh.push(node().await?);
        }
        let took = futures::future::join_all(fresh.iter().map(|d| d.bootstrap(&seeds))).await;
        for t in took {
            joins.push(ms(t?));
        }
        if nodes.len() < 5 {
            seeds.extend(fresh.iter().flat_map(Dht::addresses));
        }
        nodes.extend(fresh);
    }
    for (i, d) in nodes.iter().enumerate() {
        let services = if i % 2 == 0 {
            vec!["ocr".into(), "llm".into()]
        } else {
            vec!["ocr".into()]
        };
        d.publish_worker(WorkerRecord {
            services,
            endpoint: Some(format!("http://127.0.0.1:{}/", 10_000 + i)),
            ..Default::default()
        })
        .await?;
    }
    tokio::time::sleep(Duration::from_secs(cli.settle_secs)).await;
    let per_node = (rss_mib() - before) / cli.nodes as f64;

    // One more node joining the full network, ten times.
    let mut one = Vec::new();
    for _ in 0..10 {
        let d = node().await?;
        let seed: Vec<_> = nodes
            .choose_multiple(&mut rand::rng(), 3)
            .flat_map(Dht::addresses)
            .collect();
        one.push(ms(d.bootstrap(&seed).await?));
        d.shutdown().await;
    }
    one.sort_by(f64::total_cmp);

    let mut rng = rand::rng();
    let mut lookups = Vec::new();
    let mut hits = 0;
    for _ in 0..cli.lookups {
        let from = nodes.choose(&mut rng).unwrap();
        let target = nodes.choose(&mut rng).unwrap().peer_id();
        let t = Instant::now();
        hits += usize::from(from.get(&worker_key(&target.to_base58())).await.is_some());
        lookups.push(ms(t.elapsed()));
    }
    lookups.sort_by(f64::total_cmp);
    let mut finds = Vec::new();
    let mut found = 0;
    for _ in 0..50 {
        let from = nodes.choose(&mut rng).unwrap();
        let t = Instant::now();
        found = from.service_providers("ocr").await.len();
        finds.push(ms(t.elapsed()));
    }
    finds.sort_by(f64::total_cmp);
    joins.sort_by(f64::total_cmp);

    println!(
        "DHT network: {} nodes in one process (loopback, tcp+noise+yamux, k = 20)",
        cli.nodes
    );
    println!(
        "  join while the network forms   p50 {:.1} ms  p99 {:.1} ms",
        pct(&joins, 0.5),
        pct(&joins, 0.99)
    );
    println!(
        "  one node joining the full net  p50 {:.1} ms  max {:.1} ms",
        pct(&one, 0.5),
        pct(&one, 1.0)
    );
    println!(
        "  record lookup                  p50 {:.2} ms  p99 {:.2} ms  ({hits}/{} found)",
        pct(&lookups, 0.5),
        pct(&lookups, 0.99),
        cli.lookups
    );
    println!(
        "  all providers of a service     p50 {:.2} ms  p99 {:.2} ms  ({found} of {} over 16 shards)",
        pct(&finds, 0.5),
        pct(&finds, 0.99),
        cli.nodes
    );
    println!(
        "  resident memory per node       {per_node:.2} MiB (both ends of every connection in one process)"
    );

    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.shuffle(&mut rng);
    let (dead, alive) = order.split_at(nodes.len() * 3 / 10);
    for &i in dead {
        nodes[i].shutdown().await;
    }
    let mut after = Vec::new();
    let mut ok = 0;
    for _ in 0..cli.lookups {
        let from = &nodes[*alive.choose(&mut rng).unwrap()];
        let target = nodes[*alive.choose(&mut rng).unwrap()].peer_id();
        let t = Instant::now();
        ok += usize::from(from.get(&worker_key(&target.to_base58())).await.is_some());
        after.push(ms(t.elapsed()));
    }
    after.sort_by(f64::total_cmp);
    println!(
        "  after killing 30 %             {ok}/{} lookups of live workers succeeded ({:.1} %), p50 {:.2} ms  p99 {:.2} ms",
        cli.lookups,
        100.0 * ok as f64 / cli.lookups as f64,
        pct(&after, 0.5),
        pct(&after, 0.99)
    );
    let n = cli.nodes;
    record(&[
        Figure::new(
            "dht",
            format!("record lookup p99, {n} nodes"),
            "ms",
            pct(&lookups, 0.99),
        )
        .points("percentile", distribution(|q| pct(&lookups, q))),
        Figure::new(
            "dht",
            format!("lookup p99 after 30 % of {n} nodes died"),
            "ms",
            pct(&after, 0.99),
        )
        .points("percentile", distribution(|q| pct(&after, q))),
        Figure::new(
            "dht",
            format!("lookups that succeed after 30 % of {n} nodes died"),
            "%",
            100.0 * ok as f64 / cli.lookups as f64,
        )
        .goal(Goal::AtLeast(99.0)),
    ]);
    for n in &nodes {
        n.shutdown().await;
    }
    Ok(())
}

fn no_gpu() -> Arc<RecordedProbe> {
    Arc::new(RecordedProbe(Err(commons_agent::hardware::NoGpu(
        "no GPU in the simulation".into(),
    ))))
}

fn agent_settings(edge: &str, dir: &std::path::Path, i: usize) -> Settings {
    Settings {
        edge_url: edge.into(),
        containers: false,
        instance: format!("a{i}"),
        dht: true,
        dht_listen: "/ip4/127.0.0.1/tcp/0".into(),
        // Volunteers behind NAT take part as DHT clients; the coordinators serve.
        dht_server: false,
        dht_stagger_ms: 200,
        dht_seed_cache: Some(dir.join(format!("seeds-{i}.json"))),
        catalogue_keys: vec![commons_tests::test_catalogue_key().1.clone()],
        ..Settings::default()
    }
}

fn diff(a: &HashMap<String, u64>, b: &HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut out: Vec<_> = [
        "bootstrap",
        "registration",
        "service",
        "federation",
        "other",
    ]
    .iter()
    .map(|k| {
        (
            k.to_string(),
            b.get(*k).unwrap_or(&0) - a.get(*k).unwrap_or(&0),
        )
    })
    .collect();
    out.retain(|(_, v)| *v > 0);
    out
}

async fn day(cli: &Cli, n: usize) -> Result<()> {
    let client = reqwest::Client::new();
    let day = Duration::from_secs(86_400 / cli.scale);
    let scaled = |secs: u64| (secs * 1000 / cli.scale).max(10);
    let edge = Edge::start(|c| {
        c.dht_heartbeat_interval_secs = (6 * 3600 / cli.scale).max(1);
        c.dht_coordinator_ttl_secs = (25 * 3600 / cli.scale).max(2);
    })
    .await;
    let tune = |c: &mut commons_coordinator::Config, dir: &std::path::Path| {
        c.dht = true;
        c.dht_listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
        c.catalogue = Some(catalogue_only(dir, &[("ocr", 1000)]));
    };
    let k1 = edge.federation_key(&client, "one").await;
    let c1 = Coordinator::federated(&edge, &k1, scaled(60), tune).await;
    eventually(10, || async { edge.coordinator_count(&client).await == 1 }).await;
    let k2 = edge.federation_key(&client, "two").await;
    let c2 = Coordinator::federated(&edge, &k2, scaled(60), tune).await;
    eventually(10, || async { edge.coordinator_count(&client).await == 2 }).await;

    // Installation, before the day.
    let installed = edge.request_counts(&client).await;
    let dir = tempfile::tempdir()?;
    let start = |i: usize| {
        let creds = Arc::new(FileStore::new(dir.path().join(format!("creds-{i}.json"))));
        agent::start(agent_settings(&edge.url(), dir.path(), i), creds, no_gpu())
    };
    let mut agents: Vec<AgentHandle> = (0..n).map(start).collect();
    for a in &mut agents {
        a.wait_for(Duration::from_secs(60), |s| *s == State::Active)
            .await;
    }
    let at_start = edge.request_counts(&client).await;

    // The day: every agent restarts once, at a random time; discoveries go through the DHT.
    let t0 = Instant::now();
    let mut restarts: Vec<Duration> = (0..n)
        .map(|_| day.mul_f64(rand::random_range(0.05..0.9)))
        .collect();
    restarts.sort();
    let mut next = 0;
    let mut discoveries = 0;
    let mut direct = 0;
    while t0.elapsed() < day {
        while next < n && t0.elapsed() >= restarts[next] {
            let i = rand::random_range(0..n);
            let old = std::mem::replace(&mut agents[i], start(i));
            // A crash or reboot: nothing unregistered; credentials and seeds are kept.
            old.abort().await;
            next += 1;
        }
        let a = &agents[rand::random_range(0..n)];
        if let Some(d) = a.dht() {
            let url = a.session.borrow().coordinator_url.clone();
            if let commons_agent::dht::Route::Direct { .. } =
                commons_agent::dht::find_worker(Some(&d), &url, "ocr").await
            {
                direct += 1;
            }
            discoveries += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at_end = edge.request_counts(&client).await;
    let active = agents
        .iter()
        .filter(|a| *a.state.borrow() == State::Active)
        .count();
    println!(
        "Simulated day with {n} agents (1 day = {} s, scale {}): {n} restarts, {discoveries} DHT discoveries ({direct} found a worker)",
        day.as_secs(),
        cli.scale
    );
    println!(
        "  installation (before the day): {:?}",
        diff(&installed, &at_start)
    );
    let during = diff(&at_start, &at_end);
    println!(
        "  edge requests during the day: {} {during:?}; {active}/{n} agents active at the end",
        during.iter().map(|(_, v)| v).sum::<u64>()
    );
    record(&[Figure::new(
        "dht",
        format!("edge requests in a simulated day, {n} agents"),
        "",
        during.iter().map(|(_, v)| *v).sum::<u64>() as f64,
    )]);
    for a in agents {
        a.abort().await;
    }
    c1.server.abort().await;
    c2.server.abort().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if !cli.day_only {
        network(&cli).await?;
    }
    for &n in &cli.agents {
        day(&cli, n).await?;
    }
    Ok(())
}
