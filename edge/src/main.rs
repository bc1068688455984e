//! `commons-edge`: parse the command line and configuration, start tracing, run the edge.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use commons_edge::Server;
use commons_edge::config::Config;
use serde::Serialize;

/// The Commons edge router: registry of coordinators, DHT bootstrap, routing to coordinators.
///
/// Settings come from defaults, then the `--config` file, then COMMONS_* environment variables and flags.
#[derive(Debug, Parser, Serialize)]
#[command(version, about)]
struct Cli {
    /// Address to listen on [default: 127.0.0.1:8090].
    #[arg(long, env = "COMMONS_EDGE_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// Directory for the SQLite database [default: the XDG data dir].
    #[arg(long, env = "COMMONS_EDGE_DATA_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// A TOML configuration file (keys as in the edge's Config).
    #[arg(long, env = "COMMONS_EDGE_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Seconds of silence after which a coordinator is forgotten.
    #[arg(long, env = "COMMONS_COORDINATOR_TTL")]
    #[serde(
        rename = "coordinator_ttl_secs",
        skip_serializing_if = "Option::is_none"
    )]
    coordinator_ttl: Option<u64>,
    /// Worker registrations per minute per client address (0 = no limit).
    #[arg(long, env = "COMMONS_REGISTER_RATE_LIMIT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    register_rate_limit: Option<u32>,
    /// Forward to coordinators at private addresses (true for a LAN) [default: only when listening on loopback].
    #[arg(long, env = "COMMONS_PRIVATE_UPSTREAMS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    private_upstreams: Option<bool>,
    /// The admin token (at least 16 characters). Prefer the environment variable to a flag.
    #[arg(long, env = "COMMONS_ADMIN_TOKEN", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_token: Option<String>,
    /// Serve HTTPS with this certificate chain (PEM, the leaf first); needs --tls-key.
    #[arg(long, env = "COMMONS_EDGE_TLS_CERT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "COMMONS_EDGE_TLS_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key: Option<PathBuf>,
}

impl Cli {
    fn into_config(self) -> Result<Config, commons_server::config::ConfigError> {
        commons_server::config::load(self.config.as_deref(), &self)
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    commons_server::init_tracing("info");
    commons_server::exit("commons-edge", run(Cli::parse()).await)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    commons_server::tls::load_trust()?;
    let config = cli.into_config()?;
    let server = Server::bind(config).await?;
    commons_server::announce(
        &[format!("Commons edge listening on {}", server.url())],
        server.new_admin_token(),
    );
    commons_server::until_signal().await;
    Ok(server.shutdown().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_names_a_setting() {
        let cli = Cli::parse_from([
            "commons-edge",
            "--listen=127.0.0.1:9",
            "--data-dir=/tmp/x",
            "--coordinator-ttl=500",
            "--register-rate-limit=7",
            "--admin-token=0123456789abcdef0",
        ]);
        let c = cli.into_config().unwrap();
        assert_eq!(c.listen.port(), 9);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.coordinator_ttl_secs, 500);
        assert_eq!(c.register_rate_limit, 7);
        assert_eq!(c.admin_token.unwrap().0, "0123456789abcdef0");
    }
}
