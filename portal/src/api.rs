//! Calls to the coordinator's API (same origin; the session cookie goes along).

use commons_shared::ErrorBody;
use gloo_net::http::{Request, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a call failed, in words for the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The session ended (401): log in again.
    LoggedOut(String),
    /// The coordinator refused or failed (status and its message).
    Status(u16, String),
    /// No answer (the coordinator is down or unreachable).
    Network(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::LoggedOut(m) => write!(f, "{m}"),
            Self::Status(code, m) => write!(f, "{m} (HTTP {code})"),
            Self::Network(m) => write!(
                f,
                "the coordinator did not answer ({m}); check that it is running, then retry"
            ),
        }
    }
}

async fn read<T: DeserializeOwned>(res: Response) -> Result<T, ApiError> {
    let status = res.status();
    if (200..300).contains(&status) {
        return res
            .json::<T>()
            .await
            .map_err(|e| ApiError::Status(status, format!("unexpected answer: {e}")));
    }
    let message = match res.json::<ErrorBody>().await {
        Ok(b) => b.message,
        Err(_) => res.status_text(),
    };
    Err(if status == 401 {
        ApiError::LoggedOut(message)
    } else {
        ApiError::Status(status, message)
    })
}

/// `GET path` as JSON.
pub async fn get<T: DeserializeOwned>(path: &str) -> Result<T, ApiError> {
    let res = Request::get(path)
        .send()
        .await
        .map_err(|e| ApiError::Network(e.to_string()))?;
    read(res).await
}

/// `DELETE path`, its answer as JSON.
pub async fn delete<T: DeserializeOwned>(path: &str) -> Result<T, ApiError> {
    let res = Request::delete(path)
        .send()
        .await
        .map_err(|e| ApiError::Network(e.to_string()))?;
    read(res).await
}

/// `POST path` with a JSON body.
pub async fn post<B: Serialize, T: DeserializeOwned>(path: &str, body: &B) -> Result<T, ApiError> {
    let res = Request::post(path)
        .json(body)
        .map_err(|e| ApiError::Network(e.to_string()))?
        .send()
        .await
        .map_err(|e| ApiError::Network(e.to_string()))?;
    read(res).await
}
