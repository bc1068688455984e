//! `commons-rag`: the rag service's server (see the library). Listens on `$COMMONS_LISTEN` (`unix:/path` or
//! `host:port`, default `unix:/run/commons/http.sock`); `$COMMONS_RAG_MAX_POINTS` bounds the points it holds (default
//! 200000); stops cleanly on SIGTERM.

use std::sync::Arc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    commons_server::init_tracing("info");
    commons_server::exit("commons-rag", run().await)
}

async fn run() -> Result<(), String> {
    let listen = commons_server::serve::service_listen();
    let max_points = match std::env::var("COMMONS_RAG_MAX_POINTS") {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("COMMONS_RAG_MAX_POINTS={v:?}: not a whole number"))?,
        Err(_) => 200_000,
    };
    let app = commons_rag::router(Arc::new(commons_rag::Store::new(max_points)));
    commons_server::serve::service("commons-rag", &listen, app).await
}
