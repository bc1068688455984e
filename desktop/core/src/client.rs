//! The agent's side of the coordinator's worker API (and the edge's, which forwards registrations).

use std::time::Duration;

use commons_shared::api::{HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse};

/// A call that did not work.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// 401 or 404: the coordinator does not know this worker (any more).
    #[error("the coordinator does not know this worker ({0})")]
    Unknown(u16),
    /// No answer: the coordinator (or edge) is down or unreachable.
    #[error("no answer from {url}: {message}")]
    Unreachable {
        /// Where.
        url: String,
        /// Why.
        message: String,
    },
    /// Any other refusal, with the server's message.
    #[error("{url} answered {status}: {message}")]
    Refused {
        /// Where.
        url: String,
        /// Status.
        status: u16,
        /// The server's message.
        message: String,
        /// The input it named as at fault (a 422).
        field: Option<String>,
    },
}

/// An HTTP client with short timeouts.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
}

fn join(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

impl Client {
    /// A client.
    pub fn new() -> Self {
        let http = commons_server::tls::http()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .expect("a client with no TLS settings builds");
        Self { http }
    }

    async fn json<T: serde::de::DeserializeOwned>(
        url: &str,
        r: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<T, CallError> {
        let r = r.map_err(|e| CallError::Unreachable {
            url: url.into(),
            message: e.to_string(),
        })?;
        let status = r.status().as_u16();
        if status == 401 || status == 404 {
            return Err(CallError::Unknown(status));
        }
        if !r.status().is_success() {
            let body = r
                .json::<commons_shared::ErrorBody>()
                .await
                .unwrap_or_else(|_| commons_shared::ErrorBody::new("unknown", "no message"));
            return Err(CallError::Refused {
                url: url.into(),
                status,
                message: body.message,
                field: body.field,
            });
        }
        r.json().await.map_err(|e| CallError::Unreachable {
            url: url.into(),
            message: format!("unreadable answer: {e}"),
        })
    }

    /// Registers at a coordinator or an edge.
    pub async fn register(
        &self,
        entry: &str,
        req: &RegisterRequest,
    ) -> Result<RegisterResponse, CallError> {
        let url = join(entry, "/api/worker/register");
        Self::json(&url, self.http.post(&url).json(req).send().await).await
    }

    /// The time a request to `url` takes to go there and back, whatever it answers (a tunnel's round trip: the
    /// gateway behind it answers 401 to a request without the coordinator's key, which is all a probe needs).
    pub async fn round_trip(&self, url: &str) -> Result<Duration, CallError> {
        let sent = std::time::Instant::now();
        self.http
            .head(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| CallError::Unreachable {
                url: url.into(),
                message: e.to_string(),
            })?;
        Ok(sent.elapsed())
    }

    /// Sends a heartbeat.
    pub async fn heartbeat(
        &self,
        coordinator: &str,
        token: &str,
        hb: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, CallError> {
        let url = join(coordinator, "/api/worker/heartbeat");
        Self::json(
            &url,
            self.http
                .post(&url)
                .bearer_auth(token)
                .json(hb)
                .send()
                .await,
        )
        .await
    }

    /// What worker `id` served today and donated this week, and its credit, from the coordinator's records.
    pub async fn contribution(
        &self,
        coordinator: &str,
        id: &str,
        token: &str,
    ) -> Result<commons_shared::usage::Contribution, CallError> {
        let url = join(coordinator, &format!("/api/worker/{id}/contribution"));
        Self::json(&url, self.http.get(&url).bearer_auth(token).send().await).await
    }

    /// Leaves.
    pub async fn unregister(
        &self,
        coordinator: &str,
        id: &str,
        token: &str,
    ) -> Result<(), CallError> {
        let url = join(coordinator, &format!("/api/worker/unregister/{id}"));
        Self::json::<serde_json::Value>(
            &url,
            self.http.delete(&url).bearer_auth(token).send().await,
        )
        .await
        .map(|_| ())
    }

    /// DHT seeds from an edge's `GET /api/dht/bootstrap`.
    pub async fn bootstrap(
        &self,
        edge: &str,
    ) -> Result<commons_shared::edge::Bootstrap, CallError> {
        let url = join(edge, "/api/dht/bootstrap");
        Self::json(&url, self.http.get(&url).send().await).await
    }

    /// The coordinator's catalogue and its signature (`GET /api/catalogue`).
    pub async fn catalogue(
        &self,
        coordinator: &str,
    ) -> Result<commons_shared::catalogue::CatalogueOffer, CallError> {
        let url = join(coordinator, "/api/catalogue");
        Self::json(&url, self.http.get(&url).send().await).await
    }

    /// Whether the coordinator answers `/health`.
    pub async fn alive(&self, coordinator: &str, timeout: Duration) -> bool {
        let url = join(coordinator, "/health");
        matches!(self.http.get(&url).timeout(timeout).send().await, Ok(r) if r.status().is_success())
    }
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}
