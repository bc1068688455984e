//! `commons-ocr`: the ocr service's server. Listens on `$COMMONS_LISTEN` (`unix:/path` or `host:port`, default
//! `unix:/run/commons/http.sock`), reads the languages in `$COMMONS_OCR_LANGUAGES` (comma-separated Tesseract
//! codes, default `eng`), and stops cleanly on SIGTERM.

use std::sync::Arc;

use commons_ocr::Ocr;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    commons_server::init_tracing("info");
    commons_server::exit("commons-ocr", run().await)
}

async fn run() -> Result<(), String> {
    let listen = commons_server::serve::service_listen();
    let languages: Vec<String> = std::env::var("COMMONS_OCR_LANGUAGES")
        .unwrap_or_else(|_| "eng".into())
        .split(',')
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let app = commons_ocr::router(Arc::new(Ocr::new(languages, cores, 4 * cores)));
    commons_server::serve::service("commons-ocr", &listen, app).await
}
