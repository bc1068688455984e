//! Per-upstream request statistics: requests, errors, requests in flight and a latency moving average, all
//! lock-free. The coordinator keeps one per worker, the edge one per coordinator, the agent's gateway one.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Counters of the requests sent to one upstream.
#[derive(Debug, Default)]
pub struct RequestStats {
    requests: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU32,
    latency_us: AtomicU64,
}

/// A request in flight; the count goes down when it is dropped, also when the request's future is cancelled.
#[derive(Debug)]
pub struct InFlight<'a>(&'a AtomicU32);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RequestStats {
    /// Counters that start from stored totals.
    pub fn with_counts(requests: u64, errors: u64) -> Self {
        Self {
            requests: AtomicU64::new(requests),
            errors: AtomicU64::new(errors),
            ..Self::default()
        }
    }

    /// Counts a request as in flight until the guard is dropped.
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }

    /// Counts a request as in flight until [`leave`](Self::leave): for a guard that owns its upstream and lives as
    /// long as the answer's body.
    pub fn enter(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Ends what [`enter`](Self::enter) began.
    pub fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Records one finished request: counted, failed or not, and its latency into the moving average (α = 1/5;
    /// a lost update under a race only delays convergence).
    pub fn record(&self, ok: bool, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let sample = latency.as_micros().min(u128::from(u64::MAX)) as u64;
        let old = self.latency_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 5 + sample / 5
        };
        self.latency_us.store(new, Ordering::Relaxed);
    }

    /// Requests so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Failed requests so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The latency moving average, ms (0 before the first request).
    pub fn latency_ms(&self) -> f64 {
        self.latency_us.load(Ordering::Relaxed) as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_latency_and_in_flight() {
        let s = RequestStats::with_counts(10, 2);
        {
            let _a = s.start();
            let _b = s.start();
            assert_eq!(s.in_flight(), 2);
        }
        assert_eq!(
            s.in_flight(),
            0,
            "dropped guards, as a cancelled request would drop them"
        );
        s.record(true, Duration::from_millis(10));
        assert_eq!(s.latency_ms(), 10.0);
        s.record(false, Duration::from_millis(20));
        assert_eq!(s.latency_ms(), 12.0);
        assert_eq!((s.requests(), s.errors()), (12, 3));
    }
}
