//! Live tunnel connections, per tunnel. Ephemeral: rebuilt from registrations, never stored.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use burrow_protocol::{ConnIndex, ConnectorId, TunnelId};
use dashmap::DashMap;
use uuid::Uuid;

/// What the edge knows about one registered connection (`burrow tunnel info` shows this).
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub connection_id: Uuid,
    pub tunnel: TunnelId,
    pub connector: ConnectorId,
    pub conn_index: ConnIndex,
    pub origin_addr: SocketAddr,
    pub version: String,
    pub since: SystemTime,
    /// SHA-256 of the secret the connection registered with: a changed secret closes it.
    pub secret_sha256: [u8; 32],
}

/// Why a registered connection may no longer serve under `table`: its tunnel is gone, or the
/// tunnel's secret changed since it registered.
pub fn revoked(table: &crate::route_table::RouteTable, info: &ConnectionInfo) -> Option<&'static str> {
    match table.tunnel(&info.tunnel) {
        None => Some("tunnel removed"),
        Some(record) if record.secret_sha256 != info.secret_sha256 => Some("tunnel secret changed"),
        Some(_) => None,
    }
}

/// A registered QUIC connection that can carry requests for its tunnel.
pub struct TunnelConnection {
    pub info: ConnectionInfo,
    pub quic: quinn::Connection,
    in_flight: AtomicUsize,
    /// The shard whose thread drives this connection ([`crate::dataplane::shards`]).
    shard: usize,
    /// When a datagram last arrived, as [`Liveness`] saw it.
    liveness: std::sync::Mutex<Liveness>,
    /// See [`Verdict`] (or a stream could not be opened): new requests go to the tunnel's
    /// other connections while it has any.
    suspect: std::sync::atomic::AtomicBool,
    /// Wakes the requests waiting on this connection when it becomes suspect.
    suspected: tokio::sync::Notify,
}

/// A live connector answers within a round trip (and its ack delay) whatever the edge sends,
/// and pings every second when idle (`burrow_tunnel::tunnel_client::KEEP_ALIVE`). A connection
/// is *suspect* when what the edge sent went unanswered for [`unanswered_suspect`], or it was
/// silent for [`SILENT_SUSPECT`]: new requests go to the tunnel's other connections, and an
/// idempotent pool request waiting on it moves to another origin. It is *dead* when unanswered
/// for [`unanswered_dead`] or silent for [`SILENT_DEAD`]: it is closed, which fails its
/// requests at once instead of after the idle timeout.
pub const SILENT_SUSPECT: Duration = Duration::from_millis(1500);
/// A connection with requests in flight that was silent this long is probed (a one-byte QUIC
/// datagram, which the connector acknowledges like any packet and otherwise ignores).
pub const PROBE_AFTER: Duration = Duration::from_millis(400);
pub const SILENT_DEAD: Duration = Duration::from_millis(2500);

/// Sent data unanswered this long makes a connection suspect: a few round trips, at least 300 ms.
pub fn unanswered_suspect(rtt: Duration) -> Duration {
    (rtt * 4).max(Duration::from_millis(300))
}

/// Sent data unanswered this long means the connector is gone: at least 1.5 s.
pub fn unanswered_dead(rtt: Duration) -> Duration {
    (rtt * 10).max(Duration::from_millis(1500))
}

/// What [`TunnelConnection::check`] concluded, with how long the connection has been silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Alive,
    Suspect(Duration),
    Dead(Duration),
}

/// How many more streams a connection of this shard may carry than the least busy one of the
/// same connector on another shard and still be chosen: the other costs a wake-up of its thread
/// each way.
const OTHER_SHARD_COST: usize = 8;

struct Liveness {
    /// Datagrams received, as of the last change.
    rx_datagrams: u64,
    /// Ack-eliciting frames sent, as of the last check.
    tx_eliciting: u64,
    /// When a datagram last arrived (as of a check).
    heard: Instant,
    /// The first check that saw something sent after the last datagram arrived.
    unanswered_since: Option<Instant>,
}

/// Frames the connector must acknowledge (all but ACK and CONNECTION_CLOSE; padding is not
/// counted).
fn eliciting(f: &quinn::FrameStats) -> u64 {
    f.stream
        + f.ping
        + f.max_data
        + f.max_stream_data
        + f.max_streams_bidi
        + f.max_streams_uni
        + f.reset_stream
        + f.stop_sending
        + f.crypto
        + f.data_blocked
        + f.stream_data_blocked
        + f.streams_blocked_bidi
        + f.streams_blocked_uni
        + f.new_connection_id
        + f.retire_connection_id
        + f.datagram
}

impl TunnelConnection {
    /// Called on the thread of the shard that accepted the connection.
    pub fn new(info: ConnectionInfo, quic: quinn::Connection) -> Self {
        Self {
            info,
            quic,
            in_flight: AtomicUsize::new(0),
            shard: crate::dataplane::shards::current(),
            liveness: std::sync::Mutex::new(Liveness {
                rx_datagrams: 0,
                tx_eliciting: 0,
                heard: Instant::now(),
                unanswered_since: None,
            }),
            suspect: std::sync::atomic::AtomicBool::new(false),
            suspected: tokio::sync::Notify::new(),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn is_suspect(&self) -> bool {
        self.suspect.load(Ordering::Relaxed)
    }

    /// A stream could not be opened or answered on it in time.
    pub fn mark_suspect(&self) {
        if !self.suspect.swap(true, Ordering::Relaxed) {
            self.suspected.notify_waiters();
        }
    }

    /// Resolves when the connection becomes suspect (at once if it is).
    pub async fn until_suspect(&self) {
        let notified = self.suspected.notified();
        if self.is_suspect() {
            return;
        }
        notified.await;
    }

    /// Whether the connector still answers, as of now; clears `suspect` when it does.
    fn check(&self, now: Instant) -> Verdict {
        let stats = self.quic.stats();
        let (received, sent) = (stats.udp_rx.datagrams, eliciting(&stats.frame_tx));
        let mut l = self.liveness.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if received != l.rx_datagrams {
            l.rx_datagrams = received;
            l.heard = now;
            l.unanswered_since = None;
            self.suspect.store(false, Ordering::Relaxed);
        } else if sent != l.tx_eliciting && l.unanswered_since.is_none() {
            l.unanswered_since = Some(now);
        }
        l.tx_eliciting = sent;
        let silent = now.saturating_duration_since(l.heard);
        // A connection whose requests wait quietly (the edge sent them, the origin thinks) hears
        // only the connector's pings: probe it, so that a dead one shows as unanswered soon.
        if self.in_flight() > 0
            && silent > PROBE_AFTER
            && l.unanswered_since.is_none()
            && self.quic.send_datagram(bytes::Bytes::from_static(b"?")).is_ok()
        {
            l.unanswered_since = Some(now);
        }
        let unanswered = l
            .unanswered_since
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        let rtt = stats.path.rtt;
        if silent > SILENT_DEAD || unanswered > unanswered_dead(rtt) {
            Verdict::Dead(silent)
        } else if silent > SILENT_SUSPECT || unanswered > unanswered_suspect(rtt) {
            Verdict::Suspect(silent)
        } else {
            Verdict::Alive
        }
    }

    pub fn shard(&self) -> usize {
        self.shard
    }
}

/// Counts a stream as in flight on its connection until dropped.
pub struct InFlight(Arc<TunnelConnection>);

impl InFlight {
    pub fn connection(&self) -> &Arc<TunnelConnection> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
pub struct Registry {
    tunnels: DashMap<TunnelId, Vec<Arc<TunnelConnection>>>,
    /// Rotates the scan start so ties (e.g. all idle) spread over connections and replicas.
    next: AtomicUsize,
    /// Where additions and removals are told (the control plane records them in the store).
    events: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<RegistryEvent>>,
}

/// A connection joined or left the registry.
#[derive(Debug, Clone)]
pub enum RegistryEvent {
    Added(ConnectionInfo),
    Removed(ConnectionInfo),
}

impl Registry {
    /// Hear every later addition and removal (one listener: the first caller).
    pub fn subscribe(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<RegistryEvent>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.events.set(tx).ok().map(|()| rx)
    }

    fn emit(&self, event: RegistryEvent) {
        if let Some(events) = self.events.get() {
            let _ = events.send(event);
        }
    }

    pub fn add(&self, conn: Arc<TunnelConnection>) {
        let info = conn.info.clone();
        self.tunnels.entry(conn.info.tunnel).or_default().push(conn);
        self.emit(RegistryEvent::Added(info));
    }

    /// Remove one connection; returns whether it was present (unregister and close both call this).
    pub fn remove(&self, tunnel: TunnelId, connection_id: Uuid) -> bool {
        let mut removed = None;
        self.tunnels.remove_if_mut(&tunnel, |_, conns| {
            if let Some(i) = conns.iter().position(|c| c.info.connection_id == connection_id) {
                removed = Some(conns.remove(i).info.clone());
            }
            conns.is_empty()
        });
        let present = removed.is_some();
        if let Some(info) = removed {
            self.emit(RegistryEvent::Removed(info));
        }
        present
    }

    /// How many connections `tunnel` has here.
    pub fn count(&self, tunnel: &TunnelId) -> usize {
        self.tunnels.get(tunnel).map_or(0, |conns| conns.len())
    }

    /// The tunnel's connection with the fewest streams in flight, counted as one more in flight.
    /// Replicas (connectors) share the load as before; among the chosen connector's connections,
    /// one driven by the calling thread's shard is preferred. `skip` excludes a connection that
    /// just failed, for a retry.
    pub fn pick(&self, tunnel: &TunnelId, skip: Option<Uuid>) -> Option<InFlight> {
        let conns = self.tunnels.get(tunnel)?;
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = conns.len();
        // Suspect connections only when nothing else is left.
        let healthy = conns
            .iter()
            .any(|c| !c.is_suspect() && Some(c.info.connection_id) != skip);
        let candidates = || {
            (0..n)
                .map(|i| &conns[(start + i) % n])
                .filter(|c| Some(c.info.connection_id) != skip)
                .filter(move |c| !healthy || !c.is_suspect())
        };
        let least = candidates().min_by_key(|c| c.in_flight())?;
        let here = crate::dataplane::shards::current();
        let best = candidates()
            .filter(|c| c.shard == here && c.info.connector == least.info.connector)
            .min_by_key(|c| c.in_flight())
            .filter(|local| local.in_flight() < least.in_flight() + OTHER_SHARD_COST)
            .unwrap_or(least)
            .clone();
        best.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(InFlight(best))
    }

    /// Streams in flight over the tunnel's live connections; `None` when it has none, or only
    /// suspect ones (pool steering then sends its requests elsewhere).
    pub fn load(&self, tunnel: &TunnelId) -> Option<usize> {
        let conns = self.tunnels.get(tunnel)?;
        if conns.iter().all(|c| c.is_suspect()) {
            return None;
        }
        Some(conns.iter().map(|c| c.in_flight()).sum())
    }

    /// Look at the connections (with `all`, the idle ones too): mark the silent ones suspect,
    /// close the dead ones. Runs every [`LIVENESS_TICK`] ([`watch_liveness`]).
    pub fn check_liveness(&self, all: bool) {
        let now = Instant::now();
        for conn in self.all() {
            if !all && conn.in_flight() == 0 {
                continue;
            }
            match conn.check(now) {
                Verdict::Alive => {}
                Verdict::Suspect(silent) => {
                    if !conn.is_suspect() {
                        tracing::info!(
                            tunnel = %conn.info.tunnel, connection = %conn.info.connection_id,
                            "tunnel connection not answering (silent {silent:?}); avoiding it"
                        );
                    }
                    conn.mark_suspect();
                }
                Verdict::Dead(silent) => {
                    tracing::warn!(
                        tunnel = %conn.info.tunnel, connection = %conn.info.connection_id, in_flight = conn.in_flight(),
                        "tunnel connection not answering (silent {silent:?}): the connector is gone; closing it"
                    );
                    self.remove(conn.info.tunnel, conn.info.connection_id);
                    conn.mark_suspect();
                    conn.quic.close(
                        burrow_protocol::error_code::CONNECTION_DEAD.into(),
                        b"no answer from the connector",
                    );
                }
            }
        }
    }

    pub fn is_connected(&self, tunnel: &TunnelId) -> bool {
        self.tunnels.contains_key(tunnel)
    }

    /// Whether this edge holds the connection `connection_id` of `tunnel`.
    pub fn holds(&self, tunnel: TunnelId, connection_id: Uuid) -> bool {
        self.tunnels
            .get(&tunnel)
            .is_some_and(|conns| conns.iter().any(|c| c.info.connection_id == connection_id))
    }

    /// One live connection by id.
    pub fn get(&self, tunnel: TunnelId, connection_id: Uuid) -> Option<Arc<TunnelConnection>> {
        let conns = self.tunnels.get(&tunnel)?;
        conns.iter().find(|c| c.info.connection_id == connection_id).cloned()
    }

    pub fn connections(&self, tunnel: &TunnelId) -> Vec<Arc<TunnelConnection>> {
        self.tunnels.get(tunnel).map(|c| c.clone()).unwrap_or_default()
    }

    pub fn all(&self) -> Vec<Arc<TunnelConnection>> {
        self.tunnels.iter().flat_map(|e| e.value().clone()).collect()
    }

    pub fn connection_count(&self) -> usize {
        self.tunnels.iter().map(|e| e.value().len()).sum()
    }

    /// Requests in flight over every connection: this edge's load, as other edges see it.
    pub fn in_flight(&self) -> u64 {
        self.tunnels
            .iter()
            .map(|e| e.value().iter().map(|c| c.in_flight() as u64).sum::<u64>())
            .sum()
    }
}

/// How often [`Registry::check_liveness`] looks at the connections carrying requests.
pub const LIVENESS_TICK: Duration = Duration::from_millis(100);

/// Check the connections carrying requests every [`LIVENESS_TICK`], and the idle ones every
/// tenth tick (their silence is measured all the same: it counts from the last datagram seen),
/// until `shutdown`.
pub async fn watch_liveness(state: std::sync::Arc<crate::EdgeState>, shutdown: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(LIVENESS_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tokio::select! {
            _ = tick.tick() => state.registry.check_liveness(n % 10 == 0),
            () = shutdown.cancelled() => return,
        }
    }
}
