//! Who may call the admin API: the admin token (a bearer header, failures rate-limited) or a portal session (an
//! HttpOnly cookie), checked by the [`Admin`] extractor; the portal's sessions live here.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use commons_server::auth::{TokenHash, bearer, hash_token, new_token};
use commons_server::extract::ClientIp;
use parking_lot::Mutex;

use crate::error::ApiError;
use crate::state::AppState;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "commons_session";
/// At most this many live sessions; a login beyond it ends the one closest to expiry.
const MAX_SESSIONS: usize = 1024;
/// Portal logins: the SHA-256 of each session token and when it expires.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<TokenHash, Instant>>,
}

impl Sessions {
    pub(crate) fn create(&self, ttl: Duration) -> String {
        let token = new_token();
        let now = Instant::now();
        let mut map = self.map.lock();
        map.retain(|_, exp| *exp > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, exp)| **exp).map(|(h, _)| *h)
        {
            map.remove(&oldest);
        }
        map.insert(hash_token(&token), now + ttl);
        token
    }

    /// The time a session has left, if it is one.
    pub(crate) fn left(&self, token: &str) -> Option<Duration> {
        let exp = *self.map.lock().get(&hash_token(token))?;
        exp.checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    pub(crate) fn end(&self, token: &str) {
        self.map.lock().remove(&hash_token(token));
    }
}

/// The session token in a request's `Cookie` header.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// Admin credentials, checked as an extractor.
pub(crate) struct Admin;

impl axum::extract::FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        // A portal session (cookie) first; then the bearer token, whose failures are rate-limited.
        let token = bearer(&parts.headers).map(str::to_owned);
        if token.is_none()
            && session_cookie(&parts.headers).is_some_and(|t| state.sessions.left(t).is_some())
        {
            return Ok(Admin);
        }
        let ClientIp(ip) =
            <ClientIp as axum::extract::FromRequestParts<AppState>>::from_request_parts(
                parts, state,
            )
            .await
            .unwrap_or(ClientIp([0, 0, 0, 0].into()));
        state.check_admin(token.as_deref(), ip)?;
        Ok(Admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn sessions_expire_and_end() {
        let s = Sessions::default();
        let t = s.create(Duration::from_secs(60));
        assert!(s.left(&t).is_some_and(|d| d.as_secs() >= 59));
        assert!(s.left("nope").is_none());
        s.end(&t);
        assert!(s.left(&t).is_none());
        let short = s.create(Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(s.left(&short).is_none());
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; commons_session=abc; b=2"),
        );
        assert_eq!(session_cookie(&h), Some("abc"));
        h.insert(header::COOKIE, HeaderValue::from_static("commons_session="));
        assert_eq!(session_cookie(&h), None);
    }
}
