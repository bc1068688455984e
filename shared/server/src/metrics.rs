//! The process's Prometheus recorder (one per process; tests start several servers in one process and share it).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus handle, installing the recorder on first use.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_seconds".into()),
                &[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ],
            )
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (an embedding program's); then ours only renders nothing new.
        let _ = metrics::set_global_recorder(recorder);
        // Histograms keep every sample until they are drained: by a scrape of /metrics, or by this upkeep. Without
        // it, a coordinator that nobody scrapes grows by every request's latency (the soak's hour found it).
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new()
            .name(UPKEEP_THREAD.into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    upkeep.run_upkeep();
                }
            });
        handle
    })
}

/// The thread that drains the histograms.
pub const UPKEEP_THREAD: &str = "metrics-upkeep";

/// How often it does.
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

#[cfg(test)]
mod tests {
    #[test]
    fn the_histograms_are_drained_by_a_thread_of_their_own() {
        super::handle();
        let names = || -> Vec<String> {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|n| n.trim().to_owned())
                .collect()
        };
        // A new thread names itself once it runs: until then it bears its parent's name.
        let named = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            names().iter().any(|n| n == super::UPKEEP_THREAD)
        });
        assert!(named, "no upkeep thread among {:?}", names());
    }
}
