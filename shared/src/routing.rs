//! How much a worker should be preferred when routing a service request (seed 001 §5.2.2, for workers).
//!
//! `weight = health × load_score × latency_score`, where `load_score = 1 / (0.1 + load + 0.1 × in_flight)` and
//! `latency_score = 1 / (1 + latency_ms / 100)`. A worker that cannot take requests weighs 0.

use crate::api::WorkerStatus;

/// The routing weight of a worker; 0 means never pick it.
pub fn route_weight(status: WorkerStatus, load: f64, latency_ms: f64, in_flight: u32) -> f64 {
    let health = match status {
        WorkerStatus::Healthy => 1.0,
        WorkerStatus::Degraded => 0.5,
        WorkerStatus::Busy => 0.25,
        WorkerStatus::Paused | WorkerStatus::Stale | WorkerStatus::Offline => return 0.0,
    };
    let load = if load.is_finite() {
        load.clamp(0.0, 1.0)
    } else {
        1.0
    };
    let latency = if latency_ms.is_finite() {
        latency_ms.max(0.0)
    } else {
        1e6
    };
    let load_score = 1.0 / (0.1 + load + 0.1 * f64::from(in_flight));
    let latency_score = 1.0 / (1.0 + latency / 100.0);
    health * load_score * latency_score
}

/// Picks an index from `weights` with probability proportional to its weight, given `r` uniform in [0, 1).
/// `None` when every weight is 0.
pub fn pick_weighted(weights: &[f64], r: f64) -> Option<usize> {
    let total: f64 = weights.iter().filter(|w| **w > 0.0).sum();
    if total <= 0.0 {
        return None;
    }
    let mut target = r.clamp(0.0, 1.0) * total;
    let mut last = None;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            last = Some(i);
            if target < w {
                return Some(i);
            }
            target -= w;
        }
    }
    last
}

/// A worker's rank for a key in rendezvous hashing (highest wins): the worker a key is routed to stays the same while
/// it is a candidate, and when it goes only its keys move (each to its next in rank).
pub fn rendezvous_rank(key: &str, worker: u128) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (key, worker).hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_the_keys_of_the_worker_that_goes() {
        let best = |key: &str, workers: &[u128]| {
            *workers
                .iter()
                .max_by_key(|w| rendezvous_rank(key, **w))
                .unwrap()
        };
        let all = [1u128, 2, 3, 4];
        let keys: Vec<String> = (0..400).map(|i| format!("collection-{i}")).collect();
        let before: Vec<u128> = keys.iter().map(|k| best(k, &all)).collect();
        // Spread over all four.
        for w in all {
            let n = before.iter().filter(|b| **b == w).count();
            assert!((50..=150).contains(&n), "worker {w}: {n} of 400");
        }
        // Worker 3 goes: its keys move, no other key does.
        let after: Vec<u128> = keys.iter().map(|k| best(k, &[1, 2, 4])).collect();
        for (b, a) in before.iter().zip(&after) {
            if *b == 3 {
                assert_ne!(*a, 3);
            } else {
                assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn ordering() {
        let w = |s, l, ms, f| route_weight(s, l, ms, f);
        assert!(w(WorkerStatus::Healthy, 0.1, 10.0, 0) > w(WorkerStatus::Healthy, 0.9, 10.0, 0));
        assert!(w(WorkerStatus::Healthy, 0.5, 10.0, 0) > w(WorkerStatus::Healthy, 0.5, 500.0, 0));
        assert!(w(WorkerStatus::Healthy, 0.5, 10.0, 0) > w(WorkerStatus::Degraded, 0.5, 10.0, 0));
        assert!(w(WorkerStatus::Healthy, 0.5, 10.0, 0) > w(WorkerStatus::Healthy, 0.5, 10.0, 8));
        for s in [
            WorkerStatus::Paused,
            WorkerStatus::Stale,
            WorkerStatus::Offline,
        ] {
            assert_eq!(w(s, 0.0, 0.0, 0), 0.0);
        }
        assert!(w(WorkerStatus::Healthy, f64::NAN, f64::INFINITY, 0).is_finite());
    }

    #[test]
    fn weighted_pick() {
        assert_eq!(pick_weighted(&[0.0, 0.0], 0.5), None);
        assert_eq!(pick_weighted(&[], 0.5), None);
        assert_eq!(pick_weighted(&[0.0, 1.0, 0.0], 0.99), Some(1));
        assert_eq!(pick_weighted(&[1.0, 3.0], 0.2), Some(0));
        assert_eq!(pick_weighted(&[1.0, 3.0], 0.3), Some(1));
        assert_eq!(pick_weighted(&[1.0, 3.0], 1.0), Some(1));
        // Frequencies follow weights.
        let mut counts = [0u32; 3];
        for k in 0..10_000 {
            counts[pick_weighted(&[1.0, 2.0, 7.0], (k as f64 + 0.5) / 10_000.0).unwrap()] += 1;
        }
        assert_eq!(counts, [1000, 2000, 7000]);
    }
}
