//! Edges follow the store: watch → rebuild the whole route table off the hot path → one swap.
//!
//! Every applied snapshot is also written to `<data-dir>/snapshot.json` (temp + fsync + rename),
//! so an edge whose store is unreachable at start serves the last config it saw — a control-plane
//! outage never becomes an edge outage. Connector registrations are checked against the
//! current table, so reconnects keep working during an outage too.
//!
//! The edge also holds a lease in the store and records each live tunnel connection under it
//! (`burrow tunnel list/info` read them); if the edge dies, the lease expires and so do they.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use burrow_shared::backoff::Backoff;
use tokio_util::sync::CancellationToken;

use crate::EdgeState;
use crate::control::connection_records;
use crate::control::resources::{ControlPlane, CpError, LiveConfig, Snapshot};
use crate::control::store::WatchReceiver;
use crate::plugins::host::PluginHost;
use crate::plugins::version::PluginVersion;
use crate::route_table::RouteTable;

pub fn snapshot_path(data_dir: &Path) -> PathBuf {
    data_dir.join("snapshot.json")
}

/// The last applied snapshot, if any (used at start when the store cannot be reached).
pub fn load_snapshot(data_dir: &Path) -> Result<Option<Snapshot>> {
    let path = snapshot_path(data_dir);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?,
    ))
}

/// Follow the local store until `shutdown`: apply every change that affects routing.
pub async fn follow(state: Arc<EdgeState>, data_dir: PathBuf, shutdown: CancellationToken) {
    let Some(cp) = state.control.clone() else { return };
    tokio::spawn(connection_records::run(state.clone(), shutdown.clone()));
    tokio::spawn(publish_health(state.clone(), shutdown.clone()));
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(snapshots(cp.clone(), tx, shutdown));
    let mut retry = RetryLoad::default();
    loop {
        let snapshot = tokio::select! {
            next = rx.recv() => match next {
                Some(snapshot) => snapshot,
                None => return,
            },
            again = retry.due() => again,
        };
        let fetch = |version: PluginVersion| {
            let cp = cp.clone();
            async move { Ok(cp.plugin_wasm(&version).await?) }
        };
        let complete = apply(&state, &snapshot, &data_dir, fetch).await;
        retry.after_apply(snapshot, complete);
    }
}

/// Send a snapshot now and a new one after every change that affects routing (bursts are
/// coalesced), until `shutdown` or the receiver goes away. Feeds this edge's table and the
/// `/v1/watch` stream of edge-only nodes alike. The config is read whole once, then kept current
/// from the watch; it is read again only when the watch ends or sends something that does not
/// decode.
pub async fn snapshots(cp: ControlPlane, tx: tokio::sync::mpsc::Sender<Snapshot>, shutdown: CancellationToken) {
    loop {
        // Read and watch from the same revision, so no change falls between them.
        let started = async {
            let config = cp.read_config().await?;
            let watch = cp.store().watch("", config.revision()).await?;
            Ok::<_, CpError>((config, watch))
        };
        let (mut config, mut watch) = match started.await {
            Ok(started) => started,
            Err(e) => {
                tracing::warn!("cannot follow the store, serving the current table: {e}");
                if pause(&shutdown, Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
        };
        loop {
            let snapshot = match cp.snapshot(&config).await {
                Ok(snapshot) => snapshot,
                Err(e) => {
                    tracing::warn!("cannot read the plugin versions the config binds, reading it again: {e}");
                    break;
                }
            };
            if tx.send(snapshot).await.is_err() {
                return;
            }
            match next_change(&mut config, &mut watch, &tx, &shutdown).await {
                Some(true) => continue,
                Some(false) => break,
                None => return,
            }
        }
        if pause(&shutdown, Duration::from_millis(100)).await {
            return;
        }
    }
}

/// Apply watch batches to `config` until one changes what edges serve, then whatever else is
/// already queued (a burst becomes one snapshot). `Some(false)`: the watch ended or a value did
/// not decode, read the whole config again; `None`: stop.
async fn next_change(
    config: &mut LiveConfig,
    watch: &mut WatchReceiver,
    tx: &tokio::sync::mpsc::Sender<Snapshot>,
    shutdown: &CancellationToken,
) -> Option<bool> {
    let reread = |e: CpError| {
        tracing::warn!("a config change does not decode, reading the whole config again: {e}");
        Some(false)
    };
    loop {
        tokio::select! {
            batch = watch.recv() => match batch.map(|events| config.apply(&events)) {
                Some(Ok(true)) => break,
                Some(Ok(false)) => {}
                Some(Err(e)) => return reread(e),
                None => return Some(false),
            },
            () = tx.closed() => return None,
            () = shutdown.cancelled() => return None,
        }
    }
    while let Ok(events) = watch.try_recv() {
        if let Err(e) = config.apply(&events) {
            return reread(e);
        }
    }
    Some(true)
}

/// Sleep, or return `true` if shutting down.
pub(crate) async fn pause(shutdown: &CancellationToken, duration: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => false,
        () = shutdown.cancelled() => true,
    }
}

/// Build the table of `snapshot`: first load the uploaded plugin versions it binds (from memory,
/// the artifact cache, or `fetch` — compiled before the swap, never on the request path). Also
/// says whether every one of them loaded.
pub async fn build_table<F, Fut>(
    plugins: Option<&Arc<PluginHost>>,
    snapshot: &Snapshot,
    fetch: F,
) -> (Result<RouteTable, String>, bool)
where
    F: Fn(PluginVersion) -> Fut,
    Fut: Future<Output = Result<Vec<u8>>>,
{
    let complete = match plugins {
        Some(host) => host.prepare(&snapshot.plugins, fetch).await,
        None if !snapshot.plugins.is_empty() => {
            tracing::error!("the config binds uploaded plugins but this edge runs no plugin host");
            true
        }
        None => true,
    };
    (snapshot.to_table(plugins.map(|host| &**host)), complete)
}

/// Build the table from `snapshot`, swap it in and keep the snapshot on disk; a snapshot that
/// does not build is reported and the current table keeps serving. `false` when some plugin
/// version it binds did not load (see [`RetryLoad`]).
pub async fn apply<F, Fut>(state: &EdgeState, snapshot: &Snapshot, data_dir: &Path, fetch: F) -> bool
where
    F: Fn(PluginVersion) -> Fut,
    Fut: Future<Output = Result<Vec<u8>>>,
{
    let (table, complete) = build_table(state.config.plugins.as_ref(), snapshot, fetch).await;
    match table {
        Ok(table) => {
            state.swap_routes(table);
            state
                .snapshot_writer
                .get_or_init(|| SnapshotWriter::start(data_dir.to_owned()))
                .write(snapshot);
        }
        Err(e) => tracing::error!(
            revision = snapshot.revision,
            "store config does not build; the current table keeps serving: {e}"
        ),
    }
    complete
}

/// A snapshot whose plugin versions did not all load (a fetch failed), applied again with
/// [`RETRY_LOAD`] until they do or a newer snapshot comes.
#[derive(Default)]
pub struct RetryLoad {
    pending: Option<Snapshot>,
    failures: u32,
    delay: Duration,
}

/// Between two loads of a snapshot whose plugins did not all load.
pub const RETRY_LOAD: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

impl RetryLoad {
    pub fn after_apply(&mut self, snapshot: Snapshot, complete: bool) {
        if complete {
            self.pending = None;
            self.failures = 0;
            self.delay = Duration::ZERO;
        } else {
            self.delay = RETRY_LOAD.delay(self.failures);
            self.failures = self.failures.saturating_add(1);
            self.pending = Some(snapshot);
        }
    }

    /// The snapshot to apply again, once its delay has passed; never, when there is none.
    pub async fn due(&mut self) -> Snapshot {
        if self.pending.is_none() {
            return std::future::pending().await;
        }
        tokio::time::sleep(self.delay).await;
        match self.pending.take() {
            Some(snapshot) => snapshot,
            None => std::future::pending().await,
        }
    }
}

/// Keeps the newest applied snapshot on disk, written off the apply path: serializing and
/// syncing a large config (10k tunnels: megabytes) must not hold up the next change, and a
/// burst of changes writes only the last one. After each write it waits a few times as long as
/// the write took (at most [`SNAPSHOT_PAUSE_MAX`]), so that at 100k routes, changes in a row do
/// not spend most of the edge's control CPU on writing files; a small config is written at once.
pub struct SnapshotWriter(tokio::sync::watch::Sender<Option<Arc<Snapshot>>>);

/// The longest pause between two snapshot writes.
const SNAPSHOT_PAUSE_MAX: Duration = Duration::from_secs(2);

impl SnapshotWriter {
    fn start(data_dir: PathBuf) -> Self {
        let (tx, mut rx) = tokio::sync::watch::channel::<Option<Arc<Snapshot>>>(None);
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let Some(snapshot) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let dir = data_dir.clone();
                let started = std::time::Instant::now();
                match tokio::task::spawn_blocking(move || write_snapshot(&dir, &snapshot)).await {
                    Ok(Err(e)) => tracing::warn!("could not save the config snapshot: {e:#}"),
                    Err(e) => tracing::warn!("could not save the config snapshot: {e}"),
                    Ok(Ok(())) => {}
                }
                tokio::time::sleep((started.elapsed() * 4).min(SNAPSHOT_PAUSE_MAX)).await;
            }
        });
        Self(tx)
    }

    fn write(&self, snapshot: &Snapshot) {
        self.0.send_replace(Some(Arc::new(snapshot.clone())));
    }
}

fn write_snapshot(data_dir: &Path, snapshot: &Snapshot) -> Result<()> {
    let text = serde_json::to_vec(snapshot)?;
    burrow_shared::files::write_private(&snapshot_path(data_dir), &text)
}

/// Keep this edge's pool-health view in the store (for `burrow pool show`).
async fn publish_health(state: Arc<EdgeState>, shutdown: CancellationToken) {
    let Some(cp) = state.control.clone() else { return };
    let mut schedule = crate::control::health_monitor::ReportSchedule::default();
    loop {
        if pause(&shutdown, Duration::from_secs(1)).await {
            return;
        }
        let lease = state.node_lease.load(Ordering::Relaxed);
        if lease == 0 {
            continue;
        }
        let Some(report) = schedule.due(&state) else { continue };
        match cp.put_node_health(&report, Some(lease)).await {
            Ok(()) => schedule.succeeded(),
            Err(e) => {
                tracing::debug!("health report not written: {e}");
                schedule.failed();
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn snapshot(revision: u64) -> Snapshot {
        Snapshot {
            revision,
            ..Snapshot::default()
        }
    }

    #[tokio::test]
    async fn an_incomplete_snapshot_is_applied_again_with_backoff() {
        let mut retry = RetryLoad::default();
        retry.after_apply(snapshot(1), true);
        let idle = tokio::time::timeout(Duration::from_millis(100), retry.due()).await;
        assert!(idle.is_err(), "nothing to retry after a complete load");

        retry.after_apply(snapshot(2), false);
        assert!(retry.delay <= RETRY_LOAD.cap(0));
        let again = tokio::time::timeout(Duration::from_secs(3), retry.due()).await.unwrap();
        assert_eq!(again.revision, 2);
        // Failing again may wait longer; a complete load (of a newer snapshot) ends the retries.
        retry.after_apply(again, false);
        assert!(retry.delay <= RETRY_LOAD.cap(1) && retry.failures == 2);
        retry.after_apply(snapshot(3), true);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), retry.due())
                .await
                .is_err()
        );
    }
}
