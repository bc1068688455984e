//! What Commons' servers (the coordinator and the edge) share: the skeleton every server is built on (layered
//! configuration, the SQLite database, the admin token and named tokens with their admin API, serving until a
//! signal) and the JSON error type, request extractors, the router's fallbacks, secrets, streaming forwarding to
//! an upstream, the Prometheus recorder and time helpers.
//!
//! `commons-shared` stays plain data for the browser; this crate is its server-side companion.
#![deny(missing_docs)]

pub mod auth;
pub mod channel;
pub mod config;
pub mod consumers;
pub mod db;
pub mod error;
pub mod extract;
pub mod forward;
pub mod metrics;
pub mod openapi;
pub mod serve;
pub mod stats;
pub mod tls;
pub mod tokens;
pub mod upstream;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use commons_shared::ErrorBody;
use tower_http::catch_panic::CatchPanicLayer;

use crate::error::ApiError;

/// Adds what every Commons router needs: JSON 404 and 405 fallbacks, and a caught panic answered as a JSON 500.
pub fn finish(router: Router) -> Router {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(CatchPanicLayer::custom(panic_response))
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a handler panicked");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(ErrorBody::new("internal", "internal error")),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint; see /api/openapi.json".into())
}

/// 405 as JSON: the router's answer for a known path asked with a method it does not take.
pub async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(ErrorBody::new(
            "method_not_allowed",
            "this endpoint does not take that method",
        )),
    )
        .into_response()
}

/// Wall-clock now, ms since the epoch.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// RFC 3339 of ms since the epoch.
pub fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Logs to stderr, filtered by `RUST_LOG` (else `default_filter`), in colour only when stderr is a terminal (a log
/// file or the journal gets plain text). For binaries only.
pub fn init_tracing(default_filter: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// A binary's exit: 0, or the error as a sentence on stderr (`{:#}`: with its causes, for `anyhow`) and 1.
pub fn exit<E: std::fmt::Display>(program: &str, result: Result<(), E>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Prints a server's start-up lines and, when one was created on this start, the admin token (shown once). Written
/// without `println!`: a closed stdout must not take the server down.
pub fn announce(lines: &[String], new_admin_token: Option<&str>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
    if let Some(token) = new_admin_token {
        let _ = writeln!(
            out,
            "Admin token (shown once; only its hash is stored): {token}"
        );
    }
    let _ = out.flush();
}

/// Resolves on SIGTERM or Ctrl-C, saying so in the log: a server's `main` then shuts it down.
pub async fn until_signal() {
    shutdown_signal().await;
    tracing::info!("shutting down");
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
