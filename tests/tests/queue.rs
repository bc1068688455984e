//! The fair queue of a service whose workers are all busy, through a real coordinator to workers' HTTP servers on
//! loopback that take their time: two keys of equal priority under overload get even shares; a queued request whose
//! client goes away leaves the queue; a full queue answers 429 with `Retry-After`; a request that waited says how
//! long.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use commons_tests::{
    Coordinator, WorkerServer, eventually, heartbeat, operator_catalogue, register,
};
use serde_json::{Value, json};

/// A coordinator with keys required, one service `slow` whose workers serve `concurrency` requests each, a queue
/// of `queue_length`, and one worker.
async fn setup(concurrency: u32, queue_length: usize) -> (Coordinator, WorkerServer) {
    let c = Coordinator::start(move |cfg, dir| {
        cfg.anonymous_access = false;
        cfg.queue_length = queue_length;
        cfg.catalogue = Some(operator_catalogue(
            dir,
            &format!(
                "[[service]]\nname = \"slow\"\nimage = \"example/slow:1\"\nport = 9000\nmin_ram = \"1GB\"\n\
                 replicas = 1\nconcurrency = {concurrency}\n"
            ),
        ));
    })
    .await;
    let client = reqwest::Client::new();
    let worker = WorkerServer::start("w").await;
    let w = register(&client, &c.url(), &worker.url()).await;
    heartbeat(&client, &c.url(), &w, "healthy", 0.1).await;
    (c, worker)
}

async fn key(client: &reqwest::Client, c: &Coordinator, name: &str) -> String {
    let made = c
        .api_key(client, json!({"name": name, "rate_per_minute": 1_000_000}))
        .await;
    made["key"].as_str().unwrap().to_owned()
}

fn ask(
    client: &reqwest::Client,
    c: &Coordinator,
    key: &str,
    delay_ms: u64,
) -> reqwest::RequestBuilder {
    client
        .get(format!("{}/api/service/slow/work", c.url()))
        .bearer_auth(key)
        .header("x-echo-delay-ms", delay_ms.to_string())
}

async fn queued(client: &reqwest::Client, c: &Coordinator) -> u64 {
    let list = c.admin(client, "/api/admin/services").await;
    list["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "slow"))
        .and_then(|s| s["queued"].as_u64())
        .unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_keys_under_overload_get_even_shares() {
    let (c, _worker) = setup(2, 256).await;
    let client = reqwest::Client::new();
    let keys = [key(&client, &c, "a").await, key(&client, &c, "b").await];
    let done = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    let waits = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    // Key a has eight clients, key b three: a heavy consumer and a light one, both always waiting.
    for (k, n) in [(0, 8), (1, 3)] {
        for _ in 0..n {
            let (client, key, done, waits, stop) = (
                client.clone(),
                keys[k].clone(),
                done[k].clone(),
                waits.clone(),
                stop.clone(),
            );
            let url = c.url();
            clients.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = client
                        .get(format!("{url}/api/service/slow/work"))
                        .bearer_auth(&key)
                        .header("x-echo-delay-ms", "20")
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    let waited = r
                        .headers()
                        .get("x-commons-queued-ms")
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                        .unwrap_or(0);
                    r.bytes().await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                    waits.lock().push(waited);
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.await.unwrap();
    }
    let (a, b) = (
        done[0].load(Ordering::Relaxed),
        done[1].load(Ordering::Relaxed),
    );
    let share = a as f64 / (a + b) as f64;
    let mut waits = waits.lock().clone();
    waits.sort_unstable();
    let p99 = waits[waits.len() * 99 / 100];
    println!(
        "queue: key a (8 clients) {a}, key b (3 clients) {b}: a's share {:.1} %; p99 wait {p99} ms",
        100.0 * share
    );
    assert!(a + b > 100, "{a} + {b}");
    // Even within 10 % of each half, though a has more than twice b's clients.
    assert!((0.45..=0.55).contains(&share), "a {a}, b {b}");
    // Every request was answered (none waited past the queue's patience); the wait is a figure, printed above.
    assert_eq!(waits.len() as u64, a + b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_whose_client_goes_away_leaves_the_queue() {
    let (c, worker) = setup(1, 1).await;
    let client = reqwest::Client::new();
    let k = key(&client, &c, "k").await;
    // One request holds the only slot for a while.
    let busy = tokio::spawn(ask(&client, &c, &k, 1500).send());
    assert!(
        eventually(5, || async {
            worker.seen.requests.load(Ordering::Relaxed) == 1
        })
        .await
    );
    // A second waits, then its client gives up.
    let gone = tokio::spawn(ask(&client, &c, &k, 0).send());
    assert!(
        eventually(5, || async { queued(&client, &c).await == 1 }).await,
        "it waits"
    );
    // The queue holds one: a third is refused with when to come back.
    let r = ask(&client, &c, &k, 0).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    gone.abort();
    assert!(
        eventually(5, || async { queued(&client, &c).await == 0 }).await,
        "it left"
    );
    // The next one waits its turn and says how long; the one that left never reached the worker.
    let started = Instant::now();
    let r = ask(&client, &c, &k, 0).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let waited: u64 = r.headers()["x-commons-queued-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        waited > 0 && u128::from(waited) <= started.elapsed().as_millis() + 5,
        "{waited}"
    );
    assert_eq!(busy.await.unwrap().unwrap().status(), 200);
    assert_eq!(worker.seen.requests.load(Ordering::Relaxed), 2);
}
