//! The API's errors: each a status code and a JSON `{error, message}` body.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use commons_shared::ErrorBody;
use commons_shared::validate::InputError;

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: not JSON, or a malformed request.
    #[error("{0}")]
    BadRequest(String),
    /// 422: a field is wrong.
    #[error("{field}: {message}")]
    Invalid {
        /// Dotted path of the field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// 401: no or wrong credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: credentials valid but not for this.
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 413.
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    /// 408: the client stopped sending its request.
    #[error("{0}")]
    RequestTimeout(String),
    /// 409: the request conflicts with what is stored.
    #[error("{0}")]
    Conflict(String),
    /// 426: the request must switch protocols (a worker's channel opened without `Upgrade`).
    #[error("{0}")]
    UpgradeRequired(String),
    /// 429.
    #[error("{0}")]
    RateLimited(String),
    /// 429 with when to come back: a consumer over its rate (`rate_limited`) or its quota (`quota_exceeded`).
    #[error("{message}")]
    TooMany {
        /// What is over.
        message: String,
        /// Seconds until a request can succeed (`Retry-After`).
        retry_after_secs: u64,
        /// A quota (rather than a rate) is spent.
        quota: bool,
    },
    /// 503: no worker offers the service.
    #[error("no healthy worker offers the service {0:?} right now; try again shortly")]
    NoWorker(String),
    /// 503: every worker tried for the service could not be reached.
    #[error(
        "no worker for the service {service:?} could be reached ({tried} tried); try again shortly"
    )]
    Unreachable {
        /// The service.
        service: String,
        /// Workers tried.
        tried: usize,
    },
    /// 503: nothing can take the request now.
    #[error("{0}")]
    Unavailable(String),
    /// 502: the worker failed.
    #[error("{0}")]
    BadGateway(String),
    /// 504: the worker did not answer in time.
    #[error("{0}")]
    GatewayTimeout(String),
    /// 508: the request came back to a server it went through (an upstream points back at it).
    #[error("{0}")]
    LoopDetected(String),
    /// 500: our fault; details go to the log, not the client.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::UpgradeRequired(_) => (StatusCode::UPGRADE_REQUIRED, "upgrade_required"),
            Self::RateLimited(_) | Self::TooMany { quota: false, .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
            }
            Self::TooMany { quota: true, .. } => (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"),
            Self::NoWorker(_) | Self::Unreachable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "no_worker")
            }
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::BadGateway(_) => (StatusCode::BAD_GATEWAY, "bad_gateway"),
            Self::GatewayTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "gateway_timeout"),
            Self::LoopDetected(_) => (StatusCode::LOOP_DETECTED, "loop_detected"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        match e {
            InputError::Syntax(m) => Self::BadRequest(format!("the body is not valid JSON: {m}")),
            InputError::Field { field, message } => Self::Invalid { field, message },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        if let Self::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let mut body = ErrorBody::new(code, self.to_string());
        if let Self::Invalid { field, .. } = &self {
            body = body.in_field(field.clone());
        }
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let after = match &self {
                Self::TooMany {
                    retry_after_secs, ..
                } => HeaderValue::from(retry_after_secs.max(&1).to_owned()),
                _ => HeaderValue::from_static("60"),
            };
            resp.headers_mut().insert(header::RETRY_AFTER, after);
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// The handler result type.
pub type ApiResult<T> = Result<T, ApiError>;
