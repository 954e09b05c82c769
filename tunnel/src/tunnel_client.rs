//! The connector's side of the tunnel: N QUIC connections to the edges, each registered for the
//! tunnel, each serving the request streams the edge opens, each reconnecting on its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use burrow_protocol::body::write_frame;
use burrow_protocol::frame::read_frame;
use burrow_protocol::{
    ConnIndex, ConnectorId, ControlMessage, Frame, Limits, PROTOCOL_VERSION, Register, Registered, RejectCode,
    Rejected, TunnelCodec, error_code,
};
use burrow_shared::backoff::Backoff;
use futures_util::StreamExt;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::credentials::Credentials;
use crate::edge_list::EdgeList;
use crate::origin::Origins;

/// How the connector runs its connections.
#[derive(Debug, Clone)]
pub struct TunnelOptions {
    /// Tunnel addresses (`host:port`) to dial; connection `i` starts at `edges[i % len]`.
    pub edges: Vec<String>,
    /// Number of concurrent connections (high availability); cloudflared's default is 4.
    pub ha_connections: u8,
    /// On shutdown, how long in-flight requests may take before connections close.
    pub grace_period: Duration,
    pub connector_id: ConnectorId,
    pub limits: Limits,
    /// Threads serving traffic, at most one per connection. Each runs its own runtime with its
    /// share of the connections and its own origin connection pools, so a request never leaves
    /// the thread its connection lives on. The first is the caller's runtime.
    pub threads: usize,
}

/// Live state other parts of the process report (readiness endpoint, tests).
#[derive(Debug, Default)]
pub struct Status {
    ready: AtomicUsize,
}

impl Status {
    /// Connections currently registered with an edge.
    pub fn ready_connections(&self) -> usize {
        self.ready.load(Ordering::Relaxed)
    }
}

/// Counts a registered connection for as long as it lives.
struct ReadyGuard(Arc<Status>);

impl ReadyGuard {
    fn new(status: Arc<Status>) -> Self {
        status.ready.fetch_add(1, Ordering::Relaxed);
        Self(status)
    }
}

impl Drop for ReadyGuard {
    fn drop(&mut self) {
        self.0.ready.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Run the tunnel until `shutdown` fires (then drain gracefully) or a connection hits an error
/// that retrying cannot fix (wrong credentials at start, incompatible edge).
pub async fn run(
    credentials: Credentials,
    origins: Arc<Origins>,
    options: TunnelOptions,
    status: Arc<Status>,
    shutdown: CancellationToken,
) -> Result<()> {
    anyhow::ensure!(
        !options.edges.is_empty(),
        "no edge address: pass --edge HOST:PORT, set `edge:` in the config file, or use a credentials \
         file that lists edges"
    );
    anyhow::ensure!(options.ha_connections >= 1, "--ha-connections must be at least 1");
    let threads = options.threads.clamp(1, options.ha_connections.into());
    tracing::info!(
        tunnel = %credentials.tunnel_id, name = %credentials.tunnel_name, connector = %options.connector_id,
        "starting tunnel with {} connection(s) on {threads} thread(s)", options.ha_connections
    );
    // Everything that can fail comes before the first connection starts.
    let edges = Arc::new(EdgeList::new(options.edges.clone()));
    let mut setups = Vec::with_capacity(threads);
    for thread in 0..threads {
        let origins = match thread {
            0 => origins.clone(),
            _ => Arc::new(origins.with_own_pools()?),
        };
        setups.push(Arc::new(ClientSetup::new(
            &credentials,
            options.clone(),
            edges.clone(),
            origins,
            status.clone(),
        )?));
    }
    let mut connections = tokio::task::JoinSet::new();
    for (thread, client) in setups.into_iter().enumerate() {
        // Connection `i` lives on thread `i % threads`.
        let indices: Vec<ConnIndex> = (0..client.options.ha_connections)
            .skip(thread)
            .step_by(threads)
            .collect();
        let serve = serve_connections(client, indices, shutdown.clone());
        if thread == 0 {
            connections.spawn(serve);
            continue;
        }
        let thread = burrow_shared::threads::spawn(format!("burrow-tunnel-{thread}"), serve);
        connections.spawn(thread.inspect_err(|_| shutdown.cancel())?);
    }
    burrow_shared::threads::first_error(connections, &shutdown).await
}

/// Keep the connections `indices` up on the current runtime; the first fatal error stops them all.
async fn serve_connections(
    client: Arc<ClientSetup>,
    indices: Vec<ConnIndex>,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut connections = tokio::task::JoinSet::new();
    for index in indices {
        connections.spawn(connection_loop(client.clone(), index, shutdown.clone()));
    }
    burrow_shared::threads::first_error(connections, &shutdown).await
}

struct ClientSetup {
    credentials: Credentials,
    options: TunnelOptions,
    edges: Arc<EdgeList>,
    quic: quinn::ClientConfig,
    origins: Arc<Origins>,
    status: Arc<Status>,
    /// Set when an edge refused the pinned certificate.
    pin_mismatch: Arc<crate::tls::PinMismatch>,
    /// Where this connector's connections start among an edge's shards: from its id, which is
    /// random per run, so different connectors start on different shards.
    spread: u16,
}

impl ClientSetup {
    fn new(
        credentials: &Credentials,
        options: TunnelOptions,
        edges: Arc<EdgeList>,
        origins: Arc<Origins>,
        status: Arc<Status>,
    ) -> Result<Self> {
        let (mut quic, pin_mismatch) = crate::tls::edge_client(credentials.edge_ca.as_deref())?;
        quic.transport_config(Arc::new(transport(None)));
        let id = options.connector_id.0.as_bytes();
        Ok(Self {
            credentials: credentials.clone(),
            spread: u16::from_be_bytes([id[0], id[1]]),
            options,
            edges,
            quic,
            origins,
            status,
            pin_mismatch,
        })
    }
}

/// QUIC settings of a tunnel connection. `initial_rtt`: the path's round trip as last measured,
/// so that a reconnect retransmits its first packet at that pace (quinn assumes 333 ms, so a
/// packet sent while the edge restarts would be sent again only a second later).
fn transport(initial_rtt: Option<Duration>) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    // The edge takes a connection that sent nothing for 2.5 s while it has requests on it for
    // dead (and fails them over): a ping every second keeps a live one from looking so.
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    transport.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(10_000))));
    // Request streams are opened by the edge; this bounds concurrent requests per connection.
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(1_000));
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    transport.stream_receive_window(quinn::VarInt::from_u32(4 * 1024 * 1024));
    transport.receive_window(quinn::VarInt::from_u32(16 * 1024 * 1024));
    // The edge probes a quiet connection with a tiny datagram; acknowledging it is all that
    // matters, so a few bytes of buffer (the oldest unread one is dropped) do.
    transport.datagram_receive_buffer_size(Some(64));
    if let Some(rtt) = initial_rtt {
        transport.initial_rtt((rtt * 2).clamp(Duration::from_millis(5), Duration::from_millis(333)));
    }
    transport
}

/// How often an idle tunnel connection pings the edge.
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);

/// How one connection ended.
enum Ended {
    /// We are shutting down; do not reconnect.
    Shutdown,
    /// Lost; reconnect.
    Lost(String),
    /// The edge is going away; reconnect to another.
    Drained,
    /// The edge closed the connection because the tunnel was deleted or its secret changed:
    /// nothing to reconnect to. Carries the edge's reason.
    Revoked(String),
}

/// Why an attempt failed before the connection served anything.
enum AttemptError {
    Rejected(Rejected),
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for AttemptError {
    fn from(e: E) -> Self {
        AttemptError::Other(e.into())
    }
}

/// Keep connection `index` up: connect, register, serve, and on loss reconnect with backoff.
async fn connection_loop(client: Arc<ClientSetup>, index: ConnIndex, shutdown: CancellationToken) -> Result<()> {
    let mut attempt: u32 = 0;
    // The edge the last attempt failed at or that drained this connection: tried last.
    let mut avoid: Option<String> = None;
    let mut ever_registered = false;
    // Round-trip time of the last registered connection, to size the reconnects' timeouts.
    let mut last_rtt: Option<Duration> = None;
    let mut retryable_refusal = false;
    if index > 0 {
        tokio::select! {
            () = client.edges.wait_learned(LEARN_WAIT) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
    }
    loop {
        let picked = client
            .edges
            .pick(usize::from(index), attempt as usize, avoid.as_deref());
        let edge = picked.addr.as_str();
        let mut wait_at_least = Duration::ZERO;
        // Right after a loss the edge is likely restarting: try often, with a short handshake
        // timeout (a packet sent to a closed port is never answered, and quinn waits out its
        // retransmits), so the tunnel is back within about a second of the edge's return.
        // An edge that answered "not now" (overloaded, draining) gets the usual backoff.
        let fast = ever_registered && attempt < FAST_RETRIES && !retryable_refusal;
        // A connection that registered before knows its path: an attempt that gets no answer
        // within a few round trips is over, and the next one starts soon (see `backoff`).
        let connect_timeout = match (ever_registered, last_rtt) {
            (true, Some(rtt)) => (rtt * 8).clamp(FAST_CONNECT_TIMEOUT, CONNECT_TIMEOUT),
            (true, None) => FAST_CONNECT_TIMEOUT,
            (false, _) => CONNECT_TIMEOUT,
        };
        retryable_refusal = false;
        let attempt_result = connect_and_serve(
            &client,
            index,
            edge,
            connect_timeout,
            &shutdown,
            &mut ever_registered,
            &mut last_rtt,
        );
        match attempt_result.await {
            Ok(Ended::Shutdown) => return Ok(()),
            Ok(Ended::Revoked(reason)) => anyhow::bail!(
                "tunnel {} was deleted or its secret changed (edge {edge} closed its connections: {reason}); \
                 create it again or use its new credentials",
                client.credentials.tunnel_id
            ),
            Ok(Ended::Lost(reason)) => {
                tracing::warn!(conn_index = index, edge = %edge, "tunnel connection lost: {reason}; reconnecting");
                attempt = 0;
                avoid = None;
            }
            Ok(Ended::Drained) => {
                tracing::debug!(conn_index = index, edge = %edge, "moving to another edge");
                attempt = 0;
                avoid = Some(edge.to_owned());
            }
            Err(AttemptError::Rejected(rejected)) => {
                let fatal =
                    !rejected.code.is_retryable() || (rejected.code == RejectCode::Unauthorized && !ever_registered);
                if fatal {
                    anyhow::bail!(
                        "edge {edge} refused the tunnel: {}. Check that the credentials file belongs to a tunnel \
                         this edge knows, and that connector and edge versions match",
                        rejected.message
                    );
                }
                match rejected.code {
                    RejectCode::Pending => tracing::info!(conn_index = index, edge = %edge, "{}", rejected.message),
                    code => {
                        tracing::error!(conn_index = index, edge = %edge, ?code, "registration refused: {}", rejected.message)
                    }
                }
                wait_at_least = Duration::from_millis(rejected.retry_after_ms.unwrap_or(0));
                retryable_refusal = true;
                avoid = Some(edge.to_owned());
            }
            Err(AttemptError::Other(_)) if client.pin_mismatch.seen() && !ever_registered => {
                anyhow::bail!("edge {edge}: {}", crate::tls::PIN_MISMATCH_HELP);
            }
            Err(AttemptError::Other(e)) => {
                tracing::warn!(conn_index = index, edge = %edge, "cannot connect to the edge: {e:#}");
                avoid = Some(edge.to_owned());
            }
        }
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let delay = if fast && !retryable_refusal {
            FAST_RETRY_DELAY.mul_f64(rand::random::<f64>())
        } else {
            RECONNECT.delay(attempt)
        };
        let delay = delay.max(wait_at_least);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// The destination connection ID of a connection's first packet: random, except that its first
/// two bytes are `spread` (the connector's offset plus the connection's index). An edge with
/// several shards steers a new connection by those bytes, so a connector's connections land on
/// consecutive shards, and different connectors start at different ones (docs/protocol.md).
fn initial_cid(spread: u16) -> quinn::ConnectionId {
    let mut bytes: [u8; 20] = rand::random();
    bytes[..2].copy_from_slice(&spread.to_be_bytes());
    quinn::ConnectionId::new(&bytes)
}

/// Connections after the first wait at most this for the first to learn the cluster's edges.
const LEARN_WAIT: Duration = Duration::from_secs(3);

/// Handshake timeout of a connection that never registered (its path's round trip is unknown).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts after a lost connection that use [`FAST_CONNECT_TIMEOUT`] and a random delay of at
/// most [`FAST_RETRY_DELAY`] (about a minute in all), before the exponential backoff takes over.
const FAST_RETRIES: u32 = 40;
const FAST_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const FAST_RETRY_DELAY: Duration = Duration::from_millis(500);

/// Between two attempts: 100 ms doubling to 3 s, full jitter. An edge that comes back after a
/// long outage is found within about the cap (and the attempt's own timeout).
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(3));

/// One connection's life: register, serve, drain.
async fn connect_and_serve(
    client: &ClientSetup,
    index: ConnIndex,
    edge: &str,
    connect_timeout: Duration,
    shutdown: &CancellationToken,
    ever_registered: &mut bool,
    last_rtt: &mut Option<Duration>,
) -> Result<Ended, AttemptError> {
    // Connecting and registering give way to a shutdown (nothing is in flight yet).
    let transport = ever_registered.then(|| transport(*last_rtt));
    let mut session = tokio::select! {
        result = register(client, index, edge, connect_timeout, transport) => result?,
        () = shutdown.cancelled() => return Ok(Ended::Shutdown),
    };
    *ever_registered = true;
    let _ready = ReadyGuard::new(client.status.clone());
    let registered = &session.registered;
    client.edges.learn(&registered.edges);
    tracing::info!(
        conn_index = index, connection = %registered.connection_id, edge = %edge, node = %registered.edge_node,
        location = %registered.location, "registered tunnel connection"
    );
    let served_since = Instant::now();
    let ended = serve(client, index, edge, &mut session, shutdown).await;
    // A close reaches the control stream and `accept_bi` at once, and `select!` takes either
    // branch: the close's own reason says whether the tunnel was deleted.
    let ended = match (ended, session.conn.close_reason()) {
        (Ended::Lost(_), Some(quinn::ConnectionError::ApplicationClosed(close)))
            if close.error_code == error_code::TUNNEL_REVOKED.into() =>
        {
            Ended::Revoked(String::from_utf8_lossy(&close.reason).into_owned())
        }
        (ended, _) => ended,
    };
    *last_rtt = Some(session.conn.rtt());
    if let Ended::Lost(reason) = &ended {
        tracing::debug!(conn_index = index, served = ?served_since.elapsed(), "connection ended: {reason}");
    }
    Ok(ended)
}

/// A registered tunnel connection.
struct Session {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    control_send: quinn::SendStream,
    control: FramedRead<quinn::RecvStream, TunnelCodec>,
    registered: Registered,
}

/// Dial `edge` and register on the control stream. `transport`: the QUIC settings of a
/// reconnect (paced by the last connection's round trip).
async fn register(
    client: &ClientSetup,
    index: ConnIndex,
    edge: &str,
    connect_timeout: Duration,
    transport: Option<quinn::TransportConfig>,
) -> Result<Session, AttemptError> {
    let limits = client.options.limits;
    let addr = resolve(edge).await?;
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let endpoint = quinn::Endpoint::client(bind).context("binding a UDP socket")?;
    let mut quic = client.quic.clone();
    if let Some(transport) = transport {
        quic.transport_config(Arc::new(transport));
    }
    let spread = client.spread.wrapping_add(index.into());
    quic.initial_dst_cid_provider(Arc::new(move || initial_cid(spread)));
    let server_name = host_of(edge);
    let conn = tokio::time::timeout(connect_timeout, endpoint.connect_with(quic, addr, server_name)?)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {addr} within {connect_timeout:?}"))??;

    let (mut control_send, control_recv) = conn.open_bi().await?;
    let register = Register {
        protocol: PROTOCOL_VERSION,
        account: client.credentials.account,
        tunnel_id: client.credentials.tunnel_id,
        secret: client.credentials.secret.clone(),
        conn_index: index,
        connector_id: client.options.connector_id,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        os: std::env::consts::OS.to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
    };
    write_frame(
        &mut control_send,
        Frame::Control(ControlMessage::Register(register)),
        &limits,
    )
    .await?;
    let mut control = FramedRead::new(control_recv, TunnelCodec::new(limits));
    let registered = match read_frame(&mut control, &limits).await? {
        Some(Frame::Control(ControlMessage::Registered(r))) => r,
        Some(Frame::Control(ControlMessage::Rejected(r))) => {
            conn.close(error_code::NO_ERROR.into(), b"rejected");
            return Err(AttemptError::Rejected(r));
        }
        other => return Err(anyhow::anyhow!("edge answered the registration with {other:?}").into()),
    };
    Ok(Session {
        endpoint,
        conn,
        control_send,
        control,
        registered,
    })
}

/// Serve the streams the edge opens until the connection ends, the edge drains it, or
/// `shutdown`.
async fn serve(
    client: &ClientSetup,
    index: ConnIndex,
    edge: &str,
    session: &mut Session,
    shutdown: &CancellationToken,
) -> Ended {
    let streams = TaskTracker::new();
    let mut control_open = true;
    loop {
        tokio::select! {
            accepted = session.conn.accept_bi() => match accepted {
                Ok((send, recv)) => spawn_stream(client, &streams, send, recv),
                Err(e) => return Ended::Lost(e.to_string()),
            },
            frame = session.control.next(), if control_open => match frame {
                Some(Ok(Frame::Control(ControlMessage::Drain))) => {
                    // The edge is going away: its in-flight requests finish here while a new
                    // connection is made elsewhere.
                    tracing::info!(conn_index = index, edge = %edge, "edge is draining this connection");
                    let (conn, endpoint) = (session.conn.clone(), session.endpoint.clone());
                    tokio::spawn(drain(conn, endpoint, streams.clone(), client.options.grace_period));
                    return Ended::Drained;
                }
                Some(Ok(other)) => tracing::debug!(conn_index = index, "ignoring control frame {other:?}"),
                Some(Err(e)) => return Ended::Lost(format!("control stream: {e}")),
                None => control_open = false,
            },
            () = shutdown.cancelled() => {
                unregister(client, index, session, &streams).await;
                return Ended::Shutdown;
            }
        }
    }
}

/// Serve one request stream beside the others.
fn spawn_stream(client: &ClientSetup, streams: &TaskTracker, send: quinn::SendStream, recv: quinn::RecvStream) {
    let origins = client.origins.clone();
    streams.spawn(async move { origins.serve(send, recv).await });
}

/// Graceful shutdown: the edge stops sending new requests; the ones in flight finish (within
/// the grace period), then the connection closes.
async fn unregister(client: &ClientSetup, index: ConnIndex, session: &mut Session, streams: &TaskTracker) {
    let limits = client.options.limits;
    let _ = write_frame(
        &mut session.control_send,
        Frame::Control(ControlMessage::Unregister),
        &limits,
    )
    .await;
    streams.close();
    let drained = streams.wait();
    tokio::pin!(drained);
    let deadline = tokio::time::sleep(client.options.grace_period);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            // A request the edge sent just before it saw Unregister is still served.
            accepted = session.conn.accept_bi() => match accepted {
                Ok((send, recv)) => spawn_stream(client, streams, send, recv),
                Err(_) => break,
            },
            () = &mut drained => break,
            () = &mut deadline => {
                tracing::warn!(conn_index = index, "requests still running after the grace period; closing");
                break;
            }
        }
    }
    session
        .conn
        .close(error_code::NO_ERROR.into(), b"connector shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(1), session.endpoint.wait_idle()).await;
}

/// Let a drained connection finish its in-flight requests, then close it.
async fn drain(conn: quinn::Connection, endpoint: quinn::Endpoint, streams: TaskTracker, grace: Duration) {
    streams.close();
    let _ = tokio::time::timeout(grace, streams.wait()).await;
    conn.close(error_code::NO_ERROR.into(), b"drained");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

async fn resolve(edge: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(edge)
        .await
        .with_context(|| format!("resolving edge address {edge:?} (expected HOST:PORT)"))?
        .next()
        .with_context(|| format!("edge address {edge:?} resolves to nothing"))
}

/// The TLS server name for an edge address: its host part without brackets.
fn host_of(edge: &str) -> &str {
    burrow_shared::host_port::unbracket(burrow_shared::host_port::split(edge).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An edge back from a long outage is tried again within seconds, however many attempts
    /// failed before.
    #[test]
    fn backoff_never_waits_more_than_three_seconds() {
        for attempt in [0, 5, 10, 40, 1000, u32::MAX] {
            assert!(RECONNECT.delay(attempt) <= Duration::from_secs(3), "attempt {attempt}");
        }
    }

    #[test]
    fn server_name_is_the_host_part() {
        assert_eq!(host_of("edge.example.com:7844"), "edge.example.com");
        assert_eq!(host_of("127.0.0.1:7844"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7844"), "::1");
    }
}
