//! Prometheus metrics through the `metrics` facade. One recorder per process (tests start several servers in one
//! process; they share it).

use std::sync::OnceLock;

use metrics::{Counter, Histogram};
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
        handle
    })
}

/// Handles to the hot-path metrics, registered once.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Heartbeats accepted.
    pub heartbeats: Counter,
    /// Registrations accepted.
    pub registrations: Counter,
    /// Time from a service request's arrival to the worker's answer headers.
    pub route_latency: Histogram,
    /// Service requests that failed.
    pub route_errors: Counter,
}

impl Metrics {
    /// Registers the metrics.
    pub fn new() -> Self {
        handle();
        metrics::describe_counter!("commons_heartbeats_total", "Heartbeats accepted");
        metrics::describe_counter!(
            "commons_registrations_total",
            "Worker registrations accepted"
        );
        metrics::describe_histogram!(
            "commons_route_latency_seconds",
            "Service request latency through the coordinator"
        );
        metrics::describe_counter!("commons_route_errors_total", "Service requests that failed");
        metrics::describe_gauge!("commons_workers", "Workers by status and tier");
        Self {
            heartbeats: metrics::counter!("commons_heartbeats_total"),
            registrations: metrics::counter!("commons_registrations_total"),
            route_latency: metrics::histogram!("commons_route_latency_seconds"),
            route_errors: metrics::counter!("commons_route_errors_total"),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
