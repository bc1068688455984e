//! `commons-coordinator`: parse the command line and configuration, start tracing, run the server.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgAction, Parser, Subcommand};
use commons_coordinator::Server;
use commons_coordinator::config::Config;
use commons_server::config::is_false;
use serde::Serialize;

/// The Commons coordinator: worker registry, assignment, heartbeats, routing and admin API.
///
/// Settings come from defaults, then the `--config` file, then COMMONS_* environment variables and flags.
#[derive(Debug, Parser, Serialize)]
#[command(version, about)]
struct Cli {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "COMMONS_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// Directory for the SQLite database [default: the XDG data dir].
    #[arg(long, env = "COMMONS_DATA_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// A TOML configuration file (keys as in Config: listen, data_dir, heartbeat_interval_secs, ...).
    #[arg(long, env = "COMMONS_CONFIG", global = true)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// The URL workers reach this coordinator at.
    #[arg(long, env = "COMMONS_PUBLIC_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    public_url: Option<String>,
    /// A catalogue file that overrides the shipped services by name.
    #[arg(long, env = "COMMONS_CATALOGUE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    catalogue: Option<PathBuf>,
    /// The catalogue's minisign signature [default: <catalogue>.minisig when it exists].
    #[arg(long, env = "COMMONS_CATALOGUE_SIGNATURE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    catalogue_signature: Option<PathBuf>,
    /// Registrations per minute per client address (0 = no limit).
    #[arg(long, env = "COMMONS_REGISTER_RATE_LIMIT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    register_rate_limit: Option<u32>,
    /// Seconds between worker heartbeats.
    #[arg(long, env = "COMMONS_HEARTBEAT_INTERVAL")]
    #[serde(
        rename = "heartbeat_interval_secs",
        skip_serializing_if = "Option::is_none"
    )]
    heartbeat_interval: Option<u64>,
    /// Require an enrollment token to register.
    #[arg(long, env = "COMMONS_REQUIRE_ENROLLMENT", action = ArgAction::SetTrue)]
    #[serde(skip_serializing_if = "is_false")]
    require_enrollment: bool,
    /// Accept token-less heartbeats from workers that registered in the legacy RMA shape (migration aid).
    #[arg(long, env = "COMMONS_LEGACY_OPEN_WORKERS", action = ArgAction::SetTrue)]
    #[serde(skip_serializing_if = "is_false")]
    legacy_open_workers: bool,
    /// The edge router to register with (needs COMMONS_FEDERATION_KEY; set --public-url too unless --listen is reachable).
    #[arg(long, env = "COMMONS_EDGE_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    edge_url: Option<String>,
    /// The federation key enrolled at the edge for this coordinator.
    #[arg(long, env = "COMMONS_FEDERATION_KEY", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    federation_key: Option<String>,
    /// Region label reported to the edge.
    #[arg(long, env = "COMMONS_REGION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<String>,
    /// Addresses (the edge's) whose X-Forwarded-For is believed for per-client rate limits, comma-separated.
    #[arg(long, env = "COMMONS_TRUSTED_PROXIES", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    trusted_proxies: Vec<std::net::IpAddr>,
    /// Forward to workers at private addresses (true for a LAN) [default: only when listening on loopback].
    #[arg(long, env = "COMMONS_PRIVATE_UPSTREAMS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    private_upstreams: Option<bool>,
    /// Run no DHT node (discovery then goes through this coordinator only).
    #[arg(long, env = "COMMONS_NO_DHT", action = ArgAction::SetTrue)]
    #[serde(
        rename = "dht",
        serialize_with = "turned_off",
        skip_serializing_if = "is_false"
    )]
    no_dht: bool,
    /// Where the DHT node listens, comma-separated multiaddrs [default: /ip4/0.0.0.0/tcp/4001].
    #[arg(long, env = "COMMONS_DHT_LISTEN", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dht_listen: Vec<String>,
    /// Public addresses of the DHT node, when it listens on a private one (comma-separated multiaddrs).
    #[arg(long, env = "COMMONS_DHT_EXTERNAL", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dht_external: Vec<String>,
    /// DHT seeds (multiaddrs ending in /p2p/<peer id>), besides those the edge lists.
    #[arg(long = "dht-seed", env = "COMMONS_DHT_SEEDS", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dht_seeds: Vec<String>,
    /// The built portal to serve at / (`cargo xtask portal` writes portal/dist).
    #[arg(long, env = "COMMONS_PORTAL_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    portal_dir: Option<PathBuf>,
    /// A directory of installers and signed releases to offer for download (/api/releases, /api/updates).
    #[arg(long, env = "COMMONS_RELEASES_DIR", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    releases_dir: Option<PathBuf>,
    /// The edge's admin token, so the portal can list the edge's coordinators.
    #[arg(long, env = "COMMONS_EDGE_ADMIN_TOKEN", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    edge_admin_token: Option<String>,
    /// Serve HTTPS with this certificate chain (PEM, the leaf first); needs --tls-key.
    #[arg(long, env = "COMMONS_TLS_CERT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "COMMONS_TLS_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key: Option<PathBuf>,
    /// The admin token (at least 16 characters). Prefer the environment variable to a flag.
    #[arg(long, env = "COMMONS_ADMIN_TOKEN", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_token: Option<String>,
    #[command(subcommand)]
    #[serde(skip)]
    command: Option<Sub>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Signed releases for the clients' updates.
    #[command(subcommand)]
    Release(ReleaseCmd),
}

#[derive(Debug, Subcommand)]
enum ReleaseCmd {
    /// Publish a signed artifact into the releases directory: its minisign signature must verify against the
    /// release key (the coordinator signs nothing).
    Add {
        /// The artifact, named commons-<product>-<version>-<platform> (a package: ...-<platform>.deb).
        file: PathBuf,
        /// Semantic version, e.g. 0.1.1.
        #[arg(long)]
        version: String,
        /// stable or beta.
        #[arg(long, default_value = "stable")]
        channel: String,
        /// agent or desktop.
        #[arg(long, default_value = "agent")]
        product: String,
        /// e.g. linux-x86_64; a system package: linux-x86_64-deb [default: this machine's].
        #[arg(long)]
        platform: Option<String>,
        /// Release notes.
        #[arg(long, default_value = "")]
        notes: String,
        /// The minisign signature [default: <file>.minisig].
        #[arg(long)]
        signature: Option<PathBuf>,
        /// The release public key (minisign .pub) [default: the project's, built in].
        #[arg(long, env = "COMMONS_RELEASE_KEY_FILE")]
        release_key: Option<PathBuf>,
    },
}

/// `--no-dht` is the setting `dht = false`.
fn turned_off<S: serde::Serializer>(off: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bool(!off)
}

impl Cli {
    fn into_config(self) -> Result<Config, commons_server::config::ConfigError> {
        commons_server::config::load(self.config.as_deref(), &self)
    }
}

/// jemalloc with one arena (`.cargo/config.toml`): glibc gives each thread that allocates an arena of its own and
/// keeps what each frees, 2.3 MiB more at 10,000 workers, and heartbeats were 8 % slower (`commons-loadgen`).
#[cfg(not(windows))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    commons_server::init_tracing("info");
    commons_server::exit("commons-coordinator", run(Cli::parse()).await)
}

fn release(config: &Config, cmd: ReleaseCmd) -> anyhow::Result<()> {
    let ReleaseCmd::Add {
        file,
        version,
        channel,
        product,
        platform,
        notes,
        signature,
        release_key,
    } = cmd;
    let dir = config.releases_dir.clone().ok_or_else(|| {
        anyhow::anyhow!("no releases directory: give --releases-dir (or COMMONS_RELEASES_DIR)")
    })?;
    let key = match release_key {
        Some(p) => std::fs::read_to_string(&p)
            .map_err(|e| anyhow::anyhow!("cannot read the release key {}: {e}", p.display()))?,
        None => commons_coordinator::updates::PROJECT_KEY.to_owned(),
    };
    let info = commons_coordinator::updates::add(
        &dir,
        &key,
        &commons_coordinator::updates::NewRelease {
            file,
            signature,
            product,
            version,
            channel,
            platform: platform.unwrap_or_else(commons_shared::release::this_platform),
            notes,
        },
    )?;
    println!(
        "published {} {} ({}, {}) as {}: {} bytes, sha256 {}",
        info.product,
        info.version,
        info.channel,
        info.platform,
        dir.join(&info.file).display(),
        info.size_bytes,
        info.sha256
    );
    Ok(())
}

async fn run(mut cli: Cli) -> anyhow::Result<()> {
    commons_server::tls::load_trust()?;
    let command = cli.command.take();
    let config = cli.into_config()?;
    if let Some(Sub::Release(cmd)) = command {
        return release(&config, cmd);
    }
    let data_dir = config.data_dir.clone();
    let server = Server::bind(config).await?;
    let mut lines = vec![
        format!("Commons coordinator listening on {}", server.url()),
        format!("Data: {}", data_dir.join("commons.db").display()),
    ];
    if let Some(d) = server.state().dht.get() {
        lines.push(format!(
            "DHT node {} at {}",
            d.peer_id(),
            d.address_strings().join(", ")
        ));
    }
    lines.push(match &server.state().config.portal_dir {
        Some(d) => format!("Portal: {}/ (from {})", server.url(), d.display()),
        None => "Portal: not served (give --portal-dir portal/dist)".into(),
    });
    commons_server::announce(&lines, server.new_admin_token());
    commons_server::until_signal().await;
    Ok(server.shutdown().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_names_a_setting() {
        let cli = Cli::parse_from([
            "commons-coordinator",
            "--listen=127.0.0.1:9",
            "--data-dir=/tmp/x",
            "--public-url=http://example.test",
            "--catalogue=/tmp/c.toml",
            "--catalogue-signature=/tmp/c.toml.sig",
            "--register-rate-limit=7",
            "--heartbeat-interval=11",
            "--require-enrollment",
            "--legacy-open-workers",
            "--edge-url=http://edge.test",
            "--federation-key=fk",
            "--region=eu",
            "--trusted-proxies=10.0.0.1,10.0.0.2",
            "--no-dht",
            "--dht-listen=/ip4/127.0.0.1/tcp/1",
            "--dht-external=/ip4/127.0.0.1/tcp/2",
            "--dht-seed=/ip4/127.0.0.1/tcp/3",
            "--portal-dir=/tmp/p",
            "--releases-dir=/tmp/r",
            "--edge-admin-token=et",
            "--admin-token=0123456789abcdef0",
        ]);
        let c = cli.into_config().unwrap();
        assert_eq!(c.listen.port(), 9);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.public_url.as_deref(), Some("http://example.test"));
        assert_eq!(c.catalogue, Some(PathBuf::from("/tmp/c.toml")));
        assert_eq!(
            c.catalogue_signature,
            Some(PathBuf::from("/tmp/c.toml.sig"))
        );
        assert_eq!(c.register_rate_limit, 7);
        assert_eq!(c.heartbeat_interval_secs, 11);
        assert!(c.require_enrollment && c.legacy_open_workers && !c.dht);
        assert_eq!(c.edge_url.as_deref(), Some("http://edge.test"));
        assert_eq!(c.federation_key.unwrap().0, "fk");
        assert_eq!(c.region.as_deref(), Some("eu"));
        assert_eq!(c.trusted_proxies.len(), 2);
        assert_eq!(c.dht_listen, ["/ip4/127.0.0.1/tcp/1"]);
        assert_eq!(c.dht_external, ["/ip4/127.0.0.1/tcp/2"]);
        assert_eq!(c.dht_seeds, ["/ip4/127.0.0.1/tcp/3"]);
        assert_eq!(c.portal_dir, Some(PathBuf::from("/tmp/p")));
        assert_eq!(c.releases_dir, Some(PathBuf::from("/tmp/r")));
        assert_eq!(c.edge_admin_token.unwrap().0, "et");
        assert_eq!(c.admin_token.unwrap().0, "0123456789abcdef0");
        // Switches not given leave the defaults.
        let c = Cli::parse_from(["commons-coordinator"])
            .into_config()
            .unwrap();
        assert!(c.dht && !c.require_enrollment);
    }
}
