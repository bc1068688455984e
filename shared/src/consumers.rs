//! The people the pool serves: consumer API keys, what each may use, and the wire types of their admin API.
//!
//! A key is shown once, when it is created or rotated; servers keep only its SHA-256. A service request carries it as
//! `Authorization: Bearer <key>` (what OpenAI clients send).

use serde::{Deserialize, Serialize};

use crate::validate::{InputError, MAX_STRING_LEN};

/// What a key may do, as the admin sets it (`POST /api/admin/keys`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct KeyPolicy {
    /// Who it is for, for people.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 256))]
    pub name: String,
    /// The services it may use, by catalogue name; empty: all of them.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = service_names))]
    pub services: Vec<String>,
    /// Requests per minute (a burst of this many, refilled evenly over the minute).
    #[serde(default = "default_rate")]
    pub rate_per_minute: u32,
    /// Requests per UTC day; none: no daily quota.
    #[serde(default)]
    pub daily_requests: Option<u64>,
    /// llm tokens (prompt and completion) per UTC day; none: no token quota. A request is refused once the day's
    /// tokens reach it; the answer that crosses it is served whole.
    #[serde(default)]
    pub daily_tokens: Option<u64>,
    /// When it stops working, ms since the epoch; none: never.
    #[serde(default)]
    pub expires_at_ms: Option<i64>,
    /// Its weight in a service's queue when every worker is busy (1 to 100): a key of priority 20 gets twice the
    /// turns of one of 10. Anonymous clients, together, weigh 1.
    #[serde(default = "default_priority")]
    pub priority: u32,
}

fn default_rate() -> u32 {
    60
}

/// A key's priority when the admin gives none.
pub const DEFAULT_PRIORITY: u32 = 10;

fn default_priority() -> u32 {
    DEFAULT_PRIORITY
}

/// A list of service names in the OpenAPI document, bounded as [`KeyPolicy::check`] bounds it.
#[cfg(feature = "openapi")]
fn service_names() -> utoipa::openapi::schema::Array {
    crate::validate::string_list(
        MAX_KEY_SERVICES,
        32,
        Some("^[a-z0-9-]+$"),
        "The services it may use, by catalogue name; empty: all of them.",
    )
}

/// At most this many services named in one key.
pub const MAX_KEY_SERVICES: usize = 64;
/// The highest rate a key can be given, per minute.
pub const MAX_RATE_PER_MINUTE: u32 = 1_000_000;

impl KeyPolicy {
    /// Checks what an admin sent: every problem names its field.
    pub fn check(&self) -> Result<(), InputError> {
        let field = |field: &str, message: String| InputError::Field {
            field: field.into(),
            message,
        };
        if self.name.trim().is_empty() || self.name.chars().count() > MAX_STRING_LEN {
            return Err(field("name", format!("1 to {MAX_STRING_LEN} characters")));
        }
        if self.services.len() > MAX_KEY_SERVICES {
            return Err(field(
                "services",
                format!("at most {MAX_KEY_SERVICES} services"),
            ));
        }
        if let Some((i, s)) = self
            .services
            .iter()
            .enumerate()
            .find(|(_, s)| !crate::catalogue::is_service_name(s))
        {
            return Err(field(
                &format!("services[{i}]"),
                format!("{s:?} is not a service name (lowercase letters, digits and '-')"),
            ));
        }
        if self.rate_per_minute == 0 || self.rate_per_minute > MAX_RATE_PER_MINUTE {
            return Err(field(
                "rate_per_minute",
                format!("1 to {MAX_RATE_PER_MINUTE}"),
            ));
        }
        if !(1..=100).contains(&self.priority) {
            return Err(field("priority", "1 to 100".into()));
        }
        if self.daily_requests == Some(0) {
            return Err(field(
                "daily_requests",
                "at least 1 (leave it out for no daily quota)".into(),
            ));
        }
        if self.daily_tokens == Some(0) {
            return Err(field(
                "daily_tokens",
                "at least 1 (leave it out for no token quota)".into(),
            ));
        }
        Ok(())
    }

    /// Whether it covers `service`.
    pub fn covers(&self, service: &str) -> bool {
        self.services.is_empty() || self.services.iter().any(|s| s == service)
    }
}

/// A key as the admin API lists it (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConsumerKey {
    /// Its id, for revoking and rotating.
    pub id: String,
    /// What it may do.
    #[serde(flatten)]
    pub policy: KeyPolicy,
    /// When it was created, ms since the epoch.
    pub created_at_ms: i64,
    /// When it was revoked, if it was: it is kept, so its use stays on record.
    #[serde(default)]
    pub revoked_at_ms: Option<i64>,
    /// Requests it made today (UTC) on this server.
    #[serde(default)]
    pub requests_today: u64,
    /// llm tokens it used today (UTC) on this server.
    #[serde(default)]
    pub tokens_today: u64,
}

/// `GET /api/admin/keys`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConsumerKeyList {
    /// Every key, revoked ones included, oldest first.
    pub keys: Vec<ConsumerKey>,
}

/// The answer to a create or a rotate: the key, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewConsumerKey {
    /// The key as the admin API lists it.
    #[serde(flatten)]
    pub info: ConsumerKey,
    /// The secret to give the consumer (`Authorization: Bearer <key>`); only its hash is kept.
    pub key: String,
}

/// A key as the edge shares it with the coordinators of its federation (`GET /api/edge/keys`): its SHA-256, never
/// the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SharedKey {
    /// SHA-256 of the key, hex.
    pub hash: String,
    /// The key as the admin API lists it.
    #[serde(flatten)]
    pub info: ConsumerKey,
}

/// `GET /api/edge/keys`: the federation's keys that work (revoked ones are left out), and their version, which the
/// edge's heartbeat answers carry (`EdgeAck::keys_version`) so that a coordinator fetches them only when they changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SharedKeys {
    /// Changes whenever a key is created, rotated or revoked (and when the edge restarts).
    pub version: u64,
    /// The keys.
    pub keys: Vec<SharedKey>,
}

/// What a key starts with, so that a leaked one is recognisable (in logs, in secret scanners).
pub const KEY_PREFIX: &str = "ck_";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_is_checked_field_by_field() {
        let ok = KeyPolicy {
            name: "lab".into(),
            services: vec!["ocr".into()],
            rate_per_minute: 10,
            daily_requests: Some(100),
            daily_tokens: None,
            expires_at_ms: None,
            priority: DEFAULT_PRIORITY,
        };
        assert!(ok.check().is_ok());
        assert!(ok.covers("ocr") && !ok.covers("llm"));
        assert!(
            KeyPolicy {
                services: vec![],
                ..ok.clone()
            }
            .covers("llm")
        );
        for (bad, field) in [
            (
                KeyPolicy {
                    name: " ".into(),
                    ..ok.clone()
                },
                "name",
            ),
            (
                KeyPolicy {
                    services: vec!["OCR".into()],
                    ..ok.clone()
                },
                "services[0]",
            ),
            (
                KeyPolicy {
                    rate_per_minute: 0,
                    ..ok.clone()
                },
                "rate_per_minute",
            ),
            (
                KeyPolicy {
                    daily_requests: Some(0),
                    ..ok.clone()
                },
                "daily_requests",
            ),
            (
                KeyPolicy {
                    daily_tokens: Some(0),
                    ..ok.clone()
                },
                "daily_tokens",
            ),
        ] {
            match bad.check() {
                Err(InputError::Field { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn wire_shape() {
        // The defaults a minimal request gets, and the list's flattened fields.
        let p: KeyPolicy = serde_json::from_str(r#"{"name":"x"}"#).unwrap();
        assert_eq!(
            (p.rate_per_minute, p.daily_requests, p.priority),
            (60, None, 10)
        );
        let k = ConsumerKey {
            id: "k1".into(),
            policy: p,
            created_at_ms: 1,
            revoked_at_ms: None,
            requests_today: 2,
            tokens_today: 30,
        };
        let v = serde_json::to_value(&k).unwrap();
        assert_eq!(v["name"], "x");
        assert_eq!(v["rate_per_minute"], 60);
        assert_eq!(v["requests_today"], 2);
        assert_eq!(v["tokens_today"], 30);
        assert!(v["daily_tokens"].is_null());
        assert!(serde_json::from_str::<KeyPolicy>(r#"{"name":"x","admin":true}"#).is_err());
    }
}
