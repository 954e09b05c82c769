//! The `burrow` command line (cloudflared's verbs where they overlap).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use burrow_protocol::{ConnectorId, Limits, TunnelId};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config_file::ConfigFile;
use crate::manage::{self, Output};
use burrow_shared::files::burrow_home;
use burrow_tunnel::credentials::{Credentials, CredentialsFile};
use burrow_tunnel::ingress::{Ingress, Service};
use burrow_tunnel::origin::Origins;
use burrow_tunnel::tunnel_client::{self, Status, TunnelOptions};

#[derive(Parser)]
#[command(
    name = "burrow",
    version,
    about = "Burrow connector: serve a local origin through a named tunnel"
)]
struct Cli {
    #[command(flatten)]
    log: burrow_shared::logging::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Save the control-plane API address and token to $BURROW_HOME/cert.json.
    Login {
        /// API base URL, e.g. http://edge.example.com:9090
        #[arg(long)]
        api: String,
        /// API token (from `burrow-edge account create`).
        #[arg(long, env = "BURROW_TOKEN", hide_env_values = true)]
        token: String,
        /// CA certificate (PEM) of the API when its certificate is not publicly trusted; kept
        /// with the login.
        #[arg(long, value_name = "FILE")]
        api_ca: Option<PathBuf>,
    },
    /// Work with named tunnels.
    Tunnel(TunnelArgs),
    /// Load-balanced pools of tunnels: origins, steering, health checks, fallback.
    #[command(subcommand)]
    Pool(crate::pools::PoolCommand),
    /// WebAssembly plugins: upload, list, delete.
    #[command(subcommand)]
    Plugin(crate::plugins::PluginCommand),
    /// Hostname routes: their plugin chains.
    #[command(subcommand)]
    Route(crate::plugins::RouteCommand),
    /// Zones: the domains your account may route hostnames under.
    #[command(subcommand)]
    Zone(ZoneCommand),
}

#[derive(Subcommand)]
enum ZoneCommand {
    /// Your zones, and the claims waiting for their DNS TXT record.
    List {
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Claim a zone (where the edge allows it): prints the TXT record that proves it is yours.
    Add { zone: String },
    /// Check a claim's TXT record: the zone becomes yours.
    Verify { zone: String },
    /// Give a zone up (refused while it routes hostnames, unless --force).
    Delete {
        zone: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
struct TunnelArgs {
    /// Config file with ingress rules, before or after the subcommand (`burrow tunnel --config F
    /// run`, as with cloudflared) [default: the first config.yml or config.yaml in $BURROW_HOME,
    /// /etc/burrow, /usr/local/etc/burrow].
    #[arg(long, env = "BURROW_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: TunnelCommand,
}

#[derive(Subcommand)]
enum TunnelCommand {
    /// Connect to the edge and serve the tunnel until interrupted (SIGINT/SIGTERM drain gracefully).
    Run(RunArgs),
    /// Check or try the ingress rules of a config file.
    #[command(subcommand)]
    Ingress(IngressCommand),
    /// Create a named tunnel; writes its credentials to $BURROW_HOME/<UUID>.json.
    Create { name: String },
    /// List your tunnels and their connections.
    List {
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Show a tunnel's live connections.
    Info {
        /// Tunnel name or UUID.
        tunnel: String,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Delete a tunnel and its routes (refused while connections are live, unless --force).
    Delete {
        tunnel: String,
        #[arg(long)]
        force: bool,
    },
    /// Drop a tunnel's stale connection records.
    Cleanup { tunnel: String },
    /// Print a token holding the tunnel's credentials, for `burrow tunnel run --token` (e.g. in a
    /// container's environment). It is as secret as the credentials file.
    Token {
        /// Tunnel name or UUID (its credentials file must be in $BURROW_HOME, or given).
        tunnel: Option<String>,
        /// The tunnel's credentials file, if it is not in $BURROW_HOME.
        #[arg(long, env = "BURROW_CREDENTIALS_FILE")]
        credentials_file: Option<PathBuf>,
    },
    /// Route hostnames to a tunnel.
    #[command(subcommand)]
    Route(RouteCommand),
}

#[derive(Subcommand)]
enum RouteCommand {
    /// Route HOSTNAME (exact or *.domain) to TUNNEL.
    Dns {
        tunnel: String,
        hostname: String,
        /// Move the hostname from another of your tunnels.
        #[arg(long)]
        overwrite_dns: bool,
    },
    /// The hostnames you route, and to which tunnel or pool.
    List {
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Stop routing HOSTNAME (its plugin chain goes with it).
    Delete { hostname: String },
    /// Route HOSTNAME to POOL and add TUNNEL to the pool (creating the pool if needed).
    Lb {
        tunnel: String,
        hostname: String,
        pool: String,
        /// Move the hostname from another of your tunnels or pools.
        #[arg(long)]
        overwrite_dns: bool,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Tunnel name or UUID (else `tunnel:` from the config file).
    tunnel: Option<String>,
    /// Serve every request from this one origin instead of ingress rules (e.g.
    /// http://localhost:8000); not with --config.
    #[arg(long)]
    url: Option<String>,
    /// Tunnel credentials file [default: $BURROW_HOME/<TUNNEL-UUID>.json].
    #[arg(long, env = "BURROW_CREDENTIALS_FILE", conflicts_with = "token")]
    credentials_file: Option<PathBuf>,
    /// The credentials as a token (from `burrow tunnel token`), instead of a file.
    #[arg(long, env = "BURROW_TUNNEL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Edge tunnel address HOST:PORT; repeat for several [default: the edges in the credentials file].
    #[arg(long = "edge", value_name = "HOST:PORT")]
    edges: Vec<String>,
    /// Number of connections to keep open to the edges [default: 4].
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=16))]
    ha_connections: Option<u8>,
    /// On shutdown, how long in-flight requests may take [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    grace_period: Option<Duration>,
    /// Serve /ready and /metrics on this address (e.g. 127.0.0.1:2000).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Threads serving traffic [default: half the CPUs, at least one: the connector shares its
    /// machine with the origin it serves], at most one per connection. Each serves its share of
    /// the connections with origin connection pools of its own.
    #[arg(long, env = "BURROW_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
}

#[derive(Subcommand)]
enum IngressCommand {
    /// Validate the ingress rules of a config file and list them.
    Validate,
    /// Show which rule a URL would match.
    Rule {
        /// e.g. https://app.example.com/api/users
        url: String,
    },
}

/// Entry point of the `burrow` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    if !matches!(
        cli.command,
        Command::Tunnel(TunnelArgs {
            command: TunnelCommand::Run(_),
            ..
        })
    ) {
        die_quietly_on_closed_stdout();
    }
    let result = match cli.command {
        Command::Login { api, token, api_ca } => manage::login(api, token, api_ca.as_deref()),
        Command::Tunnel(TunnelArgs { config, command }) => tunnel(command, config),
        Command::Pool(command) => crate::pools::run(command),
        Command::Plugin(command) => crate::plugins::run(command),
        Command::Route(command) => crate::plugins::run_route(command),
        Command::Zone(ZoneCommand::List { output }) => manage::zones(output),
        Command::Zone(ZoneCommand::Add { zone }) => manage::zone_add(&zone),
        Command::Zone(ZoneCommand::Verify { zone }) => manage::zone_verify(&zone),
        Command::Zone(ZoneCommand::Delete { zone, force }) => manage::zone_delete(&zone, force),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn tunnel(command: TunnelCommand, config: Option<PathBuf>) -> Result<()> {
    match command {
        TunnelCommand::Run(args) => run_tunnel(args, config),
        TunnelCommand::Ingress(IngressCommand::Validate) => validate(config),
        TunnelCommand::Ingress(IngressCommand::Rule { url }) => rule(&url, config),
        TunnelCommand::Create { name } => manage::create(&name),
        TunnelCommand::List { output } => manage::list(output),
        TunnelCommand::Info { tunnel, output } => manage::info(&tunnel, output),
        TunnelCommand::Delete { tunnel, force } => manage::delete(&tunnel, force),
        TunnelCommand::Cleanup { tunnel } => manage::cleanup(&tunnel),
        TunnelCommand::Token {
            tunnel,
            credentials_file,
        } => token(tunnel.as_deref(), credentials_file),
        TunnelCommand::Route(RouteCommand::Dns {
            tunnel,
            hostname,
            overwrite_dns,
        }) => manage::route_dns(&tunnel, &hostname, overwrite_dns),
        TunnelCommand::Route(RouteCommand::List { output }) => manage::route_list(output),
        TunnelCommand::Route(RouteCommand::Delete { hostname }) => manage::route_delete(&hostname),
        TunnelCommand::Route(RouteCommand::Lb {
            tunnel,
            hostname,
            pool,
            overwrite_dns,
        }) => crate::pools::route_lb(&tunnel, &hostname, &pool, overwrite_dns),
    }
}

fn run_tunnel(args: RunArgs, config: Option<PathBuf>) -> Result<()> {
    let config = match (&config, &args.url) {
        (Some(_), Some(_)) => anyhow::bail!(
            "--url and --config cannot be used together: --url serves one origin, the config file's \
             ingress rules say which origin serves which hostname"
        ),
        (Some(path), None) => ConfigFile::load(path)?,
        (None, None) => default_config()?.unwrap_or_default(),
        (None, Some(_)) => ConfigFile::default(),
    };
    let ingress = match &args.url {
        Some(url) => {
            let service = Service::parse(url).map_err(|e| anyhow::anyhow!("--url {url}: {e}"))?;
            Ingress::single(service, config.origin_request.resolve())
        }
        None if config.ingress.is_empty() => anyhow::bail!(
            "nothing to serve: pass --url http://localhost:PORT, or --config FILE with ingress rules \
             (see docs/tunnel-users.md)"
        ),
        None => config.ingress()?,
    };
    let credentials = match &args.token {
        Some(token) => Credentials::from_token(token).map_err(anyhow::Error::msg)?,
        None => {
            let tunnel = args.tunnel.or_else(|| config.tunnel.clone());
            let explicit = args.credentials_file.or(config.credentials_file.clone());
            Credentials::load(&credentials_path(explicit, tunnel.as_deref())?)?
        }
    };
    let edges = [args.edges, config.edge.clone(), credentials.edges.clone()]
        .into_iter()
        .find(|e| !e.is_empty());
    let options = TunnelOptions {
        edges: edges.unwrap_or_default(),
        ha_connections: args.ha_connections.or(config.ha_connections).unwrap_or(4),
        grace_period: args
            .grace_period
            .or(config.grace_period)
            .unwrap_or(Duration::from_secs(30)),
        connector_id: ConnectorId::new_random(),
        limits: Limits::default(),
        threads: args.worker_threads.map_or_else(default_worker_threads, usize::from),
    };
    let metrics = args.metrics.or(config.metrics);
    for rule in &ingress.rules {
        tracing::info!("ingress {}", rule.describe());
    }

    // This thread serves the first share of the connections; `tunnel_client::run` starts the
    // other threads.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(on_signal(shutdown.clone()));
        let status = Arc::new(Status::default());
        if let Some(addr) = metrics {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding --metrics {addr}"))?;
            let connector = options.connector_id.to_string();
            tokio::spawn(crate::status::serve(
                listener,
                status.clone(),
                connector,
                shutdown.clone(),
            ));
        }
        let origins = Arc::new(Origins::new(ingress, options.limits)?);
        tunnel_client::run(credentials, origins, options, status, shutdown).await
    })
}

/// First SIGINT/SIGTERM: drain gracefully. Second: exit now.
async fn on_signal(shutdown: CancellationToken) {
    burrow_shared::signals::wait_for_signal().await;
    tracing::info!("shutting down: finishing in-flight requests (signal again to exit now)");
    shutdown.cancel();
    burrow_shared::signals::wait_for_signal().await;
    tracing::warn!("second signal: exiting without waiting");
    std::process::exit(130);
}

/// Half the CPUs, at least one. The connector runs beside its origin, which needs cores too: on
/// a 2-core machine under load, one worker instead of two took the tunnel's CPU per request
/// from ~45 to ~39 µs and added throughput (docs/performance.md, "Worker threads").
fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// Where a config file is looked for without --config, in this order, as cloudflared does
/// (`BURROW_CONFIG_ROOT` stands for `/`, for tests and chroots).
fn config_candidates() -> Vec<PathBuf> {
    let root = std::env::var_os("BURROW_CONFIG_ROOT").map_or_else(|| PathBuf::from("/"), PathBuf::from);
    let dirs = [
        burrow_home(),
        root.join("etc/burrow"),
        root.join("usr/local/etc/burrow"),
    ];
    dirs.iter()
        .flat_map(|dir| [dir.join("config.yml"), dir.join("config.yaml")])
        .collect()
}

/// The first config file of [`config_candidates`] that exists, saying which it is.
fn default_config() -> Result<Option<ConfigFile>> {
    let Some(path) = config_candidates().into_iter().find(|p| p.exists()) else {
        return Ok(None);
    };
    tracing::info!(path = %path.display(), "using the config file");
    Ok(Some(ConfigFile::load(&path)?))
}

fn load_config(path: Option<PathBuf>) -> Result<ConfigFile> {
    match path {
        Some(path) => Ok(ConfigFile::load(&path)?),
        None => default_config()?.with_context(|| {
            let looked: Vec<String> = config_candidates().iter().map(|p| p.display().to_string()).collect();
            format!("no config file: pass --config FILE (looked for {})", looked.join(", "))
        }),
    }
}

/// The explicit file, else `$BURROW_HOME/<uuid>.json` for a tunnel given by UUID, else the one
/// credentials file in `$BURROW_HOME` whose tunnel has that name.
fn credentials_path(explicit: Option<PathBuf>, tunnel: Option<&str>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(expand_home(path));
    }
    let tunnel = tunnel.context("which tunnel? pass its name or UUID, or --credentials-file FILE")?;
    if let Ok(id) = tunnel.parse::<TunnelId>() {
        return Ok(Credentials::default_path(id));
    }
    // Logged in: the API says which tunnel the name means now; its credentials file is named
    // after its UUID. (A file found by name may be left from a deleted tunnel of that name.)
    match manage::resolve_tunnel_id(tunnel)? {
        manage::Resolved::Id(id) => return Ok(Credentials::default_path(id)),
        manage::Resolved::NotFound => anyhow::bail!(
            "your account has no tunnel named {tunnel:?}: see `burrow tunnel list`, or create it with \
             `burrow tunnel create {tunnel}`"
        ),
        manage::Resolved::Unknown(Some(e)) => {
            tracing::warn!(
                "cannot ask the API which tunnel {tunnel:?} is ({e:#}); looking for its credentials file by name"
            )
        }
        manage::Resolved::Unknown(None) => {}
    }
    if let Some(path) = find_by_name(&burrow_home(), tunnel)? {
        return Ok(path);
    }
    anyhow::bail!(
        "no credentials for a tunnel named {tunnel:?} in {}; pass --credentials-file FILE",
        burrow_home().display()
    )
}

/// `burrow pool show web | head` closes our stdout early: like any Unix filter, stop quietly
/// (SIGPIPE's default) instead of panicking in `println!`, which Rust's ignored SIGPIPE would
/// make it do. Not for `tunnel run`: there a closed socket to an origin must be an error, not the
/// end of the process.
#[allow(unsafe_code, reason = "restoring SIGPIPE's default disposition has no safe API")]
fn die_quietly_on_closed_stdout() {
    // SAFETY: called once at start, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// `burrow tunnel token`: the credentials file as one string. The secret exists only in that
/// file (the control plane keeps a hash), so the file must be here.
fn token(tunnel: Option<&str>, credentials_file: Option<PathBuf>) -> Result<()> {
    let path = credentials_path(credentials_file, tunnel)?;
    let credentials = Credentials::load(&path).map_err(|e| {
        e.context(
            "a tunnel token holds the tunnel's secret, which only its credentials file has (written \
             by `burrow tunnel create` on the machine that created it): run `burrow tunnel token` \
             there, or pass that file with --credentials-file FILE",
        )
    })?;
    println!("{}", credentials.to_token());
    Ok(())
}

/// `~/x` → `$HOME/x`, as cloudflared configs write it.
fn expand_home(path: PathBuf) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path,
    }
}

fn find_by_name(dir: &Path, name: &str) -> Result<Option<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(None);
    };
    for entry in entries.flatten().take(10_000) {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json")
            && let Ok(creds) = Credentials::load(&path)
            && creds.tunnel_name == name
        {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

fn validate(config: Option<PathBuf>) -> Result<()> {
    let ingress = load_config(config)?.ingress()?;
    println!("OK: {} ingress rule(s)", ingress.rules.len());
    for rule in &ingress.rules {
        println!("  {}", rule.describe());
    }
    Ok(())
}

fn rule(url: &str, config: Option<PathBuf>) -> Result<()> {
    let ingress = load_config(config)?.ingress()?;
    let uri: http::Uri = url.parse().with_context(|| format!("{url:?} is not a URL"))?;
    let host = uri
        .host()
        .context("the URL needs a host, e.g. https://app.example.com/path")?;
    let matched = ingress.find(host, uri.path());
    println!("Matched {}", matched.describe());
    Ok(())
}
