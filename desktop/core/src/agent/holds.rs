//! When donating is held back: outside the schedule, on battery, while the volunteer is at the keyboard, or while
//! a GPU is hotter than the limit.

use std::time::Duration;

use crate::idle::SystemIdle;
use crate::settings::Settings;

/// The holds in force.
#[derive(Default)]
pub(super) struct Holds {
    /// Why a rule (schedule, power, idle) holds donating back, if one does.
    rule: Option<String>,
    /// A GPU was hotter than the limit at the last heartbeat.
    hot: bool,
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

    /// A GPU is (not) too hot ([`too_hot`]).
    pub(super) fn set_hot(&mut self, hot: bool) {
        self.hot = hot;
    }

    /// Whether a hot GPU held donating back at the last heartbeat.
    pub(super) fn hot(&self) -> bool {
        self.hot
    }

    /// Why donating is held back: a rule, else a hot GPU.
    pub(super) fn why(&self, max_gpu_temp_c: u32) -> Option<String> {
        self.rule.clone().or_else(|| {
            self.hot.then(|| {
                format!(
                    "a GPU is hotter than {max_gpu_temp_c} °C (donating goes on once it has cooled to {} °C)",
                    max_gpu_temp_c.saturating_sub(COOL_MARGIN_C)
                )
            })
        })
    }
}

/// How far below the limit every GPU must cool before a hold for heat is lifted, °C. A GPU cools fast once its work
/// pauses (an H200 went from 59 °C under load to 39 °C within 2 s, bench/gpu/agent_gpu.py): with no margin, a GPU
/// that reaches the limit under the pool's work would pause and resume it at every heartbeat.
pub(super) const COOL_MARGIN_C: u32 = 5;

/// Whether the GPUs, at these temperatures (°C), hold donating back: one is hotter than `limit`, or a hold for heat is
/// in force (`held`) and one is not yet [`COOL_MARGIN_C`] below it.
pub(super) fn too_hot(temperatures: impl IntoIterator<Item = u32>, limit: u32, held: bool) -> bool {
    let resume_at = if held {
        limit.saturating_sub(COOL_MARGIN_C)
    } else {
        limit
    };
    temperatures.into_iter().any(|t| t > resume_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hot_gpu_holds_until_it_has_cooled_below_the_limit_by_the_margin() {
        // Not held: only over the limit holds.
        assert!(!too_hot([40, 30], 40, false));
        assert!(too_hot([41, 30], 40, false));
        // Held: 36 to 40 °C keeps the hold, 35 lifts it.
        assert!(too_hot([39], 40, true));
        assert!(too_hot([36, 20], 40, true));
        assert!(!too_hot([35, 20], 40, true));
        // No GPU, nothing to hold.
        assert!(!too_hot([], 40, true));
        let mut h = Holds::default();
        h.set_hot(true);
        assert_eq!(
            h.why(85).as_deref(),
            Some("a GPU is hotter than 85 °C (donating goes on once it has cooled to 80 °C)")
        );
        h.set_hot(false);
        assert_eq!(h.why(85), None);
    }
}
