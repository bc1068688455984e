//! Background work: heartbeat flushing, coverage and gauges, rebalancing, history, purging.

use std::sync::atomic::Ordering;
use std::time::Duration;

use commons_shared::api::{HistoryPoint, WorkerStatus};
use commons_shared::tier::Tier;
use tokio::task::JoinHandle;
use tokio::time::{MissedTickBehavior, interval};

use crate::state::{AppState, now_ms};

/// Sets the `commons_workers{status, tier}` gauges.
pub fn update_gauges(state: &AppState) {
    let now = std::time::Instant::now();
    let mut counts = [[0u64; 3]; WorkerStatus::ALL.len()];
    for w in state.registry.all() {
        let s = w.live.lock().status(now, state.liveness);
        let si = WorkerStatus::ALL.iter().position(|x| *x == s).unwrap_or(0);
        counts[si][usize::from(w.tier.number() - 1)] += 1;
    }
    for (si, s) in WorkerStatus::ALL.iter().enumerate() {
        for t in Tier::ALL {
            metrics::gauge!("commons_workers", "status" => s.as_str(), "tier" => t.number().to_string())
                .set(counts[si][usize::from(t.number() - 1)] as f64);
        }
    }
}

/// Starts every background task.
pub fn spawn(state: &AppState) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();

    if let Some(events) = state.accounting_events.lock().take() {
        let names = state
            .catalogue
            .services()
            .iter()
            .map(|s| s.name.clone())
            .collect();
        let every = Duration::from_millis(state.config.accounting_flush_ms);
        tasks.push(tokio::spawn(crate::accounting::run(
            state.store.clone(),
            names,
            events,
            every,
        )));
    }

    let s = state.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = interval(Duration::from_millis(s.config.flush_interval_ms));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = s.flush().await {
                tracing::error!(error = %e, "heartbeat flush failed");
            }
        }
    }));

    let s = state.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = interval(Duration::from_secs(s.config.rebalance_interval_secs));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut passes = 0u64;
        loop {
            tick.tick().await;
            let changed = s.rebalance();
            if changed > 0 {
                tracing::info!(workers = changed, "rebalanced services onto more workers");
            }
            update_gauges(&s);
            passes += 1;
            if passes.is_multiple_of(20) {
                let purged = s.purge_offline();
                if purged > 0 {
                    tracing::info!(
                        workers = purged,
                        "forgot workers offline past the retention"
                    );
                }
                s.trim_limiters();
            }
        }
    }));

    let s = state.clone();
    tasks.push(tokio::spawn(async move {
        let period = Duration::from_secs(s.config.history_interval_secs);
        let mut tick = interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick.tick().await;
        let (mut last_req, mut last_err) = (0u64, 0u64);
        loop {
            tick.tick().await;
            let (stats, _) = crate::stats::snapshot(&s);
            let req = s.requests_total.load(Ordering::Relaxed);
            let err = s.errors_total.load(Ordering::Relaxed);
            let period_ms = period.as_millis() as i64;
            let ts_ms = now_ms() / period_ms * period_ms;
            let point = HistoryPoint {
                ts_ms,
                workers_by_status: stats.workers_by_status,
                workers_by_tier: stats.workers_by_tier,
                average_load_by_tier: stats.average_load_by_tier,
                requests: req - last_req,
                errors: err - last_err,
            };
            (last_req, last_err) = (req, err);
            let keep_ms = s.config.history_retention_days as i64 * 86_400_000;
            match serde_json::to_string(&point) {
                Ok(data) => s.store.write_history(ts_ms, data, ts_ms - keep_ms),
                Err(e) => tracing::error!(error = %e, "cannot encode a history point"),
            }
        }
    }));
    tasks
}
