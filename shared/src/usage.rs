//! What the pool served and who served it: the coordinator's usage report per consumer key, the volunteers'
//! credit, and a volunteer's own contribution, as its API sends them.
//!
//! Every figure comes from the coordinator's own records of the requests it routed and the heartbeats it received;
//! nothing a worker reports about itself counts.

use serde::{Deserialize, Serialize};

use crate::tier::Tier;
use crate::validate::InputError;

/// Credit for one request a worker completed.
pub const CREDIT_PER_REQUEST: f64 = 1.0;
/// Credit for one hour a worker was online and donating (heartbeats, not paused).
pub const CREDIT_PER_HOUR: f64 = 10.0;

/// What one second of a worker's compute is worth, by its tier's hardware: a GPU worker's second is worth four of
/// a data worker's, a service worker's two.
pub fn compute_weight(tier: Tier) -> f64 {
    match tier {
        Tier::Gpu => 4.0,
        Tier::Service => 2.0,
        Tier::Data => 1.0,
    }
}

/// A worker's credit: requests completed, compute-seconds weighted by its tier, and hours donated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Credit {
    /// Requests it completed (a 2xx or 3xx answer sent whole); failed ones earn nothing.
    pub requests: u64,
    /// Seconds it spent on completed requests, times its tier's [`compute_weight`].
    pub compute_secs: f64,
    /// Hours it was online and donating.
    pub hours: f64,
}

impl Credit {
    /// The one figure the leaderboard ranks by.
    pub fn points(&self) -> f64 {
        self.requests as f64 * CREDIT_PER_REQUEST + self.compute_secs + self.hours * CREDIT_PER_HOUR
    }
}

/// One volunteer's machine on the leaderboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Volunteer {
    /// Place, from 1.
    pub rank: u32,
    /// The worker.
    pub worker_id: String,
    /// The name its volunteer chose; none: anonymous.
    pub display_name: Option<String>,
    /// What it earned.
    pub credit: Credit,
    /// [`Credit::points`].
    pub points: f64,
}

/// `GET /api/volunteers`: the leaderboard, best first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Leaderboard {
    /// The volunteers, best first.
    pub volunteers: Vec<Volunteer>,
}

/// What a worker served of one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Served {
    /// The service.
    pub service: String,
    /// Requests completed.
    pub requests: u64,
    /// What one is, in words.
    pub unit: crate::catalogue::Unit,
}

/// `GET /api/worker/{id}/contribution`: what a volunteer's machine gave, for its window and `commons-agent status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Contribution {
    /// Requests completed today (UTC), per service, most first.
    pub today: Vec<Served>,
    /// Hours donated in the last 7 days (UTC, today included).
    pub week_hours: f64,
    /// Everything it earned.
    pub credit: Credit,
}

impl Contribution {
    /// The volunteer's sentence: "Today you served 1,234 OCR pages and 56 chat answers; 7.5 hours donated this
    /// week."
    pub fn sentence(&self) -> String {
        let parts: Vec<String> = self
            .today
            .iter()
            .filter(|s| s.requests > 0)
            .map(|s| {
                let unit = if s.requests == 1 {
                    &s.unit.one
                } else {
                    &s.unit.many
                };
                format!("{} {unit}", thousands(s.requests))
            })
            .collect();
        let served = match parts.as_slice() {
            [] => "Nothing served yet today".to_owned(),
            [one] => format!("Today you served {one}"),
            [init @ .., last] => format!("Today you served {} and {last}", init.join(", ")),
        };
        let hours = (self.week_hours * 10.0).round() / 10.0;
        let unit = if hours == 1.0 { "hour" } else { "hours" };
        format!("{served}; {hours} {unit} donated this week.")
    }
}

/// `1234567` as "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Sums over a span of requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Totals {
    /// Requests routed.
    pub requests: u64,
    /// Of which completed (2xx or 3xx, sent whole).
    pub completed: u64,
    /// Bytes the clients sent.
    pub bytes_in: u64,
    /// Bytes the workers answered.
    pub bytes_out: u64,
    /// Time the workers spent, ms.
    pub duration_ms: u64,
    /// Prompt tokens (llm).
    pub prompt_tokens: u64,
    /// Completion tokens (llm).
    pub completion_tokens: u64,
}

/// One bucket of time in a usage series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsagePoint {
    /// The bucket's start, ms since the epoch.
    pub at_ms: i64,
    /// What was served in it.
    #[serde(flatten)]
    pub totals: Totals,
}

/// A service's share of a key's use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceUsage {
    /// The service.
    pub service: String,
    /// What was served of it.
    #[serde(flatten)]
    pub totals: Totals,
}

/// One consumer's use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyUsage {
    /// The key's id; empty for anonymous clients.
    pub key_id: String,
    /// Over the whole span.
    pub totals: Totals,
    /// Per bucket, oldest first; buckets without requests are left out.
    pub series: Vec<UsagePoint>,
    /// Per service, most requests first.
    pub services: Vec<ServiceUsage>,
}

/// `GET /api/admin/usage`: what each key used over a span, per bucket of time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageReport {
    /// The span's start, ms since the epoch (a bucket boundary).
    pub since_ms: i64,
    /// A bucket's length, ms.
    pub bucket_ms: i64,
    /// Per key, most requests first.
    pub keys: Vec<KeyUsage>,
    /// Per service over all keys, most requests first: the top services.
    pub services: Vec<ServiceUsage>,
}

/// The longest span a usage report covers, hours: what is kept (30 days).
pub const MAX_USAGE_HOURS: u32 = 30 * 24;

/// A usage report's span and bucket, as `GET /api/admin/usage?hours=24&bucket_minutes=60` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct UsageQuery {
    /// Hours back from now (1 to 720; default 24).
    #[serde(default = "default_hours")]
    pub hours: u32,
    /// A bucket's length in minutes (1 to 1440; default 60).
    #[serde(default = "default_bucket")]
    pub bucket_minutes: u32,
}

fn default_hours() -> u32 {
    24
}

fn default_bucket() -> u32 {
    60
}

impl Default for UsageQuery {
    fn default() -> Self {
        Self {
            hours: default_hours(),
            bucket_minutes: default_bucket(),
        }
    }
}

impl UsageQuery {
    /// Checks the span and the bucket; each problem names its field.
    pub fn check(&self) -> Result<(), InputError> {
        if !(1..=MAX_USAGE_HOURS).contains(&self.hours) {
            return Err(InputError::Field {
                field: "hours".into(),
                message: format!("1 to {MAX_USAGE_HOURS}"),
            });
        }
        if !(1..=1440).contains(&self.bucket_minutes) {
            return Err(InputError::Field {
                field: "bucket_minutes".into(),
                message: "1 to 1440".into(),
            });
        }
        Ok(())
    }
}

/// At most this many characters in a volunteer's display name.
pub const MAX_DISPLAY_NAME: usize = 40;

/// Checks a display name a volunteer chose: 1 to [`MAX_DISPLAY_NAME`] characters, no control characters, not
/// only spaces. Returns it trimmed.
pub fn check_display_name(name: &str) -> Result<String, InputError> {
    let name = name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_DISPLAY_NAME
        || name.chars().any(char::is_control)
    {
        return Err(InputError::Field {
            field: "display_name".into(),
            message: format!("1 to {MAX_DISPLAY_NAME} characters, without control characters"),
        });
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::Unit;

    fn served(service: &str, n: u64, one: &str, many: &str) -> Served {
        Served {
            service: service.into(),
            requests: n,
            unit: Unit {
                one: one.into(),
                many: many.into(),
            },
        }
    }

    #[test]
    fn the_volunteers_sentence() {
        let c = Contribution {
            today: vec![
                served("ocr", 1234, "OCR page", "OCR pages"),
                served("llm", 56, "chat answer", "chat answers"),
            ],
            week_hours: 7.46,
            credit: Credit::default(),
        };
        assert_eq!(
            c.sentence(),
            "Today you served 1,234 OCR pages and 56 chat answers; 7.5 hours donated this week."
        );
        let c = Contribution {
            today: vec![
                served("ocr", 1, "OCR page", "OCR pages"),
                served("rag", 0, "search", "searches"),
                served("llm", 2, "chat answer", "chat answers"),
                served("x", 3, "request", "requests"),
            ],
            week_hours: 1.0,
            credit: Credit::default(),
        };
        assert_eq!(
            c.sentence(),
            "Today you served 1 OCR page, 2 chat answers and 3 requests; 1 hour donated this week."
        );
        assert_eq!(
            Contribution::default().sentence(),
            "Nothing served yet today; 0 hours donated this week."
        );
    }

    #[test]
    fn thousands_separators() {
        for (n, s) in [
            (0, "0"),
            (999, "999"),
            (1000, "1,000"),
            (1234567, "1,234,567"),
        ] {
            assert_eq!(thousands(n), s);
        }
    }

    #[test]
    fn credit_points_and_weights() {
        let c = Credit {
            requests: 3,
            compute_secs: 2.5,
            hours: 0.5,
        };
        assert_eq!(c.points(), 3.0 + 2.5 + 5.0);
        assert!(compute_weight(Tier::Gpu) > compute_weight(Tier::Service));
        assert!(compute_weight(Tier::Service) > compute_weight(Tier::Data));
    }

    #[test]
    fn queries_and_names_are_checked() {
        assert!(UsageQuery::default().check().is_ok());
        for (hours, bucket, field) in [
            (0, 60, "hours"),
            (721, 60, "hours"),
            (24, 0, "bucket_minutes"),
        ] {
            let e = UsageQuery {
                hours,
                bucket_minutes: bucket,
            }
            .check()
            .unwrap_err();
            assert!(matches!(e, InputError::Field { field: f, .. } if f == field));
        }
        assert_eq!(check_display_name("  Ada  ").unwrap(), "Ada");
        assert!(check_display_name("   ").is_err());
        assert!(check_display_name("a\u{7}b").is_err());
        assert!(check_display_name(&"x".repeat(41)).is_err());
    }
}
