//! This edge's tunnel connections in the store (`connections/<tunnel>/<id>`, under this edge's
//! lease): for `burrow tunnel list/info`, the delete guard, and the other edges of a cluster
//! (who holds which tunnel). A registration never waits for them: the registry's events are
//! written in the background, many per transaction (10,000 connectors reconnecting after a
//! restart cost a few hundred writes, not 10,000).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use crate::EdgeState;
use crate::control::config_sync::pause;
use crate::control::resources::{Connection, to_json};
use crate::control::store::{Event, Op};
use crate::dataplane::registry::{ConnectionInfo, RegistryEvent};

/// How long connection records outlive a silent edge.
const NODE_LEASE_TTL: Duration = Duration::from_secs(10);
/// Most record changes in one transaction (etcd refuses more than `--max-txn-ops`, 128 by
/// default).
const BATCH: usize = 100;

/// Keep this edge's records until `shutdown` (then they go with its lease).
pub async fn run(state: Arc<EdgeState>, shutdown: CancellationToken) {
    let events = state.registry.subscribe();
    let record = async {
        if let Some(events) = events {
            record_connections(&state, events, &shutdown).await;
        }
    };
    tokio::join!(
        keep_node_lease(state.clone(), shutdown.clone()),
        reassert_connections(state.clone(), shutdown.clone()),
        record
    );
}

/// Write the registry's changes: what arrived while the last write ran goes in the next one.
async fn record_connections(
    state: &Arc<EdgeState>,
    mut events: tokio::sync::mpsc::UnboundedReceiver<RegistryEvent>,
    shutdown: &CancellationToken,
) {
    loop {
        let first = tokio::select! {
            event = events.recv() => event,
            () = shutdown.cancelled() => return,
        };
        let Some(first) = first else { return };
        let mut batch = Batch::default();
        batch.add(state, first);
        while batch.0.len() < BATCH
            && let Ok(event) = events.try_recv()
        {
            batch.add(state, event);
        }
        batch.write(state).await;
    }
}

/// Record changes for one transaction; the last change of a connection wins (etcd refuses a
/// transaction naming a key twice).
#[derive(Default)]
struct Batch(BTreeMap<String, Option<Connection>>);

impl Batch {
    fn add(&mut self, state: &EdgeState, event: RegistryEvent) {
        match event {
            RegistryEvent::Added(info) => self.0.insert(key(&info), Some(record(state, &info))),
            RegistryEvent::Removed(info) => self.0.insert(key(&info), None),
        };
    }

    async fn write(self, state: &EdgeState) {
        let Some(cp) = state.control.clone() else { return };
        let lease = state.node_lease.load(Ordering::Relaxed);
        let ops: Vec<Op> = self
            .0
            .into_iter()
            .filter_map(|(key, record)| match record {
                Some(conn) if lease != 0 => Some(Op::leased(key, to_json(&conn), lease)),
                Some(_) => None, // recorded when the lease arrives
                None => Some(Op::Delete { key }),
            })
            .collect();
        if ops.is_empty() {
            return;
        }
        if let Err(e) = cp.store().txn(vec![], ops).await {
            tracing::debug!("connection records not written: {e}");
        }
    }
}

fn key(info: &ConnectionInfo) -> String {
    format!("connections/{}/{}", info.tunnel, info.connection_id)
}

fn record(state: &EdgeState, info: &ConnectionInfo) -> Connection {
    Connection {
        connection_id: info.connection_id,
        tunnel: info.tunnel,
        connector: info.connector.to_string(),
        conn_index: info.conn_index,
        edge_node: state.config.node_name.clone(),
        origin_ip: info.origin_addr.ip().to_string(),
        version: info.version.clone(),
        since: info.since.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    }
}

/// Hold this edge's lease; on a new lease, re-record the live connections under it.
async fn keep_node_lease(state: Arc<EdgeState>, shutdown: CancellationToken) {
    let Some(cp) = state.control.clone() else { return };
    loop {
        let lease = match cp.store().lease_grant(NODE_LEASE_TTL).await {
            Ok(lease) => lease,
            Err(e) => {
                tracing::warn!("cannot get a store lease: {e}");
                if pause(&shutdown, Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
        };
        state.node_lease.store(lease, Ordering::Relaxed);
        let live: Vec<RegistryEvent> = state
            .registry
            .all()
            .iter()
            .map(|conn| RegistryEvent::Added(conn.info.clone()))
            .collect();
        for chunk in live.chunks(BATCH) {
            let mut batch = Batch::default();
            for event in chunk {
                batch.add(&state, event.clone());
            }
            batch.write(&state).await;
        }
        loop {
            if pause(&shutdown, NODE_LEASE_TTL / 3).await {
                // Our connections go with us.
                let _ = cp.store().lease_revoke(lease).await;
                return;
            }
            if let Err(e) = cp.store().lease_keep_alive(lease).await {
                tracing::warn!("store lease lost ({e}); taking a new one");
                break;
            }
        }
    }
}

/// Write back the record of a live connection of this edge that someone removed (`burrow tunnel
/// cleanup` on another edge): `tunnel info` and the delete guard must keep seeing it.
async fn reassert_connections(state: Arc<EdgeState>, shutdown: CancellationToken) {
    let Some(cp) = state.control.clone() else { return };
    loop {
        let watch = async {
            let from = cp.store().revision().await?;
            cp.store().watch("connections/", from).await
        };
        let mut watch = match watch.await {
            Ok(watch) => watch,
            Err(e) => {
                tracing::debug!("cannot watch connection records: {e}");
                if pause(&shutdown, Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
        };
        loop {
            let batch = tokio::select! {
                batch = watch.recv() => batch,
                () = shutdown.cancelled() => return,
            };
            let Some(events) = batch else { break };
            for event in events {
                let Event::Delete { key, .. } = event else {
                    continue;
                };
                let mut parts = key.trim_start_matches("connections/").split('/');
                let (Some(tunnel), Some(id)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let (Ok(tunnel), Ok(id)) = (tunnel.parse(), id.parse()) else {
                    continue;
                };
                if let Some(conn) = state.registry.get(tunnel, id) {
                    tracing::info!(%tunnel, connection = %id, "connection record removed while live; writing it back");
                    let mut batch = Batch::default();
                    batch.add(&state, RegistryEvent::Added(conn.info.clone()));
                    batch.write(&state).await;
                }
            }
        }
    }
}
