//! The `burrow-edge` command line: run an edge, add tunnels to its file, or try it all at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use burrow_protocol::{AccountId, TunnelId, TunnelSecret};
use burrow_shared::files::burrow_home;
use burrow_tunnel::credentials::{Credentials, CredentialsFile};
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::control::api::ApiListener;
use crate::control::config_sync;
use crate::control::remote_sync::{self, Remote};
use crate::control::resources::{ControlPlane, RouteTo};
use crate::control::store::sqlite::SqliteStore;
use crate::control::tunnels_file::{RouteEntry, TunnelEntry, TunnelsFile, encode_hex};
use crate::control::zones::ZoneSource;
use crate::dataplane::shards;
use crate::dataplane::tls::TlsIdentity;
use crate::plugins::host::PluginHost;
use crate::route_table::{RouteTable, hash_secret};
use crate::{ConnectionTimeouts, EdgeConfig, EdgeState, Listeners};

#[derive(Parser)]
#[command(
    name = "burrow-edge",
    version,
    about = "Burrow edge node: public HTTP in, named tunnels out"
)]
struct Cli {
    #[command(flatten)]
    log: burrow_shared::logging::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an edge node.
    Run(Box<RunArgs>),
    /// Manage the tunnels of a tunnels file (the file provider).
    #[command(subcommand)]
    Tunnel(TunnelCommand),
    /// Manage accounts in the edge's store.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Manage accounts' API tokens in the edge's store.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage which account may route which hostnames.
    #[command(subcommand)]
    Zone(ZoneCommand),
    /// Manage tokens of edge-only nodes.
    #[command(subcommand)]
    NodeToken(NodeTokenCommand),
    /// Try Burrow on this machine: an edge, a tunnel and a connector in one process.
    Dev(DevArgs),
}

#[derive(Args)]
struct ListenArgs {
    /// Public cleartext HTTP listener (HTTP/1.1 and h2c); "off" disables it.
    #[arg(long, default_value = "0.0.0.0:8080", value_name = "ADDR|off")]
    http: String,
    /// Public HTTPS listener (HTTP/1.1 and HTTP/2 by ALPN); "off" disables it.
    #[arg(long, default_value = "0.0.0.0:8443", value_name = "ADDR|off")]
    https: String,
    /// QUIC listener where connectors register (UDP).
    #[arg(long, default_value = "0.0.0.0:7844", value_name = "ADDR")]
    tunnel: SocketAddr,
    /// The /v1 API for tenants (the `burrow` CLI) and edge-only nodes; "off" disables it.
    /// Cleartext unless --api-tls-cert is given: keep it on a private network otherwise.
    #[arg(long, default_value = "127.0.0.1:9090", value_name = "ADDR|off")]
    api: String,
    /// Operator listener: /metrics and /ready; "off" disables it. Keep it off the internet.
    #[arg(long, default_value = "127.0.0.1:9091", value_name = "ADDR|off")]
    admin: String,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    listen: ListenArgs,
    /// Serve tunnel records and routes from this YAML file instead of the store (no API).
    /// Re-read on SIGHUP; a file that fails to load is reported and the current table keeps serving.
    #[arg(long, env = "BURROW_TUNNELS_FILE", conflicts_with = "control_plane")]
    tunnels: Option<PathBuf>,
    /// Run as an edge-only node: follow the control plane (API) of another edge at this URL
    /// instead of a local store, e.g. http://cp.internal:9090.
    #[arg(long, requires = "node_token")]
    control_plane: Option<String>,
    /// CA certificate (PEM) of --control-plane's API, when its certificate is not publicly
    /// trusted (an edge started with --api-tls-cert).
    #[arg(long, requires = "control_plane")]
    control_plane_ca: Option<PathBuf>,
    /// Node token for --control-plane (from `burrow-edge node-token create`).
    #[arg(long, env = "BURROW_NODE_TOKEN", hide_env_values = true)]
    node_token: Option<String>,
    /// Certificate chain (PEM) for HTTPS and the tunnel listener [default: a self-signed one in --data-dir].
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve the API over HTTPS with this certificate chain (PEM).
    #[arg(long, requires = "api_tls_key")]
    api_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --api-tls-cert.
    #[arg(long, requires = "api_tls_cert")]
    api_tls_key: Option<PathBuf>,
    /// Where the edge keeps its state [default: $BURROW_HOME/edge].
    #[arg(long, env = "BURROW_EDGE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Name of this node, shown to connectors and in logs [default: the host name].
    #[arg(long)]
    node_name: Option<String>,
    /// Location label of this node (e.g. fra1).
    #[arg(long, default_value = "local")]
    location: String,
    /// Tunnel address(es) connectors may use, handed out at registration (HOST:PORT).
    #[arg(long = "advertise", value_name = "HOST:PORT")]
    advertised: Vec<String>,
    /// How long to wait for an origin's response head before answering 504.
    #[arg(long, default_value = "100s", value_parser = parse_timeout)]
    origin_timeout: Duration,
    /// A request body that sends nothing for this long is cut (408 before any response).
    #[arg(long, default_value = "60s", value_parser = parse_timeout)]
    request_body_idle_timeout: Duration,
    /// A request body must arrive within this time unless the origin has started answering
    /// (408). Raise it, with --origin-timeout, for origins that take long uploads before answering.
    #[arg(long, default_value = "5m", value_parser = parse_timeout)]
    request_body_timeout: Duration,
    /// On shutdown, how long in-flight requests may take.
    #[arg(long, default_value = "30s", value_parser = parse_timeout)]
    grace_period: Duration,
    /// A tunnel connection silent this long is dead (connectors ping every 2 s); its requests
    /// move to the tunnel's other connections.
    #[arg(long, default_value = "10s", value_parser = parse_timeout)]
    tunnel_idle_timeout: Duration,
    /// A request head must arrive within this (slow-header clients; also how long an idle
    /// HTTP/1 keep-alive connection stays open).
    #[arg(long, default_value = "30s", value_parser = parse_timeout)]
    header_read_timeout: Duration,
    /// A TLS handshake on the public listener must finish within this.
    #[arg(long, default_value = "10s", value_parser = parse_timeout)]
    tls_handshake_timeout: Duration,
    /// A public connection on which no request started for this long is closed gracefully.
    #[arg(long, default_value = "60s", value_parser = parse_timeout)]
    idle_timeout: Duration,
    /// Every public connection is closed gracefully at this age, after its in-flight requests.
    #[arg(long, default_value = "1h", value_parser = parse_timeout)]
    max_connection_age: Duration,
    /// A new tunnel connection must register within this.
    #[arg(long, default_value = "5s", value_parser = parse_timeout)]
    registration_timeout: Duration,
    /// Public connections served at once; more get a 503 and are closed.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Threads serving traffic [default: one per CPU on Linux, else 1]. Each has its own
    /// runtime, QUIC endpoint and listeners on the same ports (SO_REUSEPORT); a request stays on
    /// the thread that accepted it when its tunnel has a connection there.
    #[arg(long, env = "BURROW_EDGE_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
    /// Tunnel registrations accepted per source address per minute (connectors behind one NAT
    /// share it; rejected ones retry after 5 s).
    #[arg(long, default_value_t = 600)]
    registrations_per_minute: u32,
    /// Load a plugin component routes can bind by name: NAME=PATH.wasm (repeatable).
    #[arg(long = "plugin", value_name = "NAME=PATH")]
    plugins: Vec<String>,
    /// Let accounts claim zones themselves (`burrow zone add`), proven by a DNS TXT record;
    /// otherwise only the operator assigns zones (`burrow-edge zone add`).
    #[arg(long)]
    self_service_zones: bool,
    /// DNS server (IP:PORT) to look zone claims' TXT records up with [default: the system's].
    #[arg(long, value_name = "ADDR")]
    dns_server: Option<SocketAddr>,
    /// A proxy in front of the API (CIDR, repeatable): its X-Forwarded-For names the client
    /// that failed authentications are counted against. Never trust an address you do not run.
    #[arg(long = "api-trusted-proxy", value_name = "CIDR")]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Live connections one tunnel may hold on this edge (connectors × --ha-connections).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    max_connections_per_tunnel: u32,
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Create an account and print its admin API token (shown once).
    Create {
        name: String,
        /// A zone the account may route hostnames under, e.g. example.com (repeatable; more
        /// with `zone add`).
        #[arg(long = "zone", value_name = "ZONE")]
        zones: Vec<String>,
        /// The edge's data dir, holding store.db [default: $BURROW_HOME/edge].
        #[arg(long, env = "BURROW_EDGE_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// List the accounts.
    List {
        #[arg(long, env = "BURROW_EDGE_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Delete an account and everything it owns: tokens stop working at once, its tunnels'
    /// connections are closed, its routes stop serving.
    Delete {
        /// Account name or id.
        account: String,
        /// Confirm: the account's tunnels, routes, pools and plugins are deleted for good.
        #[arg(long)]
        yes: bool,
        #[arg(long, env = "BURROW_EDGE_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ZoneCommand {
    /// Give an account a zone: it may then route the zone's hostnames (ZONE, *.ZONE, x.ZONE…).
    Add {
        zone: String,
        /// Account name or id.
        #[arg(long)]
        account: String,
        #[arg(long, env = "BURROW_EDGE_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// List zones and the accounts that hold them.
    List {
        /// Only this account's (name or id).
        #[arg(long)]
        account: Option<String>,
        #[arg(long, env = "BURROW_EDGE_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Take a zone from its account (refused while it routes hostnames, unless --force, which
    /// deletes those routes).
    Remove {
        zone: String,
        #[arg(long)]
        force: bool,
        #[arg(long, env = "BURROW_EDGE_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// List API tokens (their ids and names, never the secrets).
    List {
        /// Only this account's (name or id).
        #[arg(long)]
        account: Option<String>,
        #[arg(long, env = "BURROW_EDGE_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Create another API token for an account (shown once).
    Create {
        /// Account name or id.
        #[arg(long)]
        account: String,
        /// A name to tell it apart, e.g. ci.
        #[arg(long, default_value = "token")]
        name: String,
        #[arg(long, env = "BURROW_EDGE_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Revoke a token by its id (from `token list`, or the part after `burrow_`): it stops
    /// working at once.
    Revoke {
        id: String,
        #[arg(long, env = "BURROW_EDGE_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum NodeTokenCommand {
    /// Create a token an edge-only node uses to follow this node's control plane (shown once).
    Create {
        name: String,
        #[arg(long, env = "BURROW_EDGE_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TunnelCommand {
    /// Create a tunnel in a tunnels file and write its credentials for the connector.
    Add(AddArgs),
}

#[derive(Args)]
struct AddArgs {
    /// Tunnel name (unique in the file).
    name: String,
    /// The tunnels file to add to (created if missing).
    #[arg(long, env = "BURROW_TUNNELS_FILE")]
    tunnels: PathBuf,
    /// Hostname(s) to route to the tunnel (exact or *.domain).
    #[arg(long = "hostname")]
    hostnames: Vec<String>,
    /// Edge tunnel address(es) written into the credentials [default: localhost:7844].
    #[arg(long = "edge", value_name = "HOST:PORT")]
    edges: Vec<String>,
    /// Where to write <UUID>.json [default: $BURROW_HOME].
    #[arg(long)]
    credentials_dir: Option<PathBuf>,
    /// The edge's data dir, whose self-signed certificate connectors should trust [default: $BURROW_HOME/edge].
    /// Ignored with --public-pki.
    #[arg(long, env = "BURROW_EDGE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The edge has a publicly trusted certificate: do not pin the self-signed one.
    #[arg(long)]
    public_pki: bool,
}

#[derive(Args)]
struct DevArgs {
    /// Public HTTP listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// The /v1 API listener (`burrow login --api http://ADDR`).
    #[arg(long, default_value = "127.0.0.1:9090")]
    api: SocketAddr,
    /// The operator's /metrics and /ready.
    #[arg(long, default_value = "127.0.0.1:9091")]
    admin: SocketAddr,
    /// Tunnel listener (UDP).
    #[arg(long, default_value = "127.0.0.1:7844")]
    tunnel: SocketAddr,
    /// Origin to serve [default: the connector's built-in hello_world page].
    #[arg(long)]
    url: Option<String>,
}

/// Entry point of the `burrow-edge` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    let result = match cli.command {
        Command::Run(args) => runtime().and_then(|rt| rt.block_on(run(*args))),
        Command::Tunnel(TunnelCommand::Add(args)) => add_tunnel(args),
        Command::NodeToken(NodeTokenCommand::Create { name, data_dir: dir }) => {
            runtime().and_then(|rt| rt.block_on(create_node_token(&name, &data_dir(dir))))
        }
        Command::Account(command) => runtime().and_then(|rt| rt.block_on(manage_accounts(command))),
        Command::Token(command) => runtime().and_then(|rt| rt.block_on(manage_tokens(command))),
        Command::Zone(command) => runtime().and_then(|rt| rt.block_on(manage_zones(command))),
        Command::Dev(args) => runtime().and_then(|rt| rt.block_on(dev(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The main thread's runtime: control work (API, config follow, health checks); every traffic
/// shard gets a thread of its own from `run`.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn data_dir(explicit: Option<PathBuf>) -> PathBuf {
    explicit.unwrap_or_else(|| burrow_home().join("edge"))
}

/// Names the self-signed certificate is valid for: loopback plus whatever the node is called.
fn self_signed_names(extra: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    for name in extra {
        let host = burrow_shared::host_port::unbracket(burrow_shared::host_port::split(name).0);
        if !host.is_empty() && !names.iter().any(|n| n == host) {
            names.push(host.to_owned());
        }
    }
    names
}

async fn run(args: RunArgs) -> Result<()> {
    let dir = data_dir(args.data_dir);
    let node_name = args.node_name.unwrap_or_else(host_name);
    let mut names = args.advertised.clone();
    names.push(node_name.clone());
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => TlsIdentity::from_pem_files(cert, key)?,
        _ => TlsIdentity::self_signed_in(&dir, &self_signed_names(&names))?,
    };
    // Uploaded plugins come with a control plane (local store or remote); a tunnels file has
    // only the operator's.
    let plugins = load_plugins(&args.plugins, args.tunnels.is_none().then(|| dir.join("plugins"))).await?;
    let (table, control) = match (&args.tunnels, &args.control_plane) {
        (Some(file), _) => (Some(TunnelsFile::load(file)?.to_table()?), None),
        (None, Some(_)) => (snapshot_table(&dir, plugins.as_ref()).await?, None),
        (None, None) => open_control_plane(&dir, plugins.as_ref()).await?,
    };
    // No tenant routes a name of this edge itself.
    let control = control.map(|cp| cp.with_own_names(self_signed_names(&names)));
    let mut config = EdgeConfig::new(node_name, tls);
    config.data_dir = Some(dir.clone());
    config.location = args.location;
    config.advertised_edges = args.advertised;
    config.origin_timeout = args.origin_timeout;
    config.request_body_idle_timeout = args.request_body_idle_timeout;
    config.request_body_timeout = args.request_body_timeout;
    config.grace_period = args.grace_period;
    config.tunnel_idle_timeout = args.tunnel_idle_timeout;
    config.max_connections = args.max_connections;
    config.connection_timeouts = ConnectionTimeouts {
        header_read: args.header_read_timeout,
        tls_handshake: args.tls_handshake_timeout,
        idle: args.idle_timeout,
        max_age: args.max_connection_age,
    };
    config.registration_timeout = args.registration_timeout;
    config.registrations_per_minute = args.registrations_per_minute;
    config.plugins = plugins;
    config.self_service_zones = args.self_service_zones;
    config.dns_server = args.dns_server;
    config.trusted_proxies = args.trusted_proxies;
    config.max_connections_per_tunnel = args.max_connections_per_tunnel as usize;
    let addresses = shards::Addresses {
        http: parse_optional(&args.listen.http, "--http")?,
        https: parse_optional(&args.listen.https, "--https")?,
        tunnel: args.listen.tunnel,
    };
    let threads = args.worker_threads.map_or_else(shards::default_count, usize::from);
    let listeners = Listeners {
        shards: shards::bind(addresses, threads)?,
        admin: bind_optional(&args.listen.admin, "--admin").await?,
        api: match bind_optional(&args.listen.api, "--api").await? {
            None => None,
            Some(tcp) => Some(ApiListener {
                tcp,
                tls: match (&args.api_tls_cert, &args.api_tls_key) {
                    (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(
                        TlsIdentity::from_pem_files(cert, key)?.api_server_config()?,
                    )),
                    _ => None,
                },
            }),
        },
    };
    let state = EdgeState::with_control(config, table, control);
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signals(state.clone(), args.tunnels.clone(), shutdown.clone()));
    if let (Some(url), Some(token)) = (args.control_plane, args.node_token) {
        let ca_pem = match &args.control_plane_ca {
            Some(path) => Some(burrow_tunnel::tls::read_ca_file(path).context("--control-plane-ca")?),
            None => None,
        };
        let remote = Remote { url, token, ca_pem };
        tokio::spawn(remote_sync::follow_remote(state.clone(), remote, dir, shutdown.clone()));
    }
    crate::run(state, listeners, shutdown).await
}

/// The store in `dir`, and the table to serve until it has been read: the last snapshot. If the
/// store cannot be opened, serve the snapshot alone (the control plane is down, the edge is not).
async fn open_control_plane(
    dir: &Path,
    plugins: Option<&Arc<PluginHost>>,
) -> Result<(Option<RouteTable>, Option<ControlPlane>)> {
    let table = snapshot_table(dir, plugins).await?;
    match open_store(dir).await {
        Ok(store) => Ok((table, Some(ControlPlane::new(store)))),
        Err(StoreOpen::Lost(why)) => Err(why),
        Err(StoreOpen::Failed(e)) if table.is_some() => {
            tracing::error!("store unavailable ({e:#}); serving the last config snapshot without the API");
            Ok((table, None))
        }
        Err(StoreOpen::Failed(e)) => Err(e),
    }
}

/// Why the store of a data dir was not opened.
enum StoreOpen {
    /// It cannot be the store the config snapshot came from: serving it would replace that
    /// config with an older or empty one.
    Lost(anyhow::Error),
    /// It could not be opened (corrupt, unreadable, newer schema).
    Failed(anyhow::Error),
}

/// Open `dir/store.db`, refusing a store that is missing, empty or older than the config
/// snapshot next to it (a lost or replaced store would otherwise serve, and save, less config).
async fn open_store(dir: &Path) -> Result<Arc<SqliteStore>, StoreOpen> {
    let path = dir.join("store.db");
    let snapshot = config_sync::load_snapshot(dir).ok().flatten();
    let holds_config = snapshot
        .as_ref()
        .filter(|s| !(s.tunnels.is_empty() && s.routes.is_empty() && s.pools.is_empty()));
    let empty = std::fs::metadata(&path).map_or(true, |m| m.len() == 0);
    if let (true, Some(snapshot)) = (empty, holds_config) {
        return Err(StoreOpen::Lost(anyhow::anyhow!(
            "{} is missing or empty, but {} holds the config of revision {} ({} tunnels, {} routes): \
             the store was lost, and starting would serve (and save) an empty config. Restore store.db \
             from a backup; or, to start over with an empty store, move snapshot.json out of {}",
            path.display(),
            config_sync::snapshot_path(dir).display(),
            snapshot.revision,
            snapshot.tunnels.len(),
            snapshot.routes.len(),
            dir.display(),
        )));
    }
    let store = SqliteStore::open(&path)
        .map_err(|e| StoreOpen::Failed(anyhow::anyhow!("opening the store {}: {e}", path.display())))?;
    let revision = crate::control::store::Store::revision(&*store)
        .await
        .map_err(|e| StoreOpen::Failed(anyhow::anyhow!("reading the store {}: {e}", path.display())))?;
    if let Some(snapshot) = holds_config.filter(|s| s.revision > revision) {
        return Err(StoreOpen::Lost(anyhow::anyhow!(
            "the store {} is at revision {revision}, behind the config snapshot {} (revision {}): \
             store.db was replaced by an older copy or made anew. Restore the newer store.db; or, to \
             serve what this store holds, move snapshot.json out of {}",
            path.display(),
            config_sync::snapshot_path(dir).display(),
            snapshot.revision,
            dir.display(),
        )));
    }
    Ok(store)
}

/// [`open_store`] for the commands that manage the store.
async fn open_store_for_cli(dir: &Path) -> Result<Arc<SqliteStore>> {
    open_store(dir).await.map_err(|e| match e {
        StoreOpen::Lost(e) | StoreOpen::Failed(e) => e,
    })
}

/// Compile the `--plugin NAME=PATH` components (once, at start). With `cache_dir`, the host
/// also runs uploaded plugins, and keeps their compiled artifacts there.
async fn load_plugins(specs: &[String], cache_dir: Option<PathBuf>) -> Result<Option<Arc<PluginHost>>> {
    if specs.is_empty() && cache_dir.is_none() {
        return Ok(None);
    }
    let mut host = PluginHost::new()?;
    if let Some(dir) = cache_dir {
        host.set_cache_dir(dir);
    }
    for spec in specs {
        let (name, path) = spec
            .split_once('=')
            .with_context(|| format!("--plugin {spec:?}: expected NAME=PATH"))?;
        let wasm = std::fs::read(path).with_context(|| format!("--plugin {name}: reading {path}"))?;
        host.load(name, &wasm).await?;
    }
    Ok(Some(Arc::new(host)))
}

/// The table of the last saved snapshot, if there is one. Uploaded plugins it binds come from
/// the artifact cache (the control plane is not asked yet).
async fn snapshot_table(dir: &Path, plugins: Option<&Arc<PluginHost>>) -> Result<Option<RouteTable>> {
    let snapshot = config_sync::load_snapshot(dir).unwrap_or_else(|e| {
        tracing::warn!("ignoring the config snapshot: {e:#}");
        None
    });
    let Some(snapshot) = snapshot else { return Ok(None) };
    let not_yet = |_| async { anyhow::bail!("not in the artifact cache; waiting for the control plane") };
    let table = config_sync::build_table(plugins, &snapshot, not_yet)
        .await
        .0
        .map_err(|e| anyhow::anyhow!("config snapshot: {e}"))?;
    tracing::info!(
        revision = snapshot.revision,
        "serving the last config snapshot until the control plane answers"
    );
    Ok(Some(table))
}

async fn create_node_token(name: &str, dir: &Path) -> Result<()> {
    let store = open_store_for_cli(dir).await?;
    let token = ControlPlane::new(store).create_node_token(name).await?;
    println!("Node token (shown once, keep it secret): {token}");
    println!("Run an edge-only node with:  burrow-edge run --control-plane http://ADMIN_ADDR --node-token {token}");
    Ok(())
}

async fn create_account(name: &str, zones: &[String], dir: &Path) -> Result<()> {
    let store = open_store_for_cli(dir).await?;
    let cp = ControlPlane::new(store);
    // Zones are checked before the account exists: a bad one creates nothing.
    for zone in zones {
        if let Some(held) = cp.zone_of(zone).await? {
            anyhow::bail!(
                "zone {zone}: {} is held by another account; nothing was created",
                held.zone
            );
        }
    }
    let (account, token) = cp.create_account(name).await?;
    for zone in zones {
        let zone = cp.add_zone(account.id, zone, ZoneSource::Operator).await?;
        println!("Zone {} is the account's", zone.zone);
    }
    println!("Created account {} ({})", account.name, account.id);
    println!("API token (shown once, keep it secret): {token}");
    println!("Log in with:  burrow login --api http://ADMIN_ADDR --token {token}");
    Ok(())
}

async fn manage_accounts(command: AccountCommand) -> Result<()> {
    match command {
        AccountCommand::Create {
            name,
            zones,
            data_dir: dir,
        } => create_account(&name, &zones, &data_dir(dir)).await,
        AccountCommand::List { data_dir: dir } => {
            let cp = ControlPlane::new(open_store_for_cli(&data_dir(dir)).await?);
            let mut table = comfy_table::Table::new();
            table
                .load_preset(comfy_table::presets::NOTHING)
                .set_header(["ID", "NAME", "CREATED"]);
            for account in cp.list_accounts().await? {
                table.add_row([account.id.to_string(), account.name, rfc3339(account.created)]);
            }
            println!("{table}");
            Ok(())
        }
        AccountCommand::Delete {
            account,
            yes,
            data_dir: dir,
        } => {
            let cp = ControlPlane::new(open_store_for_cli(&data_dir(dir)).await?);
            let found = cp.find_account(&account).await?;
            anyhow::ensure!(
                yes,
                "this deletes account {} ({}) with all its tunnels, routes, pools, plugins and tokens; \
                 run again with --yes to do it",
                found.name,
                found.id
            );
            let deleted = cp.delete_account(&found.id.to_string()).await?;
            println!("Deleted account {} ({})", deleted.name, deleted.id);
            Ok(())
        }
    }
}

async fn manage_tokens(command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::List { account, data_dir: dir } => {
            let cp = ControlPlane::new(open_store_for_cli(&data_dir(dir)).await?);
            let only = match account {
                Some(a) => Some(cp.find_account(&a).await?.id),
                None => None,
            };
            let names: std::collections::HashMap<_, _> =
                cp.list_accounts().await?.into_iter().map(|a| (a.id, a.name)).collect();
            let mut table = comfy_table::Table::new();
            table
                .load_preset(comfy_table::presets::NOTHING)
                .set_header(["ID", "NAME", "ACCOUNT", "CREATED"]);
            for token in cp.list_tokens(only).await? {
                let account = names
                    .get(&token.account)
                    .cloned()
                    .unwrap_or_else(|| token.account.to_string());
                table.add_row([token.id, token.name, account, rfc3339(token.created)]);
            }
            println!("{table}");
            Ok(())
        }
        TokenCommand::Create {
            account,
            name,
            data_dir: dir,
        } => {
            let cp = ControlPlane::new(open_store_for_cli(&data_dir(dir)).await?);
            let account = cp.find_account(&account).await?;
            let (doc, token) = cp.create_token(account.id, &name).await?;
            println!("Created token {} ({}) for account {}", doc.id, doc.name, account.name);
            println!("API token (shown once, keep it secret): {token}");
            Ok(())
        }
        TokenCommand::Revoke { id, data_dir: dir } => {
            let cp = ControlPlane::new(open_store_for_cli(&data_dir(dir)).await?);
            let id = crate::control::resources::token_id(&id).unwrap_or(&id).to_owned();
            let doc = cp.revoke_token(&id).await?;
            println!("Revoked token {} ({})", doc.id, doc.name);
            Ok(())
        }
    }
}

async fn manage_zones(command: ZoneCommand) -> Result<()> {
    match command {
        ZoneCommand::Add {
            zone,
            account,
            data_dir: dir,
        } => {
            let cp = ControlPlane::new(open_store_for_cli(&data_dir(dir)).await?);
            let account = cp.find_account(&account).await?;
            let zone = cp.add_zone(account.id, &zone, ZoneSource::Operator).await?;
            println!(
                "Zone {} is account {}'s: it may route {0} and the names under it",
                zone.zone, account.name
            );
            Ok(())
        }
        ZoneCommand::List { account, data_dir: dir } => {
            let cp = ControlPlane::new(open_store_for_cli(&data_dir(dir)).await?);
            let only = match account {
                Some(a) => Some(cp.find_account(&a).await?.id),
                None => None,
            };
            let names: std::collections::HashMap<_, _> =
                cp.list_accounts().await?.into_iter().map(|a| (a.id, a.name)).collect();
            let mut table = comfy_table::Table::new();
            table
                .load_preset(comfy_table::presets::NOTHING)
                .set_header(["ZONE", "ACCOUNT", "SOURCE", "CREATED"]);
            for zone in cp.list_zones(only).await? {
                let account = names
                    .get(&zone.account)
                    .cloned()
                    .unwrap_or_else(|| zone.account.to_string());
                let source = match zone.source {
                    ZoneSource::Operator => "operator",
                    ZoneSource::Dns => "dns",
                };
                table.add_row([zone.zone, account, source.to_owned(), rfc3339(zone.created)]);
            }
            println!("{table}");
            Ok(())
        }
        ZoneCommand::Remove {
            zone,
            force,
            data_dir: dir,
        } => {
            let cp = ControlPlane::new(open_store_for_cli(&data_dir(dir)).await?);
            let removed = cp.remove_zone(None, &zone, force).await?;
            println!("Removed zone {}", removed.zone);
            Ok(())
        }
    }
}

/// Unix seconds as RFC 3339 (UTC).
fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// A TCP listener for `flag`, unless it is "off".
async fn bind_optional(addr: &str, flag: &str) -> Result<Option<TcpListener>> {
    let Some(addr) = parse_optional(addr, flag)? else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {flag} {addr} (is another edge running?)"))?;
    Ok(Some(listener))
}

fn parse_optional(addr: &str, flag: &str) -> Result<Option<SocketAddr>> {
    if addr == "off" {
        return Ok(None);
    }
    let addr = addr
        .parse()
        .with_context(|| format!("{flag} {addr:?}: expected IP:PORT or off"))?;
    Ok(Some(addr))
}

/// SIGHUP reloads the tunnels file; SIGINT/SIGTERM drain and stop (a second one exits at once).
async fn on_signals(state: Arc<EdgeState>, tunnels: Option<PathBuf>, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut hup), Ok(mut term)) = (signal(SignalKind::hangup()), signal(SignalKind::terminate())) else {
        tracing::error!("cannot install signal handlers; stop the edge with SIGKILL");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                match &tunnels {
                    Some(file) => reload(&state, file),
                    None => tracing::info!("SIGHUP ignored: this edge follows its store"),
                }
                continue;
            }
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        if shutdown.is_cancelled() {
            tracing::warn!("second signal: exiting without waiting");
            std::process::exit(130);
        }
        tracing::info!(
            "shutting down: connectors are told to move, in-flight requests finish (signal again to exit now)"
        );
        shutdown.cancel();
    }
}

/// Build a new table from the file off the hot path and swap it in; on error keep the old one.
pub fn reload(state: &EdgeState, tunnels: &Path) {
    match TunnelsFile::load(tunnels).and_then(|f| f.to_table()) {
        Ok(table) => state.swap_routes(table),
        Err(e) => tracing::error!("tunnels file not reloaded, the current table keeps serving: {e:#}"),
    }
}

/// A duration flag in humantime syntax ("30s", "5m", "1h"), at most 30 days so that no deadline
/// computed from it can overflow the clock.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    const MAX: Duration = Duration::from_secs(30 * 24 * 3600);
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration > MAX {
        return Err(format!("{text} is over the 30 days this accepts"));
    }
    Ok(duration)
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "edge".to_owned())
}

fn add_tunnel(args: AddArgs) -> Result<()> {
    let mut file = if args.tunnels.exists() {
        TunnelsFile::load(&args.tunnels)?
    } else {
        TunnelsFile::default()
    };
    anyhow::ensure!(
        !file.tunnels.iter().any(|t| t.name == args.name),
        "a tunnel named {:?} already exists in {}",
        args.name,
        args.tunnels.display()
    );
    // One file, one account: the file provider is for a single operator.
    let account = file.tunnels.first().map_or_else(AccountId::new_random, |t| t.account);
    let id = TunnelId::new_random();
    let secret = TunnelSecret::generate();
    file.tunnels.push(TunnelEntry {
        id,
        name: args.name.clone(),
        account,
        secret_sha256: encode_hex(&hash_secret(&secret)),
    });
    for hostname in &args.hostnames {
        file.routes.push(RouteEntry {
            hostname: hostname.clone(),
            tunnel: Some(args.name.clone()),
            pool: None,
            plugins: Vec::new(),
        });
    }
    file.to_table()
        .context("the tunnel or its routes are invalid; nothing was written")?;

    let edges = if args.edges.is_empty() {
        vec!["localhost:7844".to_owned()]
    } else {
        args.edges
    };
    let edge_ca = if args.public_pki {
        None
    } else {
        let tls = TlsIdentity::self_signed_in(&data_dir(args.data_dir), &self_signed_names(&edges))?;
        tls.self_signed_pem
    };
    let credentials = Credentials {
        account,
        tunnel_id: id,
        tunnel_name: args.name.clone(),
        secret,
        edges,
        edge_ca,
    };
    let dir = args.credentials_dir.unwrap_or_else(burrow_home);
    let path = dir.join(format!("{id}.json"));
    credentials.save(&path)?;
    file.save(&args.tunnels)?;
    println!("Created tunnel {} with id {id}", args.name);
    println!(
        "Credentials written to {} (keep it secret: it lets anyone serve this tunnel)",
        path.display()
    );
    println!(
        "Run it next to your origin:  burrow tunnel run --credentials-file {} --url http://localhost:8000",
        path.display()
    );
    println!("Reload a running edge with:  kill -HUP $(pidof burrow-edge)");
    Ok(())
}

/// The dev store's directory, removed however `dev` ends.
struct DevDir(PathBuf);

impl Drop for DevDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Everything in one process on loopback: an edge with its store and API, a dev account, a
/// tunnel routed from hello.localhost, and a connector serving it. Stops on Ctrl-C or SIGTERM,
/// and at once, with the error, if the edge or the connector stops by itself.
async fn dev(args: DevArgs) -> Result<()> {
    use burrow_tunnel::ingress::{Ingress, OriginRequest, Service};
    use burrow_tunnel::origin::Origins;
    use burrow_tunnel::tunnel_client::{self, Status, TunnelOptions};

    let dir = DevDir(std::env::temp_dir().join(format!("burrow-dev-{}", uuid::Uuid::new_v4())));
    let store =
        SqliteStore::open(&dir.0.join("store.db")).map_err(|e| anyhow::anyhow!("opening the dev store: {e}"))?;
    let control = ControlPlane::new(store);
    let (account, token) = control.create_account("dev").await?;
    // The dev account routes anything under localhost (hello.localhost, app.localhost…).
    control.add_zone(account.id, "localhost", ZoneSource::Operator).await?;
    let (tunnel, secret) = control.create_tunnel(account.id, "dev").await?;
    control
        .route(account.id, "hello.localhost", RouteTo::Tunnel("dev"), false, None)
        .await?;
    // The edge starts with the tunnel in its table: the connector registers at once.
    let table = control
        .snapshot(&control.read_config().await?)
        .await?
        .to_table(None)
        .map_err(|e| anyhow::anyhow!("the dev config does not build: {e}"))?;

    let tls = TlsIdentity::generate_self_signed(&self_signed_names(&[]))?;
    let edge_ca = tls.self_signed_pem.clone();
    let bind = |addr: SocketAddr, flag: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {flag} {addr} (is another edge running?)"))
    };
    let admin = bind(args.admin, "--admin").await?;
    let api = bind(args.api, "--api").await?;
    let sockets = shards::bind(
        shards::Addresses {
            http: Some(args.http),
            https: None,
            tunnel: args.tunnel,
        },
        1,
    )?;
    let mut config = EdgeConfig::new("dev", tls);
    config.data_dir = Some(dir.0.clone());
    config.advertised_edges = vec![format!("localhost:{}", args.tunnel.port())];
    let state = EdgeState::with_control(config, Some(table), Some(control));
    let shutdown = CancellationToken::new();
    let listeners = Listeners {
        shards: sockets,
        admin: Some(admin),
        api: Some(ApiListener { tcp: api, tls: None }),
    };
    let mut edge = tokio::spawn(crate::run(state, listeners, shutdown.clone()));

    let service = match &args.url {
        Some(url) => Service::parse(url).map_err(|e| anyhow::anyhow!("--url {url}: {e}"))?,
        None => Service::HelloWorld,
    };
    let origins = Arc::new(Origins::new(
        Ingress::single(service, OriginRequest::default()),
        Default::default(),
    )?);
    let credentials = Credentials {
        account: account.id,
        tunnel_id: tunnel.id,
        tunnel_name: tunnel.name.clone(),
        secret,
        edges: vec![],
        edge_ca,
    };
    let options = TunnelOptions {
        edges: vec![format!("localhost:{}", args.tunnel.port())],
        ha_connections: 2,
        grace_period: Duration::from_secs(5),
        connector_id: burrow_protocol::ConnectorId::new_random(),
        limits: Default::default(),
        threads: 1,
    };
    let status = Arc::new(Status::default());
    let mut connector = tokio::spawn(tunnel_client::run(
        credentials,
        origins,
        options,
        status.clone(),
        shutdown.clone(),
    ));
    println!(
        "Burrow dev: edge on http://{}, API on http://{}, tunnel \"dev\" ({})",
        args.http, args.api, tunnel.id
    );
    let ready = async {
        while status.ready_connections() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let stopped = |what: &str, result: Result<Result<()>, tokio::task::JoinError>| {
        let cause = match result {
            Ok(Ok(())) => anyhow::anyhow!("it stopped"),
            Ok(Err(e)) => e,
            Err(e) => anyhow::anyhow!(e),
        };
        cause.context(format!("the dev {what} stopped"))
    };
    tokio::select! {
        () = ready => {}
        result = &mut edge => return Err(stopped("edge", result)),
        result = &mut connector => return Err(stopped("connector", result)),
    }
    println!("Try:        curl http://hello.localhost:{}/", args.http.port());
    println!("Manage it:  burrow login --api http://{} --token {token}", args.api);
    println!("            burrow tunnel route dns dev app.localhost && burrow tunnel list");
    println!("Ctrl-C to stop (the dev store in {} is removed).", dir.0.display());
    tokio::select! {
        () = burrow_shared::signals::wait_for_signal() => {}
        result = &mut edge => {
            shutdown.cancel();
            return Err(stopped("edge", result));
        }
        result = &mut connector => {
            shutdown.cancel();
            return Err(stopped("connector", result));
        }
    }
    shutdown.cancel();
    let (edge, connector) = tokio::join!(edge, connector);
    edge??;
    connector??;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn timeouts_parse_humantime_and_are_capped() {
        assert_eq!(parse_timeout("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_timeout("30days"), Ok(Duration::from_secs(30 * 24 * 3600)));
        let over = parse_timeout("31days").unwrap_err();
        assert!(over.contains("over the 30 days"), "{over}");
        assert!(parse_timeout("soon").is_err());
    }
}
