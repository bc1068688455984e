//! Prometheus metrics through the `metrics` facade. One recorder per process (tests start several servers in one
//! process; they share it).

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Gauge, Histogram};

use commons_server::metrics::handle;

/// Handles to the hot-path metrics, registered once.
#[derive(Debug)]
pub struct Metrics {
    /// Heartbeats accepted.
    pub heartbeats: Counter,
    /// Registrations accepted.
    pub registrations: Counter,
    /// Time from a service request's arrival to the worker's answer headers.
    pub route_latency: Histogram,
    /// Service requests that failed.
    pub route_errors: Counter,
    /// Per service, by catalogue index.
    pub services: Vec<ServiceMeters>,
    /// Answers compared ([`crate::verify`]), by what the comparison found: agreed, outvoted, unresolved.
    pub verdicts: [Counter; 3],
}

/// One service's figures: handles registered once, so a request looks up no labels.
#[derive(Debug)]
pub struct ServiceMeters {
    requests: Counter,
    errors: Counter,
    latency: Histogram,
    /// Requests waiting in its queue.
    pub queue_length: Gauge,
    /// Requests its full queue refused or that waited too long.
    pub rejections: Counter,
    requests_since_start: AtomicU64,
}

impl ServiceMeters {
    fn new(service: &str) -> Self {
        let label = || ("service", service.to_owned());
        Self {
            requests: metrics::counter!("commons_service_requests_total", &[label()]),
            errors: metrics::counter!("commons_service_errors_total", &[label()]),
            latency: metrics::histogram!("commons_service_latency_seconds", &[label()]),
            queue_length: metrics::gauge!("commons_queue_length", &[label()]),
            rejections: metrics::counter!("commons_queue_rejections_total", &[label()]),
            requests_since_start: AtomicU64::new(0),
        }
    }

    /// A request arrived.
    pub fn request(&self) {
        self.requests.increment(1);
        self.requests_since_start.fetch_add(1, Ordering::Relaxed);
    }

    /// A worker answered (or failed to) after `seconds`.
    pub fn answered(&self, ok: bool, seconds: f64) {
        self.latency.record(seconds);
        if !ok {
            self.errors.increment(1);
        }
    }

    /// Requests since start.
    pub fn requests(&self) -> u64 {
        self.requests_since_start.load(Ordering::Relaxed)
    }
}

impl Metrics {
    /// Registers the metrics, with per-service ones for each of `services` (catalogue names, by index).
    pub fn new<'a>(services: impl IntoIterator<Item = &'a str>) -> Self {
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
        metrics::describe_counter!(
            "commons_service_requests_total",
            "Service requests, per service"
        );
        metrics::describe_counter!(
            "commons_service_errors_total",
            "Service requests a worker failed (or none could be reached), per service"
        );
        metrics::describe_histogram!(
            "commons_service_latency_seconds",
            "Time to a worker's answer headers, queue wait included, per service"
        );
        metrics::describe_gauge!(
            "commons_queue_length",
            "Requests waiting for a busy service's workers"
        );
        metrics::describe_counter!(
            "commons_queue_rejections_total",
            "Requests refused by a service's full queue or that waited too long"
        );
        metrics::describe_counter!(
            "commons_verify_total",
            "Answers compared with a second worker's, by result (agreed, outvoted, unresolved)"
        );
        let verdict =
            |result: &'static str| metrics::counter!("commons_verify_total", "result" => result);
        Self {
            verdicts: [
                verdict("agreed"),
                verdict("outvoted"),
                verdict("unresolved"),
            ],
            heartbeats: metrics::counter!("commons_heartbeats_total"),
            registrations: metrics::counter!("commons_registrations_total"),
            route_latency: metrics::histogram!("commons_route_latency_seconds"),
            route_errors: metrics::counter!("commons_route_errors_total"),
            services: services.into_iter().map(ServiceMeters::new).collect(),
        }
    }
}
