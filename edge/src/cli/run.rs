//! `burrow-edge run`: the flags, the config source (store, tunnels file or another node's
//! API), the listeners, and signals.

use super::store::StoreLocation;
use super::*;
use crate::control::cluster::ClusterConfig;

#[derive(Args)]
pub(super) struct ListenArgs {
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
    /// The link to the other edges of a cluster (UDP: QUIC with mutual TLS), which serve the
    /// tunnels connected here and forward here the ones connected elsewhere
    /// [default: 0.0.0.0:7845 with --store etcd://…, off otherwise].
    #[arg(long, value_name = "ADDR|off")]
    peer: Option<String>,
    /// Where the other edges reach --peer (HOST:PORT) [default: --peer's address when it names
    /// one, else the first --advertise host with --peer's port].
    #[arg(long, value_name = "HOST:PORT")]
    peer_advertise: Option<String>,
}

#[derive(Args)]
pub(super) struct RunArgs {
    #[command(flatten)]
    listen: ListenArgs,
    /// Serve tunnel records and routes from this YAML file instead of the store (no API).
    /// Re-read on SIGHUP; a file that fails to load is reported and the current table keeps serving.
    #[arg(long, env = "BURROW_TUNNELS_FILE", conflicts_with_all = ["control_plane", "store"])]
    tunnels: Option<PathBuf>,
    /// Run as an edge-only node: follow the control plane (API) of another edge at this URL
    /// instead of a local store, e.g. http://cp.internal:9090.
    #[arg(long, requires = "node_token", conflicts_with = "store")]
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
    #[command(flatten)]
    store: StoreArgs,
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

pub(super) async fn run(args: RunArgs) -> Result<()> {
    let dir = args.store.data_dir();
    let on_etcd = matches!(args.store.location()?, StoreLocation::Etcd(_)) && args.tunnels.is_none();
    let cluster = cluster_link(&args, on_etcd)?;
    let node_name = args.node_name.unwrap_or_else(host_name);
    let mut names = args.advertised.clone();
    names.push(node_name.clone());
    // Uploaded plugins come with a control plane (local store or remote); a tunnels file has
    // only the operator's.
    let plugins = load_plugins(&args.plugins, args.tunnels.is_none().then(|| dir.join("plugins"))).await?;
    let (table, control) = match (&args.tunnels, &args.control_plane) {
        (Some(file), _) => (Some(TunnelsFile::load(file)?.to_table()?), None),
        (None, Some(_)) => (snapshot_table(&dir, plugins.as_ref()).await?, None),
        (None, None) => open_control_plane(&args.store, plugins.as_ref()).await?,
    };
    let tls = match (&args.tls_cert, &args.tls_key, &control) {
        (Some(cert), Some(key), _) => TlsIdentity::from_pem_files(cert, key)?,
        (_, _, Some(cp)) if on_etcd => {
            crate::control::cluster::edge_identity(cp, &dir, &self_signed_names(&names)).await?
        }
        _ => TlsIdentity::self_signed_in(&dir, &self_signed_names(&names))?,
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
        cluster,
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

/// The inter-edge link of an edge on etcd (`--peer`, `--peer-advertise`).
fn cluster_link(args: &RunArgs, on_etcd: bool) -> Result<Option<ClusterConfig>> {
    let addr = match args.listen.peer.as_deref() {
        Some("off") => return Ok(None),
        None if !on_etcd => return Ok(None),
        None => "0.0.0.0:7845".parse()?,
        Some(addr) => addr
            .parse::<SocketAddr>()
            .with_context(|| format!("--peer {addr:?}: expected IP:PORT or off"))?,
    };
    anyhow::ensure!(
        on_etcd,
        "--peer links the edges of a cluster: it needs --store etcd://…"
    );
    let socket =
        std::net::UdpSocket::bind(addr).with_context(|| format!("binding --peer {addr} (is another edge running?)"))?;
    let port = socket.local_addr()?.port();
    let advertise = match &args.listen.peer_advertise {
        Some(advertise) => advertise.clone(),
        None if !addr.ip().is_unspecified() => SocketAddr::new(addr.ip(), port).to_string(),
        None => {
            let host = args
                .advertised
                .first()
                .map(|a| burrow_shared::host_port::split(a).0.to_owned())
                .context(
                    "--peer listens on every address: say where other edges reach it with --peer-advertise HOST:PORT",
                )?;
            format!("{host}:{port}")
        }
    };
    Ok(Some(ClusterConfig {
        socket: Arc::new(socket),
        advertise,
    }))
}

/// The store, and the table to serve until it has been read: the last snapshot. If the store
/// cannot be opened, serve the snapshot alone (the control plane is down, the edge is not).
pub(super) async fn open_control_plane(
    store: &StoreArgs,
    plugins: Option<&Arc<PluginHost>>,
) -> Result<(Option<RouteTable>, Option<ControlPlane>)> {
    let table = snapshot_table(&store.data_dir(), plugins).await?;
    match store.open().await {
        Ok(store) => Ok((table, Some(ControlPlane::new(store)))),
        Err(StoreOpen::Lost(why)) => Err(why),
        Err(StoreOpen::Failed(e)) if table.is_some() => {
            tracing::error!("store unavailable ({e:#}); serving the last config snapshot without the API");
            Ok((table, None))
        }
        Err(StoreOpen::Failed(e)) => Err(e),
    }
}

/// Compile the `--plugin NAME=PATH` components (once, at start). With `cache_dir`, the host
/// also runs uploaded plugins, and keeps their compiled artifacts there.
pub(super) async fn load_plugins(specs: &[String], cache_dir: Option<PathBuf>) -> Result<Option<Arc<PluginHost>>> {
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
pub(super) async fn snapshot_table(dir: &Path, plugins: Option<&Arc<PluginHost>>) -> Result<Option<RouteTable>> {
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

/// SIGHUP reloads the tunnels file; SIGINT/SIGTERM drain and stop (a second one exits at once).
pub(super) async fn on_signals(state: Arc<EdgeState>, tunnels: Option<PathBuf>, shutdown: CancellationToken) {
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
fn reload(state: &EdgeState, tunnels: &Path) {
    match TunnelsFile::load(tunnels).and_then(|f| f.to_table()) {
        Ok(table) => state.swap_routes(table),
        Err(e) => tracing::error!("tunnels file not reloaded, the current table keeps serving: {e:#}"),
    }
}
