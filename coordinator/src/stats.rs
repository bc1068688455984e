//! The stats snapshot: counts over the registry that the admin API, the portal's live feed and the gauges share.

use std::sync::atomic::Ordering;
use std::time::Instant;

use commons_shared::api::{ByTier, Stats, WorkerStatus};
use commons_shared::tier::Tier;

use crate::state::AppState;

/// Counts over the registry, shared by stats, health and history.
pub(crate) fn snapshot(state: &AppState) -> (Stats, ByTier<bool>) {
    let now = Instant::now();
    let mut s = Stats::default();
    let mut load_sum = ByTier::<f64>::default();
    for w in state.registry.all() {
        let live = w.live.lock();
        let status = live.status(now, state.liveness);
        s.total_workers += 1;
        *s.workers_by_status.get_mut(status) += 1;
        s.total_tasks_completed += w.stats.requests().saturating_sub(w.stats.errors());
        if status == WorkerStatus::Healthy {
            s.healthy_workers += 1;
        }
        if status.is_live() {
            *s.workers_by_tier.get_mut(w.tier) += 1;
            *load_sum.get_mut(w.tier) += live.load;
            let hw = w.machine.resources();
            s.gpus += hw.gpus.len() as u64;
            // Saturating: a worker's figures are what it claims, up to u64::MAX.
            s.total_vram_bytes = s.total_vram_bytes.saturating_add(hw.total_vram());
            s.cpu_cores += u64::from(hw.cores);
            s.storage_bytes = s.storage_bytes.saturating_add(hw.total_free_disk());
            let version = match &*live.agent_version {
                "" => "unknown",
                v => v,
            };
            match s.agent_versions.get_mut(version) {
                Some(n) => *n += 1,
                None => {
                    s.agent_versions.insert(version.to_owned(), 1);
                }
            }
        }
    }
    for t in Tier::ALL {
        let n = *s.workers_by_tier.get_mut(t);
        *s.average_load_by_tier.get_mut(t) = if n == 0 {
            0.0
        } else {
            *load_sum.get_mut(t) / n as f64
        };
    }
    s.requests_total = state.requests_total.load(Ordering::Relaxed);
    s.errors_total = state.errors_total.load(Ordering::Relaxed);
    let minimum = ByTier {
        gpu_workers: s.workers_by_tier.gpu_workers > 0,
        service_workers: s.workers_by_tier.service_workers > 0,
        data_workers: s.workers_by_tier.data_workers > 0,
    };
    (s, minimum)
}
