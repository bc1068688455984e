//! `commons-updatebench`: how long a signed self-update of the headless agent takes, step by step, and how long the
//! volunteer's worker is not donating meanwhile. Real parts: a coordinator on loopback offering 0.1.1 signed with
//! `minisign`, the agent build 0.1.0 updating itself to it.
//!
//! `cargo xtask update-fixtures && cargo run -p commons-tests --bin commons-updatebench [-- <runs>]`
//! (what is timed runs in the agent builds, the fixtures' stripped debug builds; this program only watches).

use std::time::{Duration, Instant};

use commons_tests::figures::{Figure, record};
use commons_tests::update::{Volunteer, coordinator_offering_0_1_1, fixtures};

/// Log lines that mark the steps, in order.
const MARKS: [&str; 5] = [
    "an update is available",
    "update verified; handing over",
    "installed; trying the new version",
    "the new version is healthy",
    "updated from=0.1.0 to=0.1.1",
];

async fn until(v: &Volunteer, f: impl Fn(&str) -> bool) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if f(&v.log()) {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "the update stalled:\n{}",
            v.log()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let size = std::fs::metadata(fixtures().join("commons-agent-0.1.1"))
        .unwrap()
        .len();
    let mut steps: Vec<Vec<Duration>> = vec![Vec::new(); 6];
    for _ in 0..runs {
        let c = coordinator_offering_0_1_1().await;
        let v = Volunteer::start("0.1.0", &c);
        let mut at = Vec::new();
        for m in MARKS {
            at.push(until(&v, |log| log.contains(m)).await);
        }
        // Donating again: the restarted agent's first "active" (the old one printed the first).
        at.push(until(&v, |log| log.matches(r#""state":"active""#).count() >= 2).await);
        for (i, pair) in at.windows(2).enumerate() {
            steps[i].push(pair[1] - pair[0]);
        }
        // The whole time not donating: from the handover to donating again.
        steps[5].push(at[5] - at[1]);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let download = median(steps[0].clone());
    println!(
        "self-update of the headless agent, {runs} runs, artifact {:.1} MiB, no containers (medians; the log is read every 2 ms):",
        size as f64 / 1048576.0
    );
    println!(
        "  download + SHA-256 + signature check  {:8.1} ms  ({:.0} MiB/s)",
        ms(download),
        size as f64 / 1048576.0 / download.as_secs_f64()
    );
    println!(
        "  handover (containers stopped)         {:8.1} ms",
        ms(median(steps[1].clone()))
    );
    println!(
        "  trial (start, resume, heartbeat)      {:8.1} ms",
        ms(median(steps[2].clone()))
    );
    println!(
        "  exec of the new version               {:8.1} ms",
        ms(median(steps[3].clone()))
    );
    println!(
        "  new version donating again            {:8.1} ms",
        ms(median(steps[4].clone()))
    );
    println!(
        "  not donating in all                   {:8.1} ms",
        ms(median(steps[5].clone()))
    );
    let names = [
        "download, SHA-256 and signature check",
        "handover",
        "trial of the new version",
        "exec of the new version",
        "the new version donating again",
        "not donating in all",
    ];
    let figures: Vec<Figure> = names
        .iter()
        .zip(&steps)
        .map(|(name, d)| Figure::new("update", *name, "ms", ms(median(d.clone()))))
        .chain([Figure::new(
            "update",
            "download, SHA-256 and signature check, speed",
            "MiB/s",
            size as f64 / 1048576.0 / download.as_secs_f64(),
        )])
        .collect();
    record(&figures);
}
