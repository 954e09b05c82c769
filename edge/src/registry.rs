//! Live tunnel connections, per tunnel. Ephemeral: rebuilt from registrations, never stored.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

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
}

/// A registered QUIC connection that can carry requests for its tunnel.
pub struct TunnelConnection {
    pub info: ConnectionInfo,
    pub quic: quinn::Connection,
    in_flight: AtomicUsize,
    /// The shard whose thread drives this connection ([`crate::shards`]).
    shard: usize,
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
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
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
        let candidates = || {
            (0..n)
                .map(|i| &conns[(start + i) % n])
                .filter(|c| Some(c.info.connection_id) != skip)
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

    /// Streams in flight over the tunnel's live connections; `None` when it has none.
    pub fn load(&self, tunnel: &TunnelId) -> Option<usize> {
        self.tunnels
            .get(tunnel)
            .map(|conns| conns.iter().map(|c| c.in_flight()).sum())
    }

    pub fn is_connected(&self, tunnel: &TunnelId) -> bool {
        self.tunnels.contains_key(tunnel)
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
