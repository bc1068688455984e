//! Real libp2p nodes on loopback: records, providers, validation, and a 100-node network under churn.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use commons_dht::{Config, Dht, Keypair, Multiaddr, Role, generate_keypair, now_ms, record};
use commons_shared::dht::{NodeRole, RecordBody, RecordPayload, WorkerRecord, worker_key};
use rand::seq::{IndexedRandom, SliceRandom};

fn config(key: Keypair, server: bool, refresh: Duration) -> Config {
    let mut c = Config::new(key, Role::Agent);
    c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    c.server = server;
    c.refresh = refresh;
    c.query_timeout = Duration::from_secs(5);
    c
}

async fn node(server: bool, refresh: Duration) -> (Dht, Keypair) {
    let key = generate_keypair();
    (
        Dht::start(config(key.clone(), server, refresh))
            .await
            .unwrap(),
        key,
    )
}

fn worker(services: &[&str]) -> WorkerRecord {
    WorkerRecord {
        services: services.iter().map(|s| s.to_string()).collect(),
        endpoint: Some("http://127.0.0.1:9/".into()),
        load: 0.25,
        cpu_cores: 8,
        ..Default::default()
    }
}

/// Polls `f` until it returns `Some`, at most `secs` seconds.
async fn until<T, F: std::future::Future<Output = Option<T>>>(
    secs: u64,
    mut f: impl FnMut() -> F,
) -> Option<T> {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if let Some(v) = f().await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_put_get_and_find_providers() {
    let refresh = Duration::from_secs(30);
    let (a, _) = node(true, refresh).await;
    let (b, _) = node(true, refresh).await;
    let took = b
        .bootstrap(&a.addresses())
        .await
        .expect("bootstrap through a");
    assert!(took < Duration::from_secs(5));

    let mine = worker(&["ocr", "llm"]);
    a.publish_worker(mine.clone()).await.unwrap();
    let key = worker_key(&a.peer_id().to_base58());
    let got = until(10, || b.get(&key)).await.expect("b reads a's record");
    assert_eq!(got.peer_id, a.peer_id().to_base58());
    assert_eq!(got.body, RecordBody::Worker(mine.clone()));

    let providers = until(10, || async {
        let p = b.service_providers("ocr").await;
        p.contains(&a.peer_id()).then_some(p)
    })
    .await
    .expect("a is found as an ocr provider");
    assert_eq!(providers.len(), 1);
    let found = b.find_service("llm").await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].record, mine);
    assert!(b.find_service("rag").await.is_empty());
    assert!(
        b.get("worker/12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo")
            .await
            .is_none()
    );

    // A newer publication replaces the old one everywhere.
    let mut busier = mine.clone();
    busier.load = 0.9;
    a.publish_worker(busier.clone()).await.unwrap();
    until(10, || async {
        (b.get(&key).await?.body == RecordBody::Worker(busier.clone())).then_some(())
    })
    .await
    .expect("the newer record is read");

    let snap = b.snapshot().await;
    assert_eq!(snap.stats.routing_table, 1);
    assert_eq!(snap.links[0].0, a.peer_id());
    assert_eq!(snap.links[0].1, NodeRole::Worker);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_behind_nat_are_found_through_a_server_node() {
    // Volunteers behind NAT run client-mode nodes: they store nothing and nobody routes through them, yet their
    // records and service announcements live on the server (a coordinator) and are found there.
    let refresh = Duration::from_secs(30);
    let (server, _) = node(true, refresh).await;
    let (worker_node, _) = node(false, refresh).await;
    let (client, _) = node(false, refresh).await;
    worker_node.bootstrap(&server.addresses()).await.unwrap();
    client.bootstrap(&server.addresses()).await.unwrap();
    worker_node.publish_worker(worker(&["ocr"])).await.unwrap();
    let found = until(10, || async {
        let f = client.find_service("ocr").await;
        (!f.is_empty()).then_some(f)
    })
    .await
    .expect("the client-mode worker is found through the server");
    assert_eq!(found[0].peer, worker_node.peer_id());
    assert_eq!(
        server.snapshot().await.stats.routing_table,
        0,
        "clients are not in the server's routing table"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_that_reaches_nobody_is_tried_again_before_the_refresh() {
    // A refresh far longer than the test: only the retry can put the record on a peer that comes later.
    let refresh = Duration::from_secs(120);
    // Two peers that die: a's routing table still lists them, so the peer that joins later does not double it
    // (which would publish again by itself).
    let (a, _) = node(true, refresh).await;
    let (b1, _) = node(true, refresh).await;
    let (b2, _) = node(true, refresh).await;
    b2.bootstrap(&b1.addresses()).await.unwrap();
    a.bootstrap(&[b1.addresses(), b2.addresses()].concat())
        .await
        .unwrap();
    assert_eq!(a.snapshot().await.stats.routing_table, 2);
    b1.shutdown().await;
    b2.shutdown().await;
    a.publish_worker(worker(&["ocr"])).await.unwrap();
    until(15, || async {
        (a.snapshot().await.stats.publish_failures > 0).then_some(())
    })
    .await
    .expect("the put that reached nobody is counted");

    let (c, _) = node(true, refresh).await;
    c.bootstrap(&a.addresses()).await.unwrap();
    until(30, || async {
        (c.snapshot().await.stats.stored_records > 0).then_some(())
    })
    .await
    .expect("the record is put again, on the peer that joined, long before the refresh");
    let key = worker_key(&a.peer_id().to_base58());
    a.shutdown().await;
    assert_eq!(
        c.get(&key).await.map(|p| p.peer_id),
        Some(a.peer_id().to_base58()),
        "the stored copy is a's record"
    );
    let found = until(15, || async {
        let p = c.service_providers("ocr").await;
        (!p.is_empty()).then_some(p)
    })
    .await
    .expect("the announcement went out again too");
    assert!(found.contains(&a.peer_id()));
}

async fn rejected(d: &Dht) -> u64 {
    d.snapshot().await.stats.rejected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_records_are_refused_by_storers_and_readers() {
    let refresh = Duration::from_secs(30);
    let (a, a_key) = node(true, refresh).await;
    let (b, _) = node(true, refresh).await;
    let (m, m_key) = node(true, refresh).await;
    // The reader serves nothing, so it only ever sees what others hand it.
    let (r, _) = node(false, refresh).await;
    for n in [&b, &m, &r] {
        n.bootstrap(&a.addresses()).await.unwrap();
    }
    let key = worker_key(&a.peer_id().to_base58());
    let genuine = worker(&["ocr"]);
    a.publish_worker(genuine.clone()).await.unwrap();
    let first = until(10, || r.get(&key))
        .await
        .expect("the reader sees a's record");
    until(10, || async { b.get(&key).await.is_some().then_some(()) })
        .await
        .unwrap();

    // Mallory signs a record naming a's peer id: every storer refuses it.
    let forged = RecordPayload {
        peer_id: a.peer_id().to_base58(),
        seq: first.seq + 1000,
        expires_at_ms: now_ms() + 60_000,
        body: RecordBody::Worker(worker(&["ocr", "steal-everything"])),
    };
    let b_before = rejected(&b).await;
    m.put_raw(&key, record::sign(&m_key, &forged)).await;
    until(10, || async {
        (rejected(&b).await > b_before).then_some(())
    })
    .await
    .expect("b refuses the forged record");
    // The put reached a and b at the same time; a's refusal may come a moment after b's.
    until(10, || async { (rejected(&a).await > 0).then_some(()) })
        .await
        .expect("a refuses it too");
    let read = r
        .get(&key)
        .await
        .expect("the genuine record is still there");
    assert_eq!(read.seq, first.seq);
    assert_eq!(read.body, RecordBody::Worker(genuine.clone()));

    // A captured older record of a's, validly signed, replayed: storers that hold a newer one refuse it.
    let old = RecordPayload {
        seq: first.seq - 1000,
        ..first.clone()
    };
    let b_before = rejected(&b).await;
    m.put_raw(&key, record::sign(&a_key, &old)).await;
    until(10, || async {
        (rejected(&b).await > b_before).then_some(())
    })
    .await
    .expect("b refuses the replay");
    assert_eq!(b.get(&key).await.unwrap().seq, first.seq);

    // Now only Mallory is left, holding the replayed record: the reader, which saw a newer one, refuses it.
    a.shutdown().await;
    b.shutdown().await;
    let r_before = rejected(&r).await;
    // A lookup that times out on a busy machine also answers None, without having seen the replay: read until the
    // reader has met it (and refused it), never accepting it.
    until(30, || async {
        assert_eq!(
            r.get(&key).await,
            None,
            "a replay is not served as a's record"
        );
        (rejected(&r).await > r_before).then_some(())
    })
    .await
    .expect("the reader meets the replay and refuses it");

    // A reader that never saw a's record still refuses Mallory's forgery.
    m.put_raw(&key, record::sign(&m_key, &forged)).await;
    let (r2, _) = node(false, refresh).await;
    r2.bootstrap(&m.addresses()).await.unwrap();
    until(30, || async {
        assert_eq!(
            r2.get(&key).await,
            None,
            "a forgery is not served as a's record"
        );
        (rejected(&r2).await > 0).then_some(())
    })
    .await
    .expect("the new reader meets the forgery and refuses it");
}

/// Starts `n` nodes: a few seeds joined one by one, then the rest in small staggered batches. They look up with
/// the production query timeout: on a busy machine (100 nodes on two cores beside a build) a shorter one cuts
/// lookups short.
async fn network(n: usize, refresh: Duration) -> Vec<Dht> {
    let start = || async {
        let mut c = config(generate_keypair(), true, refresh);
        c.query_timeout = Config::new(generate_keypair(), Role::Agent).query_timeout;
        Dht::start(c).await.unwrap()
    };
    let mut nodes = vec![start().await];
    let mut seeds: Vec<Multiaddr> = nodes[0].addresses();
    for _ in 1..5.min(n) {
        let d = start().await;
        d.bootstrap(&seeds).await.unwrap();
        seeds.extend(d.addresses());
        nodes.push(d);
    }
    while nodes.len() < n {
        let batch = (n - nodes.len()).min(8);
        let mut joining = Vec::new();
        for _ in 0..batch {
            joining.push(start().await);
        }
        let joins = joining.iter().map(|d| d.bootstrap(&seeds));
        for r in futures::future::join_all(joins).await {
            r.unwrap();
        }
        nodes.extend(joining);
    }
    nodes
}

/// Reads with `read` until `done` holds of what it returned, a second apart, for at most `secs` seconds; the
/// last value read and how many reads it took. A lookup that times out on a busy machine returns what it had
/// found so far, so one read proves little: what must hold is that the network converges, within a bound.
async fn converges<T, F: std::future::Future<Output = T>>(
    secs: u64,
    mut read: impl FnMut() -> F,
    mut done: impl FnMut(&T) -> bool,
) -> (T, u32) {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut reads = 1;
    let mut last = read().await;
    while !done(&last) && Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        last = read().await;
        reads += 1;
    }
    (last, reads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_nodes_find_every_provider_and_drop_the_dead() {
    // Records live 20 s; a dead worker must be gone from discovery within that.
    let refresh = Duration::from_secs(10);
    let n = 100;
    let nodes = network(n, refresh).await;
    for (i, d) in nodes.iter().enumerate() {
        let services: &[&str] = if i % 2 == 0 {
            &["ocr", "llm"]
        } else {
            &["ocr"]
        };
        d.publish_worker(worker(services)).await.unwrap();
    }
    let everyone: HashSet<_> = nodes.iter().map(Dht::peer_id).collect();
    // Every node finds every one of the 100 ocr providers (5 times the 20 a key holds by default), five
    // nodes asking at a time.
    let mut ok = 0;
    let (mut most_reads, mut complete_reads) = (0, 0);
    for group in nodes.chunks(5) {
        let finds = group.iter().map(|d| {
            let everyone = &everyone;
            async move {
                let mut seen = HashSet::new();
                let mut complete = 0;
                let (_, reads) = converges(
                    90,
                    || d.service_providers("ocr"),
                    |f| {
                        complete += usize::from(f == everyone);
                        seen.extend(f.iter().copied());
                        seen == *everyone
                    },
                )
                .await;
                if seen != *everyone {
                    eprintln!(
                        "node {} found {} of {} providers in {reads} reads",
                        d.peer_id(),
                        seen.len(),
                        everyone.len()
                    );
                }
                (seen == *everyone, reads, complete)
            }
        });
        for (found, reads, complete) in futures::future::join_all(finds).await {
            ok += usize::from(found);
            most_reads = most_reads.max(reads);
            complete_reads += complete;
        }
    }
    eprintln!(
        "every provider found: {ok} of {n} nodes, at most {most_reads} reads each; {complete_reads} single reads found all"
    );
    assert_eq!(ok, n, "every node found all {n} providers");
    let llm_workers: HashSet<_> = nodes.iter().step_by(2).map(Dht::peer_id).collect();
    let mut read = HashSet::new();
    let (_, reads) = converges(
        60,
        || nodes[7].find_service("llm"),
        |f| {
            read.extend(f.iter().map(|f| f.peer));
            read == llm_workers
        },
    )
    .await;
    eprintln!("{} llm records read in {reads} reads", read.len());
    assert_eq!(read, llm_workers, "every llm worker's record is read");

    // Kill 30 % at random.
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand::rng());
    let (dead, alive) = order.split_at(n * 3 / 10);
    for &i in dead {
        nodes[i].shutdown().await;
    }
    let dead_ids: HashSet<_> = dead.iter().map(|&i| nodes[i].peer_id()).collect();
    let alive_ids: HashSet<_> = alive.iter().map(|&i| nodes[i].peer_id()).collect();

    // The dead drop out of discovery within two refresh periods: no read after that shows one (their signed
    // records have expired), and every live worker is still found.
    tokio::time::sleep(refresh * 2 + Duration::from_millis(500)).await;
    let from = &nodes[alive[0]];
    let mut seen = HashSet::new();
    let (_, reads) = converges(
        60,
        || async {
            let read: HashSet<_> = from
                .find_service("ocr")
                .await
                .into_iter()
                .map(|f| f.peer)
                .collect();
            assert!(
                read.is_disjoint(&dead_ids),
                "a dead worker is discovered two refreshes after it died"
            );
            read
        },
        |read| {
            seen.extend(read.iter().copied());
            seen == alive_ids
        },
    )
    .await;
    eprintln!("the {} live workers found in {reads} reads", seen.len());
    assert_eq!(seen, alive_ids, "exactly the live workers are discovered");

    // Lookups of live workers' records from live nodes still succeed (each may be read again, as above).
    let mut rng = rand::rng();
    let mut lookups = Vec::new();
    for _ in 0..200 {
        let from = &nodes[*alive.choose(&mut rng).unwrap()];
        let target = nodes[*alive.choose(&mut rng).unwrap()].peer_id();
        let key = worker_key(&target.to_base58());
        lookups.push(async move { converges(30, || from.get(&key), Option::is_some).await });
    }
    let results = futures::future::join_all(lookups).await;
    let hits = results.iter().filter(|(r, _)| r.is_some()).count();
    let first_time = results.iter().filter(|(_, reads)| *reads == 1).count();
    eprintln!("{hits} of 200 lookups succeeded after 30 % churn, {first_time} at the first read");
    assert_eq!(
        hits, 200,
        "{hits} of 200 lookups succeeded after 30 % churn"
    );
    let failures: u64 = futures::future::join_all(alive.iter().map(|&i| nodes[i].snapshot()))
        .await
        .iter()
        .map(|s| s.stats.publish_failures)
        .sum();
    eprintln!("publications that reached nobody and were tried again: {failures}");
}
