//! Prometheus metrics through the `metrics` facade. One recorder per process (tests start several servers in one
//! process; they share it).

use metrics::{Counter, Histogram};

use commons_server::metrics::handle;

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
