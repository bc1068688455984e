//! Exponential backoff: the one rule every retry loop in Commons waits by (edge registration, agent registration,
//! the tunnel, crashed containers, DHT publications).

use std::time::Duration;

/// Waits of `first`, doubling after each failure, at most `max`; [`Backoff::reset`] after a success.
///
/// It only says how long to wait, so a loop that also listens for commands (`select!`) can sleep its own way.
/// Jitter is the caller's: the shared crate draws no random numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Starts at `first`, never above `max`.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            failures: 0,
        }
    }

    /// The wait after `failures` failures in a row: `first · 2^failures`, at most `max`.
    pub fn after(&self, failures: u32) -> Duration {
        self.first
            .saturating_mul(1u32 << failures.min(30))
            .min(self.max)
    }

    /// Counts a failure and returns the wait before the next try.
    pub fn fail(&mut self) -> Duration {
        let wait = self.after(self.failures);
        self.failures = self.failures.saturating_add(1);
        wait
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_starts_over_after_a_success() {
        let s = Duration::from_secs;
        let mut b = Backoff::new(s(1), s(5));
        let waits: Vec<_> = (0..5).map(|_| b.fail()).collect();
        assert_eq!(waits, [s(1), s(2), s(4), s(5), s(5)]);
        assert_eq!(b.failures(), 5);
        b.reset();
        assert_eq!(b.fail(), s(1));
        // Far past the cap, still the cap (no overflow).
        assert_eq!(b.after(u32::MAX), s(5));
        assert_eq!(
            Backoff::new(Duration::from_millis(250), s(60)).after(2),
            Duration::from_secs(1)
        );
    }
}
