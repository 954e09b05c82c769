//! Test harness: real edges, connectors, origins and clients on loopback.
//!
//! Everything binds port 0 (or asks the OS for a free port when a child process must be told
//! one) and waits for readiness instead of sleeping. Nothing here stands in for the thing under
//! test: edges and connectors are the real libraries or the real binaries.
#![allow(
    clippy::unwrap_used,
    clippy::missing_panics_doc,
    reason = "test harness: a panic is a failed test"
)]

pub mod edges;
pub mod etcd;
pub mod exchanges;

pub use edges::{Ports, cli, edge_process, ok, served, shown_once};

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
pub use burrow_edge::ConnectionTimeouts;
use burrow_edge::control::resources::ControlPlane;
use burrow_edge::control::store::sqlite::SqliteStore;
use burrow_edge::control::tunnels_file::{RouteEntry, TunnelEntry, TunnelsFile, encode_hex};
use burrow_edge::dataplane::shards;
use burrow_edge::dataplane::tls::TlsIdentity;
use burrow_edge::route_table::{RouteTable, hash_secret};
use burrow_edge::{EdgeConfig, EdgeState, Listeners};
use burrow_protocol::{AccountId, ConnectorId, TunnelId, TunnelSecret};
use burrow_tunnel::credentials::Credentials;
use burrow_tunnel::ingress::{Ingress, OriginRequest, Service};
use burrow_tunnel::origin::Origins;
use burrow_tunnel::tunnel_client::{self, Status, TunnelOptions};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type used by test origins and clients.
pub type TestBody = BoxBody<Bytes, BoxError>;

pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Log to the test output when `RUST_LOG` is set.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Poll `check` until it holds or `timeout` passes (then panic with `what`).
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Tunnels and edges

/// A tunnel record for the edge and the matching credentials for a connector.
#[derive(Clone)]
pub struct TestTunnel {
    pub id: TunnelId,
    pub name: String,
    pub account: AccountId,
    pub secret: TunnelSecret,
}

impl TestTunnel {
    pub fn new(name: &str) -> Self {
        Self {
            id: TunnelId::new_random(),
            name: name.into(),
            account: AccountId::new_random(),
            secret: TunnelSecret::generate(),
        }
    }

    pub fn entry(&self) -> TunnelEntry {
        TunnelEntry {
            id: self.id,
            name: self.name.clone(),
            account: self.account,
            secret_sha256: encode_hex(&hash_secret(&self.secret)),
        }
    }
}

/// Tunnels file contents: the tunnels plus `(hostname, tunnel name)` routes.
pub fn tunnels_file(tunnels: &[&TestTunnel], routes: &[(&str, &str)]) -> TunnelsFile {
    TunnelsFile {
        pools: Vec::new(),
        tunnels: tunnels.iter().map(|t| t.entry()).collect(),
        routes: routes
            .iter()
            .map(|(h, t)| RouteEntry {
                hostname: (*h).into(),
                tunnel: Some((*t).into()),
                pool: None,
                plugins: Vec::new(),
            })
            .collect(),
    }
}

/// An edge running in this process on loopback ports chosen by the OS.
pub struct TestEdge {
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub tunnel: SocketAddr,
    /// `/metrics`, `/ready`.
    pub admin: SocketAddr,
    /// The `/v1` API.
    pub api: SocketAddr,
    pub state: Arc<EdgeState>,
    /// PEM of the edge's self-signed certificate (connectors and HTTPS clients pin it).
    pub ca_pem: String,
    shutdown: CancellationToken,
    task: JoinHandle<Result<()>>,
}

pub struct EdgeOptions {
    /// Plugin components to load: (name, path to .wasm).
    pub plugins: Vec<(&'static str, &'static str)>,
    pub max_connections: usize,
    pub registrations_per_minute: u32,
    pub tunnel_idle_timeout: Duration,
    pub origin_timeout: Duration,
    pub request_body_idle_timeout: Duration,
    pub request_body_timeout: Duration,
    pub grace_period: Duration,
    pub connection_timeouts: ConnectionTimeouts,
    pub registration_timeout: Duration,
    /// Serving threads (each with its own listeners and QUIC endpoint).
    pub shards: usize,
    /// Proxies in front of the API whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub max_connections_per_tunnel: usize,
}

impl Default for EdgeOptions {
    fn default() -> Self {
        Self {
            plugins: Vec::new(),
            max_connections: 10_000,
            registrations_per_minute: 600,
            tunnel_idle_timeout: Duration::from_secs(3),
            origin_timeout: Duration::from_secs(10),
            request_body_idle_timeout: Duration::from_secs(60),
            request_body_timeout: Duration::from_secs(300),
            grace_period: Duration::from_secs(5),
            connection_timeouts: ConnectionTimeouts::default(),
            registration_timeout: Duration::from_secs(5),
            // Two, so every test crosses the threads a multi-core edge runs.
            shards: 2,
            trusted_proxies: Vec::new(),
            max_connections_per_tunnel: 100,
        }
    }
}

impl TestEdge {
    pub async fn start(file: &TunnelsFile) -> Self {
        Self::start_with(file, EdgeOptions::default()).await
    }

    /// An edge serving from a SQLite store in `data_dir`, with the `/v1` API on `admin`.
    pub async fn start_with_store(data_dir: &Path) -> (Self, ControlPlane) {
        Self::start_with_store_options(data_dir, EdgeOptions::default()).await
    }

    pub async fn start_with_store_options(data_dir: &Path, options: EdgeOptions) -> (Self, ControlPlane) {
        let store = SqliteStore::open(&data_dir.join("store.db")).unwrap();
        let control = ControlPlane::new(store);
        let edge = Self::launch(None, Some(control.clone()), Some(data_dir.to_owned()), options).await;
        (edge, control)
    }

    /// An edge with a control plane (the API) that does not follow its store: its table changes
    /// only when a test swaps one in (to hold it behind the store on purpose).
    pub async fn start_behind(control: ControlPlane) -> Self {
        Self::launch(None, Some(control), None, EdgeOptions::default()).await
    }

    pub async fn start_with(file: &TunnelsFile, options: EdgeOptions) -> Self {
        Self::launch(Some(file.to_table().unwrap()), None, None, options).await
    }

    async fn launch(
        table: Option<RouteTable>,
        control: Option<ControlPlane>,
        data_dir: Option<PathBuf>,
        options: EdgeOptions,
    ) -> Self {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let tls = TlsIdentity::generate_self_signed(&names).unwrap();
        let ca_pem = tls.self_signed_pem.clone().unwrap();
        let mut config = EdgeConfig::new("test-edge", tls);
        config.tunnel_idle_timeout = options.tunnel_idle_timeout;
        config.origin_timeout = options.origin_timeout;
        config.request_body_idle_timeout = options.request_body_idle_timeout;
        config.request_body_timeout = options.request_body_timeout;
        config.grace_period = options.grace_period;
        config.connection_timeouts = options.connection_timeouts;
        config.registration_timeout = options.registration_timeout;
        config.data_dir = data_dir;
        config.max_connections = options.max_connections;
        config.registrations_per_minute = options.registrations_per_minute;
        config.trusted_proxies = options.trusted_proxies;
        config.max_connections_per_tunnel = options.max_connections_per_tunnel;
        // As `burrow-edge run`: a host for the operator's plugins, and for uploaded ones when
        // the edge has a store.
        if !options.plugins.is_empty() || control.is_some() {
            let mut host = burrow_edge::plugins::host::PluginHost::new().unwrap();
            for (name, path) in &options.plugins {
                host.load(name, &std::fs::read(path).unwrap()).await.unwrap();
            }
            if let (Some(_), Some(dir)) = (&control, &config.data_dir) {
                host.set_cache_dir(dir.join("plugins"));
            }
            config.plugins = Some(Arc::new(host));
        }
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let addresses = shards::Addresses {
            http: Some(any),
            https: Some(any),
            tunnel: any,
        };
        let sockets = shards::bind(addresses, options.shards).unwrap();
        let admin = TcpListener::bind(any).await.unwrap();
        let api = TcpListener::bind(any).await.unwrap();
        let api_addr = api.local_addr().unwrap();
        let first = &sockets[0];
        let (http_addr, https_addr, tunnel_addr, admin_addr) = (
            first.http.as_ref().unwrap().local_addr().unwrap(),
            first.https.as_ref().unwrap().local_addr().unwrap(),
            first.tunnel.local_addr().unwrap(),
            admin.local_addr().unwrap(),
        );
        let state = EdgeState::with_control(config, table, control);
        let shutdown = CancellationToken::new();
        let listeners = Listeners {
            shards: sockets,
            admin: Some(admin),
            api: Some(burrow_edge::control::api::ApiListener { tcp: api, tls: None }),
            cluster: None,
        };
        let task = tokio::spawn(burrow_edge::run(state.clone(), listeners, shutdown.clone()));
        Self {
            http: http_addr,
            https: https_addr,
            tunnel: tunnel_addr,
            admin: admin_addr,
            api: api_addr,
            state,
            ca_pem,
            shutdown,
            task,
        }
    }

    /// Credentials a connector needs to serve `tunnel` through this edge.
    pub fn credentials(&self, tunnel: &TestTunnel) -> Credentials {
        Credentials {
            account: tunnel.account,
            tunnel_id: tunnel.id,
            tunnel_name: tunnel.name.clone(),
            secret: tunnel.secret.clone(),
            edges: vec![format!("127.0.0.1:{}", self.tunnel.port())],
            edge_ca: Some(self.ca_pem.clone()),
        }
    }

    pub fn connections(&self, tunnel: &TestTunnel) -> usize {
        self.state.registry.connections(&tunnel.id).len()
    }

    /// Wait until the edge has exactly `n` live connections for `tunnel`.
    pub async fn wait_connections(&self, tunnel: &TestTunnel, n: usize) {
        eventually(
            Duration::from_secs(20),
            &format!("{n} connection(s) of tunnel {}", tunnel.name),
            || async { self.connections(tunnel) == n },
        )
        .await;
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }

    /// Start the drain (as SIGTERM does) without waiting for it.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Serve a tunnel created in this edge's store (`ControlPlane::create_tunnel`) from `origin`
    /// with a connector of `connections` connections, once the edge's table holds the tunnel (a
    /// connector refused at its first registration gives up, as with wrong credentials).
    pub async fn serve_store_tunnel(
        &self,
        tunnel: &burrow_edge::control::resources::Tunnel,
        secret: TunnelSecret,
        origin: &str,
        connections: u8,
    ) -> TestConnector {
        let credentials = self.credentials(&TestTunnel {
            id: tunnel.id,
            name: tunnel.name.clone(),
            account: tunnel.account,
            secret,
        });
        eventually(Duration::from_secs(10), "the edge to know the tunnel", || async {
            self.state.routes.load().tunnel(&tunnel.id).is_some()
        })
        .await;
        let connector = TestConnector::to_url(credentials, origin, connections);
        connector.wait_ready(usize::from(connections)).await;
        connector
    }
}

/// A new account of `control` holding the zone `test`: it may route any `*.test` hostname.
pub async fn account_in_test_zone(
    control: &ControlPlane,
    name: &str,
) -> (burrow_edge::control::resources::Account, String) {
    let (account, token) = control.create_account(name).await.unwrap();
    control
        .add_zone(account.id, "test", burrow_edge::control::zones::ZoneSource::Operator)
        .await
        .unwrap();
    (account, token)
}

/// Clients sending GET / to one hostname in a loop until [`Load::finish`]: how many got a 200,
/// and what the others got.
pub struct Load {
    stop: tokio_util::sync::CancellationToken,
    clients: Vec<JoinHandle<(usize, Vec<String>)>>,
}

impl Load {
    pub fn start(edge: SocketAddr, host: &str, headers: &[(&str, &str)], clients: usize) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let headers: Vec<(String, String)> = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        let clients = (0..clients)
            .map(|_| {
                let (stop, host, headers) = (stop.clone(), host.to_owned(), headers.clone());
                tokio::spawn(async move {
                    let client = http1_client();
                    let (mut ok, mut failed) = (0, Vec::new());
                    while !stop.is_cancelled() {
                        let mut request = Request::get(format!("http://{edge}/")).header("host", &host);
                        for (name, value) in &headers {
                            request = request.header(name, value);
                        }
                        match client.request(request.body(empty()).unwrap()).await {
                            Ok(response) if response.status() == StatusCode::OK => ok += 1,
                            Ok(response) => failed.push(response.status().to_string()),
                            Err(e) => failed.push(e.to_string()),
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        Self { stop, clients }
    }

    /// Stop the clients and assert that none failed and at least `at_least` were answered 200.
    pub async fn finish_without_failures(self, at_least: usize) {
        let (ok, failed) = self.finish().await;
        let total = ok + failed.len();
        assert!(
            failed.is_empty(),
            "{} of {total} requests failed: {failed:?}",
            failed.len()
        );
        assert!(
            ok >= at_least,
            "the load ran ({ok} requests, expected {at_least} or more)"
        );
    }

    /// Stop the clients: requests answered 200, and the others' statuses or errors.
    pub async fn finish(self) -> (usize, Vec<String>) {
        self.stop.cancel();
        let (mut ok, mut failed) = (0, Vec::new());
        for client in self.clients {
            let (n, f) = client.await.unwrap();
            ok += n;
            failed.extend(f);
        }
        (ok, failed)
    }
}

/// A connector running in this process.
pub struct TestConnector {
    pub status: Arc<Status>,
    /// Its ingress and origin clients (to count the streams it serves).
    pub origins: Arc<Origins>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<()>>,
}

impl TestConnector {
    pub fn start(credentials: Credentials, ingress: Ingress, ha_connections: u8) -> Self {
        Self::start_as(credentials, ingress, ha_connections, ConnectorId::new_random())
    }

    /// [`TestConnector::start`] with a chosen id (its first two bytes pick the edge shard its
    /// first connection lands on).
    pub fn start_as(credentials: Credentials, ingress: Ingress, ha_connections: u8, connector_id: ConnectorId) -> Self {
        let origins = Arc::new(Origins::new(ingress, Default::default()).unwrap());
        let options = TunnelOptions {
            edges: credentials.edges.clone(),
            ha_connections,
            grace_period: Duration::from_secs(5),
            connector_id,
            limits: Default::default(),
            // Connections spread over two threads whenever there are two.
            threads: 2,
        };
        let status = Arc::new(Status::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(tunnel_client::run(
            credentials,
            origins.clone(),
            options,
            status.clone(),
            shutdown.clone(),
        ));
        Self {
            status,
            origins,
            shutdown,
            task,
        }
    }

    /// One catch-all rule to `url` (like `--url`).
    pub fn to_url(credentials: Credentials, url: &str, ha_connections: u8) -> Self {
        Self::start(credentials, single(url), ha_connections)
    }

    pub async fn wait_ready(&self, n: usize) {
        eventually(
            Duration::from_secs(20),
            &format!("{n} registered connection(s)"),
            || async { self.status.ready_connections() == n },
        )
        .await;
    }

    /// The connector's own result, if it stopped by itself.
    pub async fn join(self) -> Result<()> {
        self.task.await.unwrap()
    }

    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.task.await.unwrap()
    }
}

pub fn single(url: &str) -> Ingress {
    Ingress::single(Service::parse(url).unwrap(), OriginRequest::default())
}

// ---------------------------------------------------------------------------------------------
// Origins

/// Serve `handler` on a loopback port (HTTP/1.1 and h2c, upgrades allowed) until the test ends.
pub async fn serve_origin<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    serve_counting_origin(handler).await.0
}

/// [`serve_origin`], also counting the connections it accepted.
pub async fn serve_counting_origin<F, Fut>(handler: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let response = handler(req);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// An origin that answers every request with `name` (to tell replicas apart).
pub async fn named_origin(name: &'static str) -> SocketAddr {
    serve_origin(move |_req| async move { Response::new(full(name)) }).await
}

// ---------------------------------------------------------------------------------------------
// Clients

/// A plain HTTP/1.1 client (one pooled client per test).
pub fn http1_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A response read to the end.
pub struct Collected {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub trailers: Option<http::HeaderMap>,
}

impl Collected {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Send `method host path body` to the edge's HTTP listener and read the whole response.
pub async fn send(
    client: &Client<HttpConnector, TestBody>,
    edge: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    body: TestBody,
) -> Result<Collected> {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{edge}{path}"))
        .header(http::header::HOST, host)
        .body(body)?;
    collect(client, request).await
}

/// `method path` on an edge's API (`api`) with a JSON body, as the holder of `token`.
pub async fn api_call(
    client: &Client<HttpConnector, TestBody>,
    api: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: serde_json::Value,
) -> Result<Collected> {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{api}{path}"))
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(full(body.to_string()))?;
    collect(client, request).await
}

/// Send `request` and read the whole response.
async fn collect(client: &Client<HttpConnector, TestBody>, request: Request<TestBody>) -> Result<Collected> {
    let response = client.request(request).await?;
    let (parts, body) = response.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok(Collected {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

/// A raw HTTP/1.1 keep-alive `GET path` for `host` on a new connection to `edge`, read up to its
/// `200` status (the rest of the answer is left unread).
pub async fn raw_get_200(edge: SocketAddr, host: &str, path: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(edge).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut status = [0u8; 12];
    stream.read_exact(&mut status).await.unwrap();
    assert_eq!(&status, b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&status));
    stream
}

pub async fn get(
    client: &Client<HttpConnector, TestBody>,
    edge: SocketAddr,
    host: &str,
    path: &str,
) -> Result<Collected> {
    send(client, edge, "GET", host, path, empty()).await
}

// ---------------------------------------------------------------------------------------------
// Child processes (the real binaries, for kill -9, signals and CLI output)

/// A running binary whose stderr and stdout are captured.
pub struct Process {
    child: tokio::process::Child,
    output: Arc<Mutex<String>>,
}

impl Process {
    pub fn spawn(bin: &str, args: &[&str], env: &[(&str, &Path)]) -> Self {
        let mut command = tokio::process::Command::new(bin);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command.env("RUST_LOG", "info").env("NO_COLOR", "1");
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        for mut pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    output.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        Self { child, output }
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    pub async fn wait_for_output(&self, needle: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !self.output().contains(needle) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {needle:?} in the process output:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id().unwrap()).unwrap()
    }

    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status();
        assert!(status.unwrap().success(), "kill -{signal} failed");
    }

    /// `kill -9` and reap.
    pub async fn kill9(mut self) -> String {
        self.child.kill().await.unwrap();
        self.output()
    }

    /// Wait for the process to exit by itself; returns its exit code and output.
    pub async fn wait(mut self, timeout: Duration) -> (Option<i32>, String) {
        let Ok(status) = tokio::time::timeout(timeout, self.child.wait()).await else {
            panic!(
                "process did not exit within {timeout:?}; its output:\n{}",
                self.output()
            );
        };
        let status = status.unwrap();
        // Let the readers drain the pipes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        (status.code(), self.output())
    }
}

/// Resident memory of a process (its `VmRSS`), in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A free loopback TCP port (for child processes that must be told a port).
pub fn free_tcp_port() -> u16 {
    free_port(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
}

/// A free loopback UDP port (for child processes that must be told a port).
pub fn free_udp_port() -> u16 {
    free_port(|port| std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok())
}

/// Ports for child processes come from below the kernel's ephemeral range (32768 and up on
/// Linux): a port the kernel handed out for port 0 and that was released again could be handed
/// to another test's socket before the child binds it. Each test process walks its own
/// sequence, so concurrent tests never get the same port.
fn free_port(bindable: impl Fn(u16) -> bool) -> u16 {
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let start = std::process::id() * 97;
    for _ in 0..COUNT {
        let next = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = FIRST + start.wrapping_add(next) % COUNT;
        let port = u16::try_from(port).unwrap();
        if bindable(port) {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + COUNT)
}

/// A DNS server on a loopback UDP port that answers TXT queries for the names in `records`
/// (name → value) and NXDOMAIN for everything else, until the test ends.
pub async fn txt_dns_server(records: Arc<Mutex<Vec<(String, String)>>>) -> SocketAddr {
    use hickory_resolver::proto::op::{Message, ResponseCode};
    use hickory_resolver::proto::rr::{RData, Record, RecordType, rdata::TXT};
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok((len, peer)) = socket.recv_from(&mut buf).await {
            let Ok(query) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            let Some(question) = query.queries.first().cloned() else {
                continue;
            };
            let mut answer = Message::response(query.metadata.id, query.metadata.op_code);
            answer.metadata.authoritative = true;
            answer.metadata.recursion_desired = query.metadata.recursion_desired;
            let asked = question.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
            let values: Vec<String> = records
                .lock()
                .unwrap()
                .iter()
                .filter(|(name, _)| *name == asked)
                .map(|(_, value)| value.clone())
                .collect();
            if values.is_empty() {
                answer.metadata.response_code = ResponseCode::NXDomain;
            } else if question.query_type() == RecordType::TXT {
                for value in values {
                    answer.add_answer(Record::from_rdata(
                        question.name().clone(),
                        60,
                        RData::TXT(TXT::new(vec![value])),
                    ));
                }
            }
            answer.add_query(question);
            if let Ok(bytes) = answer.to_vec() {
                let _ = socket.send_to(&bytes, peer).await;
            }
        }
    });
    addr
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(format!("burrow-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Raw JSON in and out of the API, for tests that send what the typed client would refuse.
pub async fn api_json(
    api: &burrow_connector::api_client::ApiClient,
    method: http::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value> {
    match body {
        Some(body) => api.send_json(method, path, &body, &[]).await,
        None => api.request(method, path).await,
    }
}
