//! `commons-llm`: the llm service's front (see the library). Configured by the container's environment; stops
//! cleanly on SIGTERM, and exits non-zero when a model server dies (the agent restarts the container).

use std::time::Duration;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    commons_server::init_tracing("info");
    commons_server::exit("commons-llm", run().await)
}

async fn run() -> Result<(), String> {
    let config =
        commons_llm::Config::from_env(|k| std::env::var(k).ok()).map_err(|e| e.to_string())?;
    let mut servers = commons_llm::Servers::start(&config).map_err(|e| e.to_string())?;
    let app = commons_llm::router(&config);
    let result = tokio::select! {
        r = commons_server::serve::service("commons-llm", &config.listen, app) => r,
        why = servers.exited() => Err(why),
    };
    servers.stop(Duration::from_secs(10)).await;
    result
}
