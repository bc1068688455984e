//! Consumer API keys on a server: kept in the `consumer_keys` table (only their SHA-256), checked in memory on every
//! service request (expiry, the services a key covers, its rate per minute, its daily quota), and administered
//! through the admin API ([`admin_routes`]).
//!
//! The table: `(id TEXT PRIMARY KEY, hash BLOB UNIQUE, policy TEXT (JSON), created_ms INTEGER, revoked_ms
//! INTEGER NULL)`. A revoked key keeps its row, so what it did stays on record.
//!
//! In a federation the edge keeps the keys: it shares those that work with its coordinators ([`ConsumerKeys::shared`],
//! `GET /api/edge/keys`), and each coordinator checks them beside its own ([`ConsumerKeys::federate`]), fetching
//! them again whenever the version in the edge's heartbeat answer changes.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{FromRequestParts, Path, State};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use commons_shared::consumers::{
    ConsumerKey, ConsumerKeyList, KEY_PREFIX, KeyPolicy, NewConsumerKey, SharedKey, SharedKeys,
};
use commons_shared::validate::parse_json;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use parking_lot::{Mutex, RwLock};

use crate::auth::{TokenHash, hash_token, new_token};
use crate::db::{Db, DbError};
use crate::error::{ApiError, ApiResult};
use crate::extract::Body;

const DAY_MS: i64 = 86_400_000;

/// Who is making a service request, once its key was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consumer {
    /// A key's holder.
    Key {
        /// The key's id.
        id: String,
        /// Its weight in a busy service's queue.
        priority: u32,
    },
    /// Nobody known (anonymous access is on).
    Anonymous,
}

impl Consumer {
    /// The key's id; empty for anonymous clients.
    pub fn id(&self) -> &str {
        match self {
            Self::Key { id, .. } => id,
            Self::Anonymous => "",
        }
    }

    /// The weight in a busy service's queue: the key's priority; 1 for all anonymous clients together.
    pub fn weight(&self) -> u32 {
        match self {
            Self::Key { priority, .. } => (*priority).max(1),
            Self::Anonymous => 1,
        }
    }
}

/// Anonymous access: off unless the operator turns it on, and then under one small rate shared by all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anonymous {
    /// Requests per minute for all anonymous clients together.
    pub rate_per_minute: u32,
}

/// One key: what never changes after it is made, and what does (its revocation, the day's count) behind one lock.
struct Entry {
    id: String,
    policy: KeyPolicy,
    created_at_ms: i64,
    limiter: DefaultDirectRateLimiter,
    live: Mutex<Live>,
}

#[derive(Default)]
struct Live {
    revoked_at_ms: Option<i64>,
    /// The UTC day counted, and the requests and tokens that day.
    day: i64,
    requests: u64,
    tokens: u64,
}

impl Live {
    /// Starts a new day's counts when `day` is a new one.
    fn on(&mut self, day: i64) -> &mut Self {
        if self.day != day {
            (self.day, self.requests, self.tokens) = (day, 0, 0);
        }
        self
    }
}

impl Entry {
    fn new(id: String, policy: KeyPolicy, created_at_ms: i64, revoked_at_ms: Option<i64>) -> Self {
        let rate = NonZeroU32::new(policy.rate_per_minute).unwrap_or(NonZeroU32::MIN);
        Self {
            id,
            policy,
            created_at_ms,
            limiter: RateLimiter::direct(Quota::per_minute(rate)),
            live: Mutex::new(Live {
                revoked_at_ms,
                ..Live::default()
            }),
        }
    }

    /// The key as the admin API lists it, with today's use.
    fn view(&self, now_ms: i64) -> ConsumerKey {
        let mut live = self.live.lock();
        let live = live.on(now_ms.div_euclid(DAY_MS));
        ConsumerKey {
            id: self.id.clone(),
            policy: self.policy.clone(),
            created_at_ms: self.created_at_ms,
            revoked_at_ms: live.revoked_at_ms,
            requests_today: live.requests,
            tokens_today: live.tokens,
        }
    }
}

/// A new key and its hash.
fn mint() -> (String, TokenHash) {
    let key = format!("{KEY_PREFIX}{}", new_token());
    let hash = hash_token(&key);
    (key, hash)
}

/// Seconds until a rate limiter lets the next request through (`Retry-After`), rounded up.
fn retry_after(not_until: &governor::NotUntil<<DefaultClock as Clock>::Instant>) -> u64 {
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[derive(Default)]
struct Table {
    by_id: BTreeMap<String, Arc<Entry>>,
    /// Keys that work (not revoked), by hash.
    by_hash: HashMap<TokenHash, Arc<Entry>>,
}

/// The keys a coordinator holds from its edge, and their version.
#[derive(Default)]
struct Federated {
    version: Option<u64>,
    by_hash: HashMap<TokenHash, Arc<Entry>>,
    /// The same keys by id.
    by_id: HashMap<String, Arc<Entry>>,
}

/// The consumer keys of one server.
pub struct ConsumerKeys {
    db: Db,
    table: RwLock<Table>,
    federated: RwLock<Federated>,
    anonymous: Option<DefaultDirectRateLimiter>,
    /// Bumped by every create, rotate and revoke; starts at the load's wall clock, so a restart is a change too.
    version: AtomicU64,
}

impl std::fmt::Debug for ConsumerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerKeys")
            .field("keys", &self.table.read().by_id.len())
            .field("anonymous", &self.anonymous.is_some())
            .finish()
    }
}

impl ConsumerKeys {
    /// Loads the keys (at start); `anonymous` says whether requests without a key are served, and how many.
    pub fn load(db: Db, anonymous: Option<Anonymous>) -> Result<Self, DbError> {
        let rows = db.read_now(|c| {
            c.prepare(
                "SELECT id, hash, policy, created_ms, revoked_ms FROM consumer_keys ORDER BY created_ms, id",
            )?
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()
        })?;
        let mut table = Table::default();
        for (id, hash, policy, created_at_ms, revoked_at_ms) in rows {
            let corrupt = |what: &str| DbError::Corrupt(format!("the {what} of consumer key {id}"));
            let hash: TokenHash = hash.try_into().map_err(|_| corrupt("hash"))?;
            let policy: KeyPolicy = serde_json::from_str(&policy).map_err(|_| corrupt("policy"))?;
            let entry = Arc::new(Entry::new(id.clone(), policy, created_at_ms, revoked_at_ms));
            if revoked_at_ms.is_none() {
                table.by_hash.insert(hash, entry.clone());
            }
            table.by_id.insert(id, entry);
        }
        Ok(Self {
            db,
            table: RwLock::new(table),
            federated: RwLock::default(),
            version: AtomicU64::new(u64::try_from(crate::now_ms()).unwrap_or(1)),
            anonymous: anonymous.map(|a| {
                RateLimiter::direct(Quota::per_minute(
                    NonZeroU32::new(a.rate_per_minute).unwrap_or(NonZeroU32::MIN),
                ))
            }),
        })
    }

    /// Whether a request for `service` with `token` (its bearer token) may go on, and whose it is. Counts it
    /// against the key's rate and daily quota.
    ///
    /// No key: 401, unless anonymous access is on (then 429 once its shared rate is spent). An unknown, revoked or
    /// expired key: 401. A key for other services: 403. Over its rate or its daily quota: 429, with when to
    /// come back.
    pub fn check(&self, token: Option<&str>, service: &str, now_ms: i64) -> ApiResult<Consumer> {
        let Some(token) = token else {
            let Some(anonymous) = &self.anonymous else {
                return Err(ApiError::Unauthorized(format!(
                    "the {service} service needs an API key: send Authorization: Bearer <key> (the operator \
                     creates keys in the portal's Consumers page)"
                )));
            };
            return match anonymous.check() {
                Ok(()) => Ok(Consumer::Anonymous),
                Err(not_until) => Err(ApiError::TooMany {
                    message:
                        "anonymous requests are over their shared rate; use an API key, or wait"
                            .into(),
                    retry_after_secs: retry_after(&not_until),
                    quota: false,
                }),
            };
        };
        let hash = hash_token(token);
        let own = self.table.read().by_hash.get(&hash).cloned();
        let entry = own
            .or_else(|| self.federated.read().by_hash.get(&hash).cloned())
            .ok_or_else(|| {
                ApiError::Unauthorized("the API key is not valid (unknown or revoked)".into())
            })?;
        let (id, policy) = (&entry.id, &entry.policy);
        if policy.expires_at_ms.is_some_and(|at| at <= now_ms) {
            return Err(ApiError::Unauthorized(format!(
                "the API key {id} has expired"
            )));
        }
        if !policy.covers(service) {
            return Err(ApiError::Forbidden(format!(
                "the API key {id} may not use the {service} service (it covers {})",
                policy.services.join(", ")
            )));
        }
        if let Err(not_until) = entry.limiter.check() {
            return Err(ApiError::TooMany {
                message: format!(
                    "the API key {id} is over its rate of {} requests a minute",
                    policy.rate_per_minute
                ),
                retry_after_secs: retry_after(&not_until),
                quota: false,
            });
        }
        let day = now_ms.div_euclid(DAY_MS);
        let mut live = entry.live.lock();
        let live = live.on(day);
        let spent = match (policy.daily_requests, policy.daily_tokens) {
            (Some(quota), _) if live.requests >= quota => Some(format!("{quota} requests")),
            (_, Some(quota)) if live.tokens >= quota => Some(format!("{quota} tokens")),
            _ => None,
        };
        if let Some(spent) = spent {
            let until_midnight = (day + 1) * DAY_MS - now_ms;
            return Err(ApiError::TooMany {
                message: format!("the API key {id} has used its {spent} for today (UTC)"),
                retry_after_secs: u64::try_from(until_midnight).map_or(1, |ms| ms.div_ceil(1000)),
                quota: true,
            });
        }
        live.requests += 1;
        Ok(Consumer::Key {
            id: id.clone(),
            priority: policy.priority,
        })
    }

    /// Counts `tokens` an answer to key `id` used against its daily token quota.
    pub fn spend_tokens(&self, id: &str, tokens: u64, now_ms: i64) {
        if let Some(entry) = self.find(id) {
            entry.live.lock().on(now_ms.div_euclid(DAY_MS)).tokens += tokens;
        }
    }

    /// Sets today's counts per key (id, requests, tokens), as the usage ledger has them: at start, so a restart
    /// does not give a key its daily quota again.
    pub fn restore_today(&self, counts: &[(String, u64, u64)], now_ms: i64) {
        let day = now_ms.div_euclid(DAY_MS);
        for (id, requests, tokens) in counts {
            if let Some(entry) = self.find(id) {
                let mut live = entry.live.lock();
                let live = live.on(day);
                (live.requests, live.tokens) = (*requests, *tokens);
            }
        }
    }

    /// A key by id: one of this server's, or one its edge shares.
    fn find(&self, id: &str) -> Option<Arc<Entry>> {
        if let Some(e) = self.table.read().by_id.get(id) {
            return Some(e.clone());
        }
        self.federated.read().by_id.get(id).cloned()
    }

    /// Creates a key durably; the answer carries the key, shown this once.
    pub async fn create(&self, policy: KeyPolicy, now_ms: i64) -> ApiResult<NewConsumerKey> {
        policy.check()?;
        let (key, hash) = mint();
        let id = format!("key_{}", &hex::encode(hash)[..12]);
        let policy_json =
            serde_json::to_string(&policy).map_err(|e| ApiError::Internal(e.to_string()))?;
        let row_id = id.clone();
        self.db
            .write(move |tx| {
                tx.execute(
                    "INSERT INTO consumer_keys (id, hash, policy, created_ms) VALUES (?1, ?2, ?3, ?4)",
                    rusqlite::params![row_id, hash.to_vec(), policy_json, now_ms],
                )
                .map(|_| ())
            })
            .await?;
        let entry = Arc::new(Entry::new(id.clone(), policy, now_ms, None));
        let info = entry.view(now_ms);
        let mut table = self.table.write();
        table.by_hash.insert(hash, entry.clone());
        table.by_id.insert(id, entry);
        self.version.fetch_add(1, Ordering::Relaxed);
        Ok(NewConsumerKey { info, key })
    }

    /// Revokes a key durably, at once; 404 when there is none with that id. Revoking twice is fine.
    pub async fn revoke(&self, id: &str, now_ms: i64) -> ApiResult<ConsumerKey> {
        let entry = self.entry(id)?;
        let key = id.to_owned();
        self.db
            .write(move |tx| {
                tx.execute(
                    "UPDATE consumer_keys SET revoked_ms = COALESCE(revoked_ms, ?2) WHERE id = ?1",
                    rusqlite::params![key, now_ms],
                )
                .map(|_| ())
            })
            .await?;
        self.table
            .write()
            .by_hash
            .retain(|_, e| !Arc::ptr_eq(e, &entry));
        entry.live.lock().revoked_at_ms.get_or_insert(now_ms);
        self.version.fetch_add(1, Ordering::Relaxed);
        Ok(entry.view(now_ms))
    }

    /// Gives a key a new secret (the old one stops working at once), keeping its id, policy and use.
    pub async fn rotate(&self, id: &str, now_ms: i64) -> ApiResult<NewConsumerKey> {
        let entry = self.entry(id)?;
        if entry.live.lock().revoked_at_ms.is_some() {
            return Err(ApiError::Conflict(format!(
                "the API key {id} is revoked; create a new one"
            )));
        }
        let (key, hash) = mint();
        let row_id = id.to_owned();
        self.db
            .write(move |tx| {
                tx.execute(
                    "UPDATE consumer_keys SET hash = ?2 WHERE id = ?1",
                    rusqlite::params![row_id, hash.to_vec()],
                )
                .map(|_| ())
            })
            .await?;
        let mut table = self.table.write();
        table.by_hash.retain(|_, e| !Arc::ptr_eq(e, &entry));
        table.by_hash.insert(hash, entry.clone());
        drop(table);
        self.version.fetch_add(1, Ordering::Relaxed);
        Ok(NewConsumerKey {
            info: entry.view(now_ms),
            key,
        })
    }

    /// Every key, oldest first, with today's use.
    pub fn list(&self, now_ms: i64) -> ConsumerKeyList {
        let mut keys: Vec<ConsumerKey> = self
            .table
            .read()
            .by_id
            .values()
            .map(|e| e.view(now_ms))
            .collect();
        keys.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        ConsumerKeyList { keys }
    }

    /// The version of this server's keys: it changes whenever one is created, rotated or revoked.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    /// The keys that work, by hash, for the coordinators of this edge's federation.
    pub fn shared(&self) -> SharedKeys {
        let now = crate::now_ms();
        // The version first: a change made after it is picked up at the next heartbeat.
        let version = self.version();
        let keys = self
            .table
            .read()
            .by_hash
            .iter()
            .map(|(hash, e)| SharedKey {
                hash: hex::encode(hash),
                info: e.view(now),
            })
            .collect();
        SharedKeys { version, keys }
    }

    /// The version of the edge's keys held, if any were fetched.
    pub fn federated_version(&self) -> Option<u64> {
        self.federated.read().version
    }

    /// Takes the edge's keys in place of those held before: a key gone from the list (revoked at the edge) is
    /// refused from now on. A key that stays, with the same policy, keeps its count for the day and its rate.
    pub fn federate(&self, shared: SharedKeys) {
        let mut federated = self.federated.write();
        let before = std::mem::take(&mut federated.by_id);
        let mut by_hash = HashMap::with_capacity(shared.keys.len());
        let mut by_id = HashMap::with_capacity(shared.keys.len());
        for k in shared.keys {
            let Some(hash) = hex::decode(&k.hash)
                .ok()
                .and_then(|h| TokenHash::try_from(h).ok())
            else {
                tracing::warn!(key = %k.info.id, "the edge shared a key with a malformed hash; skipped");
                continue;
            };
            let entry = match before.get(&k.info.id) {
                Some(e) if e.policy == k.info.policy => e.clone(),
                _ => Arc::new(Entry::new(
                    k.info.id,
                    k.info.policy,
                    k.info.created_at_ms,
                    k.info.revoked_at_ms,
                )),
            };
            by_id.insert(entry.id.clone(), entry.clone());
            by_hash.insert(hash, entry);
        }
        *federated = Federated {
            version: Some(shared.version),
            by_hash,
            by_id,
        };
    }

    fn entry(&self, id: &str) -> ApiResult<Arc<Entry>> {
        self.table
            .read()
            .by_id
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::NotFound(format!("no API key {id:?}")))
    }
}

/// Gives a handler the server's consumer keys.
pub type Pick<S> = fn(&S) -> &ConsumerKeys;

/// The keys' admin API under `path` (`/api/admin/keys`), each route behind the extractor `A` (the server's admin
/// check): `GET` lists, `POST` creates (a [`KeyPolicy`]), `DELETE {id}` revokes, `POST {id}/rotate` rotates.
pub fn admin_routes<S, A>(path: &str, pick: Pick<S>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    A: FromRequestParts<S, Rejection = ApiError> + Send + 'static,
{
    let list = move |State(s): State<S>, _: A| async move { Json(pick(&s).list(crate::now_ms())) };
    let create = move |State(s): State<S>, _: A, Body(body): Body| async move {
        let policy: KeyPolicy = parse_json(&body)?;
        ApiResult::Ok((
            axum::http::StatusCode::CREATED,
            Json(pick(&s).create(policy, crate::now_ms()).await?),
        ))
    };
    let revoke = move |State(s): State<S>, _: A, Path(id): Path<String>| async move {
        ApiResult::Ok(Json(pick(&s).revoke(&id, crate::now_ms()).await?))
    };
    let rotate = move |State(s): State<S>, _: A, Path(id): Path<String>| async move {
        ApiResult::Ok(Json(pick(&s).rotate(&id, crate::now_ms()).await?))
    };
    Router::new()
        .route(path, get(list).post(create))
        .route(&format!("{path}/{{id}}"), delete(revoke))
        .route(&format!("{path}/{{id}}/rotate"), post(rotate))
}

/// The migration step that makes the table (servers add it to their own list of steps).
pub const TABLE: &str = "CREATE TABLE consumer_keys (
    id TEXT PRIMARY KEY NOT NULL,
    hash BLOB NOT NULL UNIQUE,
    policy TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER
) STRICT;";

/// The OpenAPI descriptions of [`admin_routes`], for each server's document (the handlers are generic; these
/// functions are never called).
pub mod doc {
    #![allow(dead_code)]
    use commons_shared::ErrorBody;

    /// Lists the consumers' API keys (never the keys themselves), revoked ones included, with today's use.
    #[utoipa::path(get, path = "/api/admin/keys",
        responses((status = 200, body = commons_shared::consumers::ConsumerKeyList), (status = 401, body = ErrorBody)),
        security(("admin_token" = [])))]
    pub fn list_keys() {}

    /// Creates an API key for a consumer: the services it may use (none: all), its rate per minute, its daily quota
    /// and expiry. The key is in this answer only; it is stored hashed.
    #[utoipa::path(post, path = "/api/admin/keys", request_body = commons_shared::consumers::KeyPolicy,
        responses((status = 201, body = commons_shared::consumers::NewConsumerKey), (status = 400, body = ErrorBody),
                  (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)),
        security(("admin_token" = [])))]
    pub fn create_key() {}

    /// Revokes an API key: refused from now on, kept on record.
    #[utoipa::path(delete, path = "/api/admin/keys/{id}", params(("id" = String, Path)),
        responses((status = 200, body = commons_shared::consumers::ConsumerKey), (status = 401, body = ErrorBody),
                  (status = 404, body = ErrorBody)),
        security(("admin_token" = [])))]
    pub fn revoke_key() {}

    /// Gives an API key a new secret (in this answer only); the old one stops working at once.
    #[utoipa::path(post, path = "/api/admin/keys/{id}/rotate", params(("id" = String, Path)),
        responses((status = 200, body = commons_shared::consumers::NewConsumerKey), (status = 401, body = ErrorBody),
                  (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
        security(("admin_token" = [])))]
    pub fn rotate_key() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: &[&str] = &[
        "CREATE TABLE settings (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) STRICT;",
        TABLE,
    ];

    fn policy(services: &[&str], rate: u32, daily: Option<u64>) -> KeyPolicy {
        KeyPolicy {
            name: "lab".into(),
            services: services.iter().map(|s| (*s).to_owned()).collect(),
            rate_per_minute: rate,
            daily_requests: daily,
            daily_tokens: None,
            expires_at_ms: None,
            priority: commons_shared::consumers::DEFAULT_PRIORITY,
        }
    }

    fn code(r: ApiResult<Consumer>) -> (u16, u64) {
        match r {
            Ok(_) => (200, 0),
            Err(ApiError::TooMany {
                retry_after_secs, ..
            }) => (429, retry_after_secs),
            Err(e) => (e.status().as_u16(), 0),
        }
    }

    #[tokio::test]
    async fn a_token_quota_refuses_once_the_days_tokens_reach_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), "t.db", STEPS, "test-db").unwrap();
        let keys = ConsumerKeys::load(db, None).unwrap();
        let now = 10 * DAY_MS;
        let llm = keys
            .create(
                KeyPolicy {
                    daily_tokens: Some(100),
                    ..policy(&["llm"], 1000, None)
                },
                now,
            )
            .await
            .unwrap();
        let k = Some(llm.key.as_str());
        assert_eq!(code(keys.check(k, "llm", now)), (200, 0));
        keys.spend_tokens(&llm.info.id, 60, now);
        // Under the quota: the answer that crosses it is served whole.
        assert_eq!(code(keys.check(k, "llm", now)), (200, 0));
        keys.spend_tokens(&llm.info.id, 60, now);
        assert_eq!(code(keys.check(k, "llm", now)).0, 429);
        let view = &keys.list(now).keys[0];
        assert_eq!((view.requests_today, view.tokens_today), (2, 120));
        // A new day starts again.
        assert_eq!(code(keys.check(k, "llm", now + DAY_MS)), (200, 0));
        assert_eq!(keys.list(now + DAY_MS).keys[0].tokens_today, 0);
    }

    #[tokio::test]
    async fn keys_are_checked_limited_revoked_rotated_and_kept_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), "t.db", STEPS, "test-db").unwrap();
        let keys = ConsumerKeys::load(db.clone(), None).unwrap();
        let now = 10 * DAY_MS + 1000;
        let ocr = keys
            .create(policy(&["ocr"], 1000, Some(3)), now)
            .await
            .unwrap();
        assert!(ocr.key.starts_with(KEY_PREFIX));
        let k = Some(ocr.key.as_str());
        // No key, a wrong key, another service.
        assert_eq!(code(keys.check(None, "ocr", now)), (401, 0));
        assert_eq!(code(keys.check(Some("ck_nope"), "ocr", now)), (401, 0));
        assert_eq!(code(keys.check(k, "llm", now)), (403, 0));
        // The daily quota: three, then 429 until midnight (UTC), then three again the next day.
        for _ in 0..3 {
            assert_eq!(code(keys.check(k, "ocr", now)), (200, 0));
        }
        assert_eq!(
            code(keys.check(k, "ocr", now)),
            (429, (DAY_MS - 1000) as u64 / 1000)
        );
        assert_eq!(keys.list(now).keys[0].requests_today, 3);
        assert_eq!(code(keys.check(k, "ocr", now + DAY_MS)), (200, 0));
        // The rate: a burst of its size, then 429 with a wait of about 60 s / rate.
        let slow = keys.create(policy(&[], 2, None), now).await.unwrap();
        let s = Some(slow.key.as_str());
        assert_eq!(code(keys.check(s, "llm", now)), (200, 0));
        assert_eq!(code(keys.check(s, "ocr", now)), (200, 0));
        let (status, wait) = code(keys.check(s, "ocr", now));
        assert_eq!(status, 429);
        assert!((1..=30).contains(&wait), "{wait}");
        // Rotating: the old secret stops, the new one works, with the same id.
        let rotated = keys.rotate(&slow.info.id, now).await.unwrap();
        assert_eq!(rotated.info.id, slow.info.id);
        assert_eq!(code(keys.check(s, "ocr", now)), (401, 0));
        // Revoking: refused at once; kept in the list.
        keys.revoke(&ocr.info.id, now).await.unwrap();
        assert_eq!(code(keys.check(k, "ocr", now + DAY_MS)), (401, 0));
        assert!(matches!(
            keys.rotate(&ocr.info.id, now).await,
            Err(ApiError::Conflict(_))
        ));
        assert!(matches!(
            keys.revoke("key_x", now).await,
            Err(ApiError::NotFound(_))
        ));
        // An expired key.
        let old = keys
            .create(
                KeyPolicy {
                    expires_at_ms: Some(now),
                    ..policy(&[], 10, None)
                },
                now - 1,
            )
            .await
            .unwrap();
        assert_eq!(code(keys.check(Some(&old.key), "ocr", now)), (401, 0));
        // A restart: the same keys, the revoked one still revoked, the rotated one with its new secret.
        drop(keys);
        let keys = ConsumerKeys::load(db, None).unwrap();
        let list = keys.list(now).keys;
        assert_eq!(list.len(), 3);
        let revoked = list.iter().find(|k| k.id == ocr.info.id).unwrap();
        assert_eq!(revoked.revoked_at_ms, Some(now));
        // Oldest first: the expired key was made a moment before the others.
        assert_eq!(list[0].id, old.info.id);
        assert_eq!(code(keys.check(k, "ocr", now + DAY_MS)), (401, 0));
        assert_eq!(code(keys.check(Some(&rotated.key), "ocr", now)), (200, 0));
        // Today's counts come back from the ledger after a restart.
        keys.restore_today(&[(rotated.info.id.clone(), 7, 70)], now);
        let restored = keys.list(now).keys;
        let restored = restored.iter().find(|k| k.id == rotated.info.id).unwrap();
        assert_eq!((restored.requests_today, restored.tokens_today), (7, 70));
        // Bad policies are refused with their field.
        assert!(matches!(
            keys.create(policy(&["Bad Name"], 1, None), now).await,
            Err(ApiError::Invalid { field, .. }) if field == "services[0]"
        ));
    }

    #[tokio::test]
    async fn a_coordinator_checks_the_keys_its_edge_shares_until_the_edge_revokes_them() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let open = |d: &tempfile::TempDir| Db::open(d.path(), "t.db", STEPS, "test-db").unwrap();
        let edge = ConsumerKeys::load(open(&dirs[0]), None).unwrap();
        let coordinator = ConsumerKeys::load(open(&dirs[1]), None).unwrap();
        let now = 5 * DAY_MS;
        let k = edge
            .create(policy(&["ocr"], 100, Some(2)), now)
            .await
            .unwrap();
        let v0 = edge.version();
        assert_eq!(coordinator.federated_version(), None);
        assert_eq!(code(coordinator.check(Some(&k.key), "ocr", now)), (401, 0));
        let shared = edge.shared();
        assert_eq!(shared.version, v0);
        assert!(
            !serde_json::to_string(&shared).unwrap().contains(&k.key),
            "never the key itself"
        );
        coordinator.federate(shared);
        assert_eq!(coordinator.federated_version(), Some(v0));
        assert_eq!(code(coordinator.check(Some(&k.key), "ocr", now)), (200, 0));
        assert_eq!(code(coordinator.check(Some(&k.key), "llm", now)), (403, 0));
        // Another key at the edge: a new version; the first key keeps its count for the day across the update.
        edge.create(policy(&[], 100, None), now).await.unwrap();
        assert_ne!(edge.version(), v0);
        coordinator.federate(edge.shared());
        assert_eq!(code(coordinator.check(Some(&k.key), "ocr", now)), (200, 0));
        assert_eq!(code(coordinator.check(Some(&k.key), "ocr", now)).0, 429);
        // Revoked at the edge: refused at the coordinator once it has the new list.
        edge.revoke(&k.info.id, now).await.unwrap();
        coordinator.federate(edge.shared());
        assert_eq!(
            code(coordinator.check(Some(&k.key), "ocr", now + DAY_MS)),
            (401, 0)
        );
        // The coordinator's own keys are not the edge's to share or to drop.
        let own = coordinator
            .create(policy(&[], 100, None), now)
            .await
            .unwrap();
        coordinator.federate(SharedKeys::default());
        assert_eq!(
            code(coordinator.check(Some(&own.key), "ocr", now)),
            (200, 0)
        );
    }

    #[tokio::test]
    async fn anonymous_access_is_off_unless_turned_on_and_then_shares_one_rate() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), "t.db", STEPS, "test-db").unwrap();
        let keys = ConsumerKeys::load(db, Some(Anonymous { rate_per_minute: 2 })).unwrap();
        assert_eq!(keys.check(None, "ocr", 0).unwrap(), Consumer::Anonymous);
        assert_eq!(code(keys.check(None, "llm", 0)), (200, 0));
        assert_eq!(code(keys.check(None, "ocr", 0)).0, 429);
        // A wrong key is not anonymous.
        assert_eq!(code(keys.check(Some("ck_x"), "ocr", 0)), (401, 0));
    }
}
