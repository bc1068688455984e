//! Secrets: creation, hashing, comparison, and reading `Authorization: Bearer`.
//!
//! Every token we hand out is 256 random bits, so one SHA-256 is a sound way to store it (no dictionary to
//! guess from); comparisons are constant-time.

use std::net::IpAddr;
use std::num::NonZeroU32;

use axum::http::HeaderMap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// A secret that never shows in logs or `Debug`.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// SHA-256 of a token.
pub type TokenHash = [u8; 32];

/// A new random token: 64 hex digits.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `token` hashes to `hash`, in constant time.
pub fn token_matches(token: &str, hash: &TokenHash) -> bool {
    hash_token(token).ct_eq(hash).into()
}

/// The header by which a coordinator proves, on a direct or tunnel path, that a request to a worker's gateway
/// comes from it (the reverse path needs none: its connection is the worker's own).
pub const GATEWAY_KEY_HEADER: &str = "x-commons-gateway-key";

/// The key a worker's gateway takes from its coordinator: derived from the worker's token, which only the two of
/// them know (the coordinator from its hash). Not the token itself, nor its stored hash: a key seen on the way (a
/// LAN, a tunnel) lets no one heartbeat as the worker, and a copy of the database holds no key.
pub fn gateway_key(token_hash: &TokenHash) -> String {
    let mut h = Sha256::new();
    h.update(b"commons gateway key\0");
    h.update(token_hash);
    hex::encode(h.finalize())
}

/// Whether `offered` is `key`, in constant time.
pub fn key_matches(offered: &str, key: &str) -> bool {
    offered.len() == key.len() && bool::from(offered.as_bytes().ct_eq(key.as_bytes()))
}

/// Whether two hashes are equal, in constant time.
pub fn hashes_equal(a: &TokenHash, b: &TokenHash) -> bool {
    a.ct_eq(b).into()
}

/// The bearer token of a request, read without copying the other headers.
#[derive(Debug, Clone, Default)]
pub struct Bearer(pub Option<String>);

impl Bearer {
    /// The token, if one was sent.
    pub fn token(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Bearer {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(bearer(&parts.headers).map(str::to_owned)))
    }
}

/// The token of an `Authorization: Bearer <token>` header, if there is one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty() && t.len() <= 256)
}

/// A per-address rate limit (requests per minute); 0 means none.
#[derive(Debug)]
pub struct RateLimit {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_minute: u32,
}

impl RateLimit {
    /// At most `per_minute` per address; 0 turns the limit off.
    pub fn per_minute(per_minute: u32) -> Self {
        Self {
            limiter: NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            per_minute,
        }
    }

    /// Takes one from `ip`'s allowance; false when it has none left.
    pub fn allow(&self, ip: IpAddr) -> bool {
        self.limiter
            .as_ref()
            .is_none_or(|l| l.check_key(&ip).is_ok())
    }

    /// The configured rate.
    pub fn rate(&self) -> u32 {
        self.per_minute
    }

    /// Forgets addresses that have been quiet.
    pub fn trim(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
        }
    }
}

/// The admin token check: the right token passes; wrong ones count against the address, which gets 429 when it
/// has made too many.
#[derive(Debug)]
pub struct AdminGate {
    hash: TokenHash,
    failures: RateLimit,
}

impl AdminGate {
    /// A gate for the token with this hash, allowing `failures_per_minute` wrong tokens per address.
    pub fn new(hash: TokenHash, failures_per_minute: u32) -> Self {
        Self {
            hash,
            failures: RateLimit::per_minute(failures_per_minute.max(1)),
        }
    }

    /// The admin token hash from configuration, else the stored one, else a new token: returns the hash and, when
    /// one was created, the new token (to show once and store the hash of).
    pub fn resolve(
        configured: Option<&str>,
        stored_hex: Option<&str>,
    ) -> Result<(TokenHash, Option<String>), String> {
        if let Some(t) = configured {
            return Ok((hash_token(t), None));
        }
        if let Some(h) = stored_hex {
            let hash = hex::decode(h)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or("the stored admin token hash is corrupt")?;
            return Ok((hash, None));
        }
        let token = new_token();
        Ok((hash_token(&token), Some(token)))
    }

    /// Whether `token` is the admin's.
    pub fn is_admin(&self, token: &str) -> bool {
        token_matches(token, &self.hash)
    }

    /// Checks a request's token.
    pub fn check(&self, token: Option<&str>, ip: IpAddr) -> Result<(), ApiError> {
        if token.is_some_and(|t| self.is_admin(t)) {
            return Ok(());
        }
        if !self.failures.allow(ip) {
            return Err(ApiError::RateLimited(
                "too many failed admin logins from this address; wait a minute".into(),
            ));
        }
        Err(match token {
            None => ApiError::Unauthorized(
                "this needs the admin token: send Authorization: Bearer <token>".into(),
            ),
            Some(_) => ApiError::Unauthorized("the admin token is wrong".into()),
        })
    }

    /// Forgets addresses that have been quiet.
    pub fn trim(&self) {
        self.failures.trim();
    }
}

/// One named token (an enrollment token, a federation key): only its hash is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedToken {
    /// Id, for revoking (the token's first 12 hex digits).
    pub id: String,
    /// What it is for.
    pub label: String,
    /// SHA-256 of the token.
    pub hash: TokenHash,
}

impl NamedToken {
    /// A new token: the entry to store and keep, and the token to show once.
    pub fn mint(label: String) -> (Self, String) {
        let token = new_token();
        (
            Self {
                id: token[..12].to_owned(),
                label,
                hash: hash_token(&token),
            },
            token,
        )
    }
}

/// A set of named tokens, checked in constant time per entry.
#[derive(Debug, Default)]
pub struct TokenSet {
    entries: parking_lot::RwLock<Vec<NamedToken>>,
}

impl TokenSet {
    /// A set holding `entries`.
    pub fn new(entries: Vec<NamedToken>) -> Self {
        Self {
            entries: parking_lot::RwLock::new(entries),
        }
    }

    /// Adds an entry.
    pub fn insert(&self, entry: NamedToken) {
        self.entries.write().push(entry);
    }

    /// Removes an entry by id; whether it was there.
    pub fn remove(&self, id: &str) -> bool {
        let mut e = self.entries.write();
        let before = e.len();
        e.retain(|t| t.id != id);
        e.len() != before
    }

    /// The id of the entry `token` belongs to.
    pub fn find(&self, token: &str) -> Option<String> {
        let hash = hash_token(token);
        self.entries
            .read()
            .iter()
            .find(|t| hashes_equal(&t.hash, &hash))
            .map(|t| t.id.clone())
    }

    /// (id, label) of every entry.
    pub fn list(&self) -> Vec<(String, String)> {
        self.entries
            .read()
            .iter()
            .map(|t| (t.id.clone(), t.label.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let t = new_token();
        assert_eq!(t.len(), 64);
        assert_ne!(t, new_token());
        let h = hash_token(&t);
        assert!(token_matches(&t, &h));
        assert!(!token_matches("nope", &h));
    }

    #[test]
    fn a_gateway_key_is_the_same_on_both_sides_and_reveals_neither_token_nor_hash() {
        let t = new_token();
        let h = hash_token(&t);
        // The agent derives it from its token, the coordinator from the hash it keeps.
        let key = gateway_key(&hash_token(&t));
        assert_eq!(key, gateway_key(&h));
        assert_eq!(key.len(), 64);
        assert_ne!(key, t);
        assert_ne!(key, hex::encode(h));
        assert_ne!(key, gateway_key(&hash_token(&new_token())));
        assert!(key_matches(&key, &key));
        assert!(!key_matches(&key[..63], &key));
        assert!(!key_matches(&gateway_key(&[0; 32]), &key));
    }

    #[test]
    fn token_sets() {
        let (entry, token) = NamedToken::mint("lab".into());
        let set = TokenSet::new(vec![]);
        assert_eq!(set.find(&token), None);
        set.insert(entry.clone());
        assert_eq!(set.find(&token).as_deref(), Some(entry.id.as_str()));
        assert_eq!(set.list(), vec![(entry.id.clone(), "lab".to_owned())]);
        assert!(set.remove(&entry.id));
        assert!(!set.remove(&entry.id));
        assert_eq!(set.find(&token), None);
    }

    #[test]
    fn bearer_header() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert("authorization", "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
