//! When donating is held back: outside the schedule, on battery, while the volunteer is at the keyboard, or while
//! a GPU is hotter than the limit.

use std::time::{Duration, Instant};

use crate::idle::SystemIdle;
use crate::settings::Settings;

/// The holds in force.
#[derive(Default)]
pub(super) struct Holds {
    /// Why a rule (schedule, power, idle) holds donating back, if one does.
    rule: Option<String>,
    /// Heat held donating back at the last heartbeat.
    hot: bool,
    /// When a GPU was last over the limit.
    last_over: Option<Instant>,
    idle: SystemIdle,
}

/// What a check of the rules changed.
pub(super) enum Change {
    /// A rule holds donating back now, for this reason.
    Held(String),
    /// No rule holds it back any more.
    Released,
    /// As before.
    Same,
}

impl Holds {
    /// Held back by a rule.
    pub(super) fn held(&self) -> bool {
        self.rule.is_some()
    }

    /// Checks the schedule, mains power and the keyboard now.
    pub(super) fn check(&mut self, settings: &Settings) -> Change {
        let reason = crate::schedule::blocked(
            &settings.windows(),
            crate::schedule::local_minute(),
            settings.on_ac_power_only,
            crate::schedule::mains(),
            settings.idle_only
                && crate::idle::in_use(
                    &self.idle,
                    Duration::from_secs(u64::from(settings.idle_after_minutes) * 60),
                ),
        );
        let was = self.held();
        self.rule = reason.clone();
        match reason {
            _ if self.held() == was => Change::Same,
            Some(r) => Change::Held(r),
            None => Change::Released,
        }
    }

    /// Records a heartbeat's reading: whether a GPU was over the limit at `now`.
    pub(super) fn set_heat(&mut self, over: bool, now: Instant) {
        if over {
            self.last_over = Some(now);
        }
        self.hot = self.too_hot(over, now);
    }

    /// Whether heat held donating back at the last heartbeat.
    pub(super) fn heat_holds(&self) -> bool {
        self.hot
    }

    /// Whether heat holds donating back with this reading: a GPU is over the limit now, or was less than
    /// [`COOL_DOWN`] ago.
    pub(super) fn too_hot(&self, over: bool, now: Instant) -> bool {
        over || self
            .last_over
            .is_some_and(|t| now.saturating_duration_since(t) < COOL_DOWN)
    }

    /// Why donating is held back: a rule, else a hot GPU.
    pub(super) fn why(&self, max_gpu_temp_c: u32) -> Option<String> {
        self.rule.clone().or_else(|| {
            self.hot.then(|| {
                format!("a GPU is hotter than {max_gpu_temp_c} °C, or was in the last minute")
            })
        })
    }
}

/// How long a hold for heat lasts after a GPU was last over the limit. A GPU cools fast once its work pauses (an H200
/// went from 59 °C under load to 39 °C within 2 s, bench/gpu/agent_gpu.py): without it, a GPU that reaches the limit
/// under the pool's work would pause and resume that work at every heartbeat. A time rather than a margin under the
/// limit, so that a GPU which idles close to a low limit is not held for ever.
pub(super) const COOL_DOWN: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heat_holds_while_a_gpu_is_over_the_limit_and_a_minute_after() {
        let mut h = Holds::default();
        let t0 = Instant::now();
        assert!(!h.too_hot(false, t0));
        h.set_heat(false, t0);
        assert_eq!(h.why(85), None);
        h.set_heat(true, t0);
        assert_eq!(
            h.why(85).as_deref(),
            Some("a GPU is hotter than 85 °C, or was in the last minute")
        );
        // Cooled below the limit at once: still held within the minute, released after it.
        let soon = t0 + Duration::from_secs(2);
        assert!(h.too_hot(false, soon));
        h.set_heat(false, soon);
        assert!(h.why(85).is_some());
        let later = t0 + COOL_DOWN;
        assert!(!h.too_hot(false, later));
        h.set_heat(false, later);
        assert_eq!(h.why(85), None);
        // Over again: held again, for a minute from this reading.
        h.set_heat(true, later);
        assert!(h.too_hot(false, later + COOL_DOWN - Duration::from_secs(1)));
    }
}
