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
    /// The shard whose thread drives this connection ([`crate::shards`]).
    shard: usize,
    /// When a datagram last arrived, as [`Liveness`] saw it.
    liveness: std::sync::Mutex<Liveness>,
    /// No datagram for [`SUSPECT_AFTER`] (or a stream that could not be opened): new requests
    /// go to the tunnel's other connections while it has any.
    suspect: std::sync::atomic::AtomicBool,
}

/// A connector pings every second ([`burrow_connector`]'s keep-alive); a connection silent for
/// longer than this is avoided for new requests.
pub const SUSPECT_AFTER: Duration = Duration::from_millis(1500);
/// ... and silent for longer than this is dead: it is closed, which fails its requests at once
/// (an idempotent pool request is retried on another origin) instead of after the idle timeout.
pub const DEAD_AFTER: Duration = Duration::from_millis(2500);

struct Liveness {
    rx_datagrams: u64,
    heard: Instant,
}

/// How many more streams a connection of this shard may carry than the least busy one of the
/// same connector on another shard and still be chosen: the other costs a wake-up of its thread
/// each way.
const OTHER_SHARD_COST: usize = 8;

impl TunnelConnection {
    /// Called on the thread of the shard that accepted the connection.
    pub fn new(info: ConnectionInfo, quic: quinn::Connection) -> Self {
        Self {
            info,
            quic,
            in_flight: AtomicUsize::new(0),
            shard: crate::shards::current(),
            liveness: std::sync::Mutex::new(Liveness {
                rx_datagrams: 0,
                heard: Instant::now(),
            }),
            suspect: std::sync::atomic::AtomicBool::new(false),
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
        self.suspect.store(true, Ordering::Relaxed);
    }

    /// How long the connection has been silent, as of now; clears `suspect` when it spoke.
    fn check(&self, now: Instant) -> Duration {
        let received = self.quic.stats().udp_rx.datagrams;
        let mut liveness = self.liveness.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if received != liveness.rx_datagrams {
            liveness.rx_datagrams = received;
            liveness.heard = now;
            self.suspect.store(false, Ordering::Relaxed);
        }
        now.saturating_duration_since(liveness.heard)
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
}

impl Registry {
    pub fn add(&self, conn: Arc<TunnelConnection>) {
        self.tunnels.entry(conn.info.tunnel).or_default().push(conn);
    }

    /// Remove one connection; returns whether it was present (unregister and close both call this).
    pub fn remove(&self, tunnel: TunnelId, connection_id: Uuid) -> bool {
        let mut removed = false;
        self.tunnels.remove_if_mut(&tunnel, |_, conns| {
            let before = conns.len();
            conns.retain(|c| c.info.connection_id != connection_id);
            removed = conns.len() != before;
            conns.is_empty()
        });
        removed
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
        let here = crate::shards::current();
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
            let silent = conn.check(now);
            if silent > DEAD_AFTER {
                tracing::warn!(
                    tunnel = %conn.info.tunnel, connection = %conn.info.connection_id, in_flight = conn.in_flight(),
                    "tunnel connection silent for {silent:?}: the connector is gone; closing it"
                );
                self.remove(conn.info.tunnel, conn.info.connection_id);
                conn.quic.close(
                    burrow_protocol::error_code::CONNECTION_DEAD.into(),
                    b"no packets from the connector",
                );
            } else if silent > SUSPECT_AFTER && !conn.is_suspect() {
                tracing::info!(tunnel = %conn.info.tunnel, connection = %conn.info.connection_id, "tunnel connection silent for {silent:?}; avoiding it");
                conn.mark_suspect();
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
}

/// How often [`Registry::check_liveness`] runs.
pub const LIVENESS_TICK: Duration = Duration::from_millis(250);

/// Check the connections carrying requests every [`LIVENESS_TICK`], and the idle ones every
/// fourth tick (their silence is measured all the same: it counts from the last datagram seen),
/// until `shutdown`.
pub async fn watch_liveness(state: std::sync::Arc<crate::EdgeState>, shutdown: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(LIVENESS_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tokio::select! {
            _ = tick.tick() => state.registry.check_liveness(n % 4 == 0),
            () = shutdown.cancelled() => return,
        }
    }
}
