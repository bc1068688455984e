//! `commons-edge`: parse the command line and configuration, start tracing, run the edge.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use commons_edge::Server;
use commons_edge::config::{Config, Secret};

/// The Commons edge router: registry of coordinators, DHT bootstrap, routing to coordinators.
///
/// Settings come from defaults, then the `--config` file, then COMMONS_* environment variables and flags.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Address to listen on [default: 127.0.0.1:8090].
    #[arg(long, env = "COMMONS_EDGE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory for the SQLite database [default: the XDG data dir].
    #[arg(long, env = "COMMONS_EDGE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A TOML configuration file (keys as in the edge's Config).
    #[arg(long, env = "COMMONS_EDGE_CONFIG")]
    config: Option<PathBuf>,
    /// Seconds of silence after which a coordinator is forgotten.
    #[arg(long, env = "COMMONS_COORDINATOR_TTL")]
    coordinator_ttl: Option<u64>,
    /// Worker registrations per minute per client address (0 = no limit).
    #[arg(long, env = "COMMONS_REGISTER_RATE_LIMIT")]
    register_rate_limit: Option<u32>,
    /// The admin token (at least 16 characters). Prefer the environment variable to a flag.
    #[arg(long, env = "COMMONS_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

impl Cli {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = self.data_dir {
            c.data_dir = v;
        }
        if let Some(v) = self.coordinator_ttl {
            c.coordinator_ttl_secs = v;
        }
        if let Some(v) = self.register_rate_limit {
            c.register_rate_limit = v;
        }
        if let Some(v) = self.admin_token {
            c.admin_token = Some(Secret(v));
        }
        c.validate()?;
        Ok(c)
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    commons_server::init_tracing("info");
    commons_server::exit("commons-edge", run(Cli::parse()).await)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.into_config()?;
    let server = Server::bind(config).await?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "Commons edge listening on {}", server.url());
    if let Some(token) = server.new_admin_token() {
        let _ = writeln!(
            out,
            "Admin token (shown once; only its hash is stored): {token}"
        );
    }
    let _ = out.flush();
    drop(out);
    server.run_until_signal().await
}
