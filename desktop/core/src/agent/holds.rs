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

    /// A GPU is (not) hotter than the limit.
    pub(super) fn set_hot(&mut self, hot: bool) {
        self.hot = hot;
    }

    /// Why donating is held back: a rule, else a hot GPU.
    pub(super) fn why(&self, max_gpu_temp_c: u32) -> Option<String> {
        self.rule.clone().or_else(|| {
            self.hot
                .then(|| format!("a GPU is hotter than {max_gpu_temp_c} °C"))
        })
    }
}
