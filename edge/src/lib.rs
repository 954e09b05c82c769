//! `burrow-edge`: terminates public HTTP and forwards each request over a live tunnel connection.
//!
//! # Layout — in layers, lowest first (a layer names only the ones below it)
//!
//! - [`metrics`], [`rate_limit`]: counters and limits every layer uses.
//! - [`control::store`]: the key-value store (revisions, watches, leases).
//! - [`plugins`]: the WebAssembly plugin host (wasmtime components, `wit/plugin.wit`).
//! - [`pools`]: load-balanced pools: steering and origin health.
//! - [`route_table`]: the immutable hostname → tunnel or pool snapshot behind one `ArcSwap`.
//! - [`dataplane`]: what a visitor's request meets, in order: shards → listener → request
//!   checks → proxy phases → registry → tunnel stream; errors answered by `respond`.
//! - [`control`]: accounts, tunnels, routes, zones, plugins in the store; the `/v1` API; config
//!   sync (watch → build the table off the hot path → swap).
//! - [`admin`]: `/metrics` and `/ready` for operators; [`cli`]: the `burrow-edge` command line.
//!
//! [`EdgeState`] (below) is what every task of one edge shares; [`run`] serves until shutdown.

// The public connection future (hyper auto + upgrades + TLS inside select!) is deep enough that
// proving it Send exceeds the default limit on newer compilers.
#![recursion_limit = "256"]

pub mod admin;
pub mod cli;
pub mod control;
pub mod dataplane;
pub mod hostname;
pub mod metrics;
pub mod plugins;
pub mod pools;
pub mod rate_limit;
pub mod route_table;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use burrow_protocol::Limits;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::control::config_sync;
use crate::control::resources::ControlPlane;
use crate::dataplane::registry::Registry;
use crate::dataplane::tls::TlsIdentity;
use crate::dataplane::{listener, registry, shards, tunnel_server};
use crate::metrics::Metrics;
use crate::plugins::host::PluginHost;
use crate::rate_limit::{AuthFailures, Limiter};
use crate::route_table::RouteTable;

/// Validated settings of one edge node.
#[derive(Clone)]
pub struct EdgeConfig {
    /// Name of this node, reported to connectors and in `tunnel info`.
    pub node_name: String,
    /// Operator-chosen location label (e.g. `fra1`).
    pub location: String,
    pub tls: TlsIdentity,
    /// Tunnel addresses handed to connectors in `Registered.edges`.
    pub advertised_edges: Vec<String>,
    /// How long to wait for the origin's response head (then 504).
    pub origin_timeout: Duration,
    /// A request body that sends nothing for this long is cut (408 if no response has started).
    pub request_body_idle_timeout: Duration,
    /// A request body must arrive within this time unless the response has started: a client
    /// dripping a byte a minute would otherwise hold a stream to the origin forever.
    pub request_body_timeout: Duration,
    /// A new tunnel connection must register within this time.
    pub registration_timeout: Duration,
    /// A tunnel connection with no packets for this long is dead.
    pub tunnel_idle_timeout: Duration,
    /// On shutdown, how long in-flight requests may take to finish.
    pub grace_period: Duration,
    pub limits: Limits,
    /// Public connections served at once; more get a 503 and are closed.
    pub max_connections: usize,
    pub connection_timeouts: ConnectionTimeouts,
    /// Compiled plugins that routes may bind by name.
    pub plugins: Option<Arc<PluginHost>>,
    /// Tunnel registrations accepted per source address per minute.
    pub registrations_per_minute: u32,
    /// Where the edge keeps state (config snapshot); `None` keeps nothing on disk.
    pub data_dir: Option<std::path::PathBuf>,
    /// Accounts may claim zones themselves, proven by a DNS TXT record.
    pub self_service_zones: bool,
    /// The DNS server those TXT records are asked of; `None`: the system's resolvers.
    pub dns_server: Option<std::net::SocketAddr>,
    /// Proxies in front of the API whose `X-Forwarded-For` names the real client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Live connections one tunnel may hold on this edge.
    pub max_connections_per_tunnel: usize,
}

impl EdgeConfig {
    /// Defaults for everything but the identity.
    pub fn new(node_name: impl Into<String>, tls: TlsIdentity) -> Self {
        Self {
            node_name: node_name.into(),
            location: "local".into(),
            tls,
            advertised_edges: Vec::new(),
            origin_timeout: Duration::from_secs(100),
            request_body_idle_timeout: Duration::from_secs(60),
            request_body_timeout: Duration::from_secs(300),
            registration_timeout: Duration::from_secs(5),
            tunnel_idle_timeout: Duration::from_secs(10),
            grace_period: Duration::from_secs(30),
            limits: Limits::default(),
            data_dir: None,
            max_connections: 10_000,
            connection_timeouts: ConnectionTimeouts::default(),
            plugins: None,
            registrations_per_minute: 600,
            self_service_zones: false,
            dns_server: None,
            trusted_proxies: Vec::new(),
            max_connections_per_tunnel: 100,
        }
    }
}

/// How long a public connection may take over each phase, and live.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionTimeouts {
    /// A request head must arrive within this (also bounds an idle HTTP/1 keep-alive wait).
    pub header_read: Duration,
    pub tls_handshake: Duration,
    /// A connection on which no request started for this long is closed gracefully: HTTP/2
    /// pings alone would keep an idle one open, and its slot taken, until `max_age`.
    pub idle: Duration,
    /// Every connection is closed gracefully at this age, after its in-flight requests.
    pub max_age: Duration,
}

impl Default for ConnectionTimeouts {
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(30),
            tls_handshake: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            max_age: Duration::from_secs(3600),
        }
    }
}

/// Sockets the edge serves on; bound by the caller (port 0 in tests).
pub struct Listeners {
    /// One set per thread serving traffic, from [`shards::bind`]; at least one.
    pub shards: Vec<shards::ShardSockets>,
    /// `/metrics` and `/ready`, for the operator.
    pub admin: Option<TcpListener>,
    /// The `/v1` API, for tenants (and edge-only nodes).
    pub api: Option<control::api::ApiListener>,
    /// The link to the other edges, for an edge of a cluster.
    pub cluster: Option<control::cluster::ClusterConfig>,
}

/// State shared by every task of one edge.
pub struct EdgeState {
    pub config: EdgeConfig,
    /// The current routing snapshot. Swapped whole; never mutated.
    pub routes: ArcSwap<RouteTable>,
    pub registry: Registry,
    pub metrics: Metrics,
    /// The control plane, when this edge serves from a store (not a tunnels file).
    pub control: Option<ControlPlane>,
    /// This edge's store lease (0 = none yet); connection records are attached to it.
    pub node_lease: AtomicU64,
    /// Failed API authentications per client network and per token id.
    pub auth_failures: AuthFailures,
    /// Tunnel registrations per source network.
    pub registrations: Limiter,
    /// Writes applied config snapshots to the data directory (started on the first one).
    pub snapshot_writer: std::sync::OnceLock<config_sync::SnapshotWriter>,
    /// Public connections open, over every listener and shard (`max_connections`).
    pub connection_slots: Arc<tokio::sync::Semaphore>,
    /// The link to the other edges of a cluster, once it is up (see [`dataplane::peers`]).
    pub peers: arc_swap::ArcSwapOption<dataplane::peers::Peers>,
    /// Bumped by every table swap: a registration for a tunnel the table does not hold yet
    /// waits on it (the config may be a moment behind the store).
    table_swaps: tokio::sync::watch::Sender<u64>,
    /// Whether the table came from a config (file, snapshot, store) rather than being the empty
    /// one an edge starts with before its control plane answered: `/ready` says so.
    configured: std::sync::atomic::AtomicBool,
}

impl EdgeState {
    /// An edge serving `table` (from a tunnels file or a test).
    pub fn new(config: EdgeConfig, table: RouteTable) -> Arc<Self> {
        Self::with_control(config, Some(table), None)
    }

    /// An edge that starts from `table` (the last snapshot, if any: `None` means it has no
    /// config until its control plane answers) and follows `control`.
    pub fn with_control(config: EdgeConfig, table: Option<RouteTable>, control: Option<ControlPlane>) -> Arc<Self> {
        let registrations = Limiter::per_minute(config.registrations_per_minute);
        let metrics = Metrics::new(config.plugins.as_ref().map(|host| &host.metrics));
        let configured = table.is_some();
        Arc::new(Self {
            routes: ArcSwap::from_pointee(table.unwrap_or_default()),
            registry: Registry::default(),
            metrics,
            control,
            node_lease: AtomicU64::new(0),
            auth_failures: AuthFailures::default(),
            registrations,
            snapshot_writer: Default::default(),
            connection_slots: Arc::new(tokio::sync::Semaphore::new(config.max_connections)),
            peers: Default::default(),
            table_swaps: tokio::sync::watch::channel(0).0,
            configured: std::sync::atomic::AtomicBool::new(configured),
            config,
        })
    }

    /// Where connectors reach this edge (`--advertise`), then the other nodes of its cluster:
    /// what they are told to spread their connections over.
    pub fn tunnel_addrs(&self) -> Vec<String> {
        let mut addrs = self.config.advertised_edges.clone();
        if let Some(peers) = self.peers.load_full() {
            let others = peers
                .view
                .load()
                .tunnel_addrs(&self.config.node_name, &self.config.location);
            for addr in others {
                if !addrs.contains(&addr) {
                    addrs.push(addr);
                }
            }
        }
        addrs
    }

    /// A tunnel as the store holds it, for a registration the table cannot answer yet.
    pub async fn stored_tunnel(
        &self,
        account: burrow_protocol::AccountId,
        tunnel: burrow_protocol::TunnelId,
    ) -> tunnel_server::StoredTunnel {
        use tunnel_server::StoredTunnel;
        let Some(cp) = &self.control else {
            return StoredTunnel::NoStore;
        };
        match cp.find_tunnel(account, &tunnel.to_string()).await {
            Ok(stored) => match control::resources::Snapshot::tunnel_record(&stored) {
                Ok(record) => StoredTunnel::Found(record),
                Err(_) => StoredTunnel::Unknown,
            },
            Err(control::resources::CpError::NotFound(_)) => StoredTunnel::Unknown,
            Err(e) => StoredTunnel::Unavailable(e.to_string()),
        }
    }

    /// Whether the edge serves a config yet (see [`EdgeState::with_control`]).
    pub fn is_configured(&self) -> bool {
        self.configured.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Wait up to `timeout` for the table to hold `tunnel`; whether it does.
    pub async fn wait_for_tunnel(&self, tunnel: &burrow_protocol::TunnelId, timeout: Duration) -> bool {
        let mut swaps = self.table_swaps.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.routes.load().tunnel(tunnel).is_some() {
                return true;
            }
            match tokio::time::timeout_at(deadline, swaps.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return self.routes.load().tunnel(tunnel).is_some(),
            }
        }
    }

    /// Replace the routing snapshot. Requests in flight finish on the table they loaded.
    pub fn swap_routes(&self, mut table: RouteTable) {
        table.inherit_health(&self.routes.load());
        tracing::info!(
            routes = table.route_count(),
            tunnels = table.tunnel_count(),
            "route table swapped"
        );
        self.metrics.retain_pools(table.pools().iter().flat_map(|p| {
            let account = p.account.to_string();
            p.origin_names
                .iter()
                .map(move |o| (account.clone(), p.name.as_str(), o.as_str()))
        }));
        self.routes.store(Arc::new(table));
        self.configured.store(true, std::sync::atomic::Ordering::Relaxed);
        self.table_swaps.send_modify(|n| *n += 1);
        // A tunnel that left the table (deleted, revoked) loses its connections now, and so do
        // connections that proved a secret the tunnel no longer has.
        let table = self.routes.load();
        for conn in self.registry.all() {
            if let Some(why) = registry::revoked(&table, &conn.info) {
                tracing::info!(tunnel = %conn.info.tunnel, "{why}; closing its connection");
                self.registry.remove(conn.info.tunnel, conn.info.connection_id);
                conn.quic
                    .close(burrow_protocol::error_code::TUNNEL_REVOKED.into(), why.as_bytes());
            }
        }
    }
}

/// Serve until `shutdown` fires, then drain: connectors are told to move, in-flight requests
/// get `grace_period` to finish. Every shard is served on a thread of its own ([`shards`]); the
/// caller's runtime does the control work.
pub async fn run(state: Arc<EdgeState>, listeners: Listeners, shutdown: CancellationToken) -> Result<()> {
    let public_tls = match listeners.shards.iter().any(|s| s.https.is_some()) {
        true => Some(tokio_rustls::TlsAcceptor::from(
            state.config.tls.public_server_config()?,
        )),
        false => None,
    };
    let secret: Arc<[u8]> = tunnel_server::endpoint_secret(state.config.data_dir.as_deref())?.into();
    // The UDP group stays whole until every shard has stopped: a socket leaving it renumbers the
    // others, and packets for a shard still draining would reach another, which resets them.
    let group = listeners
        .shards
        .iter()
        .map(|s| s.tunnel.try_clone())
        .collect::<std::io::Result<Vec<_>>>()
        .context("keeping the tunnel sockets open until shutdown")?;
    let count = listeners.shards.len();
    let mut tasks: tokio::task::JoinSet<Result<()>> = tokio::task::JoinSet::new();
    for (shard, sockets) in listeners.shards.into_iter().enumerate() {
        let serve = serve_shard(
            state.clone(),
            sockets,
            public_tls.clone(),
            (secret.clone(), shard, count),
            shutdown.clone(),
        );
        let serve = async move {
            shards::enter(shard);
            serve.await
        };
        let thread = burrow_shared::threads::spawn(format!("burrow-shard-{shard}"), serve);
        tasks.spawn(thread.inspect_err(|_| shutdown.cancel())?);
    }
    // Traffic shards do only traffic: the control work below (health monitors, liveness,
    // config follow with its table builds and plugin compiles, the API) runs on the caller's
    // runtime, its own thread, so none of it is ever on a visitor's request path.
    tasks.spawn(never_fails(control::health_monitor::run(
        state.clone(),
        shutdown.clone(),
    )));
    tasks.spawn(never_fails(registry::watch_liveness(state.clone(), shutdown.clone())));
    tasks.spawn(never_fails(prune_limits(state.clone(), shutdown.clone())));
    if let (Some(_), Some(dir)) = (&state.control, state.config.data_dir.clone()) {
        tasks.spawn(never_fails(config_sync::follow(state.clone(), dir, shutdown.clone())));
    }
    if let Some(admin) = listeners.admin {
        tasks.spawn(never_fails(admin::serve(admin, state.clone(), shutdown.clone())));
    }
    if let Some(api) = listeners.api {
        tasks.spawn(never_fails(control::api::serve(api, state.clone(), shutdown.clone())));
    }
    if let Some(cluster) = listeners.cluster {
        tasks.spawn(never_fails(control::cluster::run(
            state.clone(),
            cluster,
            shutdown.clone(),
        )));
    }
    // A shard that cannot start stops the whole edge.
    let result = burrow_shared::threads::first_error(tasks, &shutdown).await;
    drop(group);
    result
}

/// Forget rate-limit state that no longer limits anyone, once a minute.
async fn prune_limits(state: Arc<EdgeState>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(60)) => {
                state.registrations.prune();
                state.auth_failures.prune();
            }
            () = shutdown.cancelled() => return,
        }
    }
}

async fn never_fails(task: impl Future<Output = ()>) -> Result<()> {
    task.await;
    Ok(())
}

/// One shard: its QUIC endpoint and its public listeners, on the runtime it is polled on.
async fn serve_shard(
    state: Arc<EdgeState>,
    sockets: shards::ShardSockets,
    tls: Option<tokio_rustls::TlsAcceptor>,
    (secret, shard, count): (Arc<[u8]>, usize, usize),
    shutdown: CancellationToken,
) -> Result<()> {
    let endpoint = tunnel_server::endpoint(&state.config, sockets.tunnel, &secret, (shard, count))
        .context("starting tunnel listener")?;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(tunnel_server::serve(endpoint, state.clone(), shutdown.clone()));
    if let Some(http) = sockets.http {
        let http = TcpListener::from_std(http).context("registering --http")?;
        tasks.spawn(listener::serve(http, None, state.clone(), shutdown.clone()));
    }
    if let (Some(https), Some(tls)) = (sockets.https, tls) {
        let https = TcpListener::from_std(https).context("registering --https")?;
        tasks.spawn(listener::serve(https, Some(tls), state.clone(), shutdown.clone()));
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    /// The layers of the crate, lowest first, by the paths that name them.
    const LAYERS: &[&[&str]] = &[
        &["metrics", "rate_limit", "hostname"],
        &["control::store"],
        &["plugins"],
        &["pools"],
        &["route_table"],
        &["dataplane"],
        &["control"],
        &["admin", "cli"],
    ];

    /// The layer of a module path under `crate::` (the longest match wins: `control::store`).
    fn layer_of(path: &str) -> Option<usize> {
        LAYERS
            .iter()
            .enumerate()
            .flat_map(|(layer, names)| names.iter().map(move |name| (layer, *name)))
            .filter(|(_, name)| path == *name || path.starts_with(&format!("{name}::")))
            .max_by_key(|(_, name)| name.len())
            .map(|(layer, _)| layer)
    }

    /// Lower layers never name higher ones (comments aside): the request path reads top-down and
    /// there is no import circle between layers.
    #[test]
    fn lower_layers_never_name_higher_ones() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![src.clone()];
        let mut violations = Vec::new();
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            let module = path.strip_prefix(&src).unwrap().with_extension("");
            let module = module.to_str().unwrap().replace('/', "::").replace("::mod", "");
            let Some(own) = layer_of(&module) else { continue };
            for (n, line) in std::fs::read_to_string(&path).unwrap().lines().enumerate() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                for used in line.split("crate::").skip(1) {
                    let name: String = used
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                        .collect();
                    if let Some(theirs) = layer_of(name.trim_end_matches(':')).filter(|l| *l > own) {
                        violations.push(format!(
                            "{module}:{} (layer {own}) names {name} (layer {theirs})",
                            n + 1
                        ));
                    }
                }
            }
        }
        assert!(violations.is_empty(), "{violations:#?}");
    }
}
