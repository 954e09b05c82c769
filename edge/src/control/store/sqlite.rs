//! Embedded SQLite backend of the control-plane [`Store`]: one file, no extra process.
//!
//! Durability: the database runs in WAL mode with `synchronous=FULL`, so a write is fsynced before
//! its future resolves and survives kill -9 or power loss. Every write is one `BEGIN IMMEDIATE`
//! transaction on a single connection behind a mutex; all SQLite calls run on the blocking pool so
//! the async runtime never waits on disk.
//!
//! Revisions: `meta.revision` is bumped once per successful transaction with at least one op;
//! every change is also appended to `history` (at most the newest [`HISTORY_CAP`] rows, trimmed
//! a whole revision at a time inside the write transaction; `meta.compacted` remembers the newest
//! trimmed revision).
//!
//! Watch: each commit sends its events as one batch on an in-process broadcast channel, while the
//! connection lock is still held, so batches go out in revision order. A watch subscribes first,
//! then replays `history` after the requested revision, then forwards live batches, skipping
//! revisions it already sent (the overlap between the replay and the subscription). If the
//! watcher falls behind (broadcast lag, or compaction overtook the replay) its channel is closed;
//! per the [`WatchReceiver`] contract the watcher then re-lists and watches again. Writes by
//! another process on the same file (the `burrow-edge account` and `token` commands beside a
//! running edge) reach this process's watchers from the history within one reaper tick.
//!
//! Leases: stored with their TTL and a wall-clock expiry; a background task revokes expired ones
//! every 500 ms (deleting their keys in one revision). On open every lease gets a fresh full TTL,
//! so restarting the control plane does not drop every connection record at once; owners must
//! keep alive within one TTL, or their keys go.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};
use tokio::sync::{broadcast, mpsc};

use super::{
    Compare, Event, KeyValue, LeaseId, Op, Revision, Store, StoreError, TxnResult, WatchReceiver, check_len, check_op,
};

/// History rows kept for watch replay.
const HISTORY_CAP: u64 = 10_000;
/// Live batches buffered per watcher before it counts as lagging and is closed.
const BROADCAST_CAPACITY: usize = 1024;
const WATCH_CHANNEL: usize = 256;
/// Revisions read per replay query, so a long replay does not hold the connection for long.
const REPLAY_PAGE_REVS: u64 = 256;
const REAP_INTERVAL: Duration = Duration::from_millis(500);
/// Must match `PRAGMA user_version` at the end of [`SCHEMA`]; bump both with a migration.
const SCHEMA_VERSION: i64 = 1;
const KIND_PUT: i64 = 0;
const KIND_DELETE: i64 = 1;

// IMMEDIATE: a deferred transaction that reads (the IF NOT EXISTS checks) and then writes gets
// SQLITE_BUSY at once, without waiting out busy_timeout, when another process (a running edge)
// wrote in between — "database is locked" for a CLI command started beside an edge.
const SCHEMA: &str = "
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 1), revision INTEGER NOT NULL,
    compacted INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (id, revision, compacted) VALUES (1, 0, 0);
-- AUTOINCREMENT: ids are never reused, so a stale owner cannot keep alive someone else's lease.
CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY AUTOINCREMENT, ttl_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL, lease INTEGER REFERENCES leases(id));
CREATE INDEX IF NOT EXISTS kv_lease ON kv(lease) WHERE lease IS NOT NULL;
-- kind 0 = put (value, create_rev, lease set), 1 = delete.
CREATE TABLE IF NOT EXISTS history (rev INTEGER NOT NULL, key TEXT NOT NULL, value BLOB, create_rev INTEGER,
    lease INTEGER, kind INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS history_rev ON history(rev);
PRAGMA user_version = 1;
COMMIT;
";

type Batch = Arc<Vec<Event>>;

/// The embedded store. Cheap to share as `Arc<SqliteStore>`; dropping the last `Arc` closes the
/// database, stops lease expiry and ends all watches.
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    publisher: Arc<Publisher>,
    history_cap: u64,
}

/// Sends committed batches to this process's watchers, and remembers the newest revision sent:
/// a revision beyond it was committed by another process (the `burrow-edge account` commands
/// write the same file), and the reaper's tick sends it from the history.
struct Publisher {
    events: broadcast::Sender<Batch>,
    published: std::sync::atomic::AtomicU64,
}

impl Publisher {
    /// Called with the connection lock held, so batches go out in revision order.
    fn publish(&self, revision: Revision, events: Vec<Event>) {
        if !events.is_empty() {
            // An error only means nobody is watching.
            let _ = self.events.send(Arc::new(events));
        }
        self.published.store(revision, std::sync::atomic::Ordering::Relaxed);
    }

    /// Send what other processes committed since the last revision sent. If the history no longer
    /// holds it, watchers get an empty batch, which closes them: they re-list.
    fn catch_up(&self, c: &mut Connection) -> Result<(), StoreError> {
        let head = current_rev(c)?;
        let published = self.published.load(std::sync::atomic::Ordering::Relaxed);
        if head <= published {
            return Ok(());
        }
        tracing::debug!(
            from = published,
            to = head,
            "publishing another process's writes to watchers"
        );
        self.send_history(read_history(c, "", published, head)?);
        self.published.store(head, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Send revisions read from the history; `None` (compacted away) closes the watchers.
    fn send_history(&self, history: Option<Vec<Vec<Event>>>) {
        match history {
            Some(batches) => batches.into_iter().for_each(|b| {
                let _ = self.events.send(Arc::new(b));
            }),
            None => {
                let _ = self.events.send(Arc::new(Vec::new()));
            }
        }
    }
}

impl SqliteStore {
    /// Open (or create, with parent directories) the database at `path`. Must be called inside a
    /// tokio runtime: it spawns the lease-expiry task. Does blocking I/O; call it at startup.
    pub fn open(path: &Path) -> Result<Arc<Self>, StoreError> {
        Self::open_with_cap(path, HISTORY_CAP)
    }

    /// A private in-memory database (tests, throwaway setups); nothing survives the process.
    pub fn open_in_memory() -> Result<Arc<Self>, StoreError> {
        Self::init(Connection::open_in_memory()?, HISTORY_CAP)
    }

    fn open_with_cap(path: &Path, history_cap: u64) -> Result<Arc<Self>, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| backend(format!("create {}: {e}", dir.display())))?;
        }
        private_file(path)?;
        let conn = Connection::open(path).map_err(|e| backend(format!("open {}: {e}", path.display())))?;
        Self::init(conn, history_cap)
    }

    fn init(conn: Connection, history_cap: u64) -> Result<Arc<Self>, StoreError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| backend("SqliteStore must be opened inside a tokio runtime"))?;
        // First: switching to WAL takes a lock, which another process (an edge beside a CLI
        // command) may hold for a moment.
        conn.pragma_update(None, "busy_timeout", 5000)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if mode != "wal" && mode != "memory" {
            tracing::warn!(%mode, "SQLite refused WAL mode; writes stay durable but slower");
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(backend(format!(
                "database schema v{version} is newer than this build (v{SCHEMA_VERSION})"
            )));
        }
        conn.execute_batch(SCHEMA)?;
        // Fresh grace after a restart: owners had no way to keep alive while we were down.
        conn.execute("UPDATE leases SET expires_at_ms = ?1 + ttl_ms", [now_ms()])?;

        let publisher = Arc::new(Publisher {
            events: broadcast::channel(BROADCAST_CAPACITY).0,
            published: current_rev(&conn)?.into(),
        });
        let store = Arc::new(Self {
            conn: Arc::new(Mutex::new(conn)),
            publisher,
            history_cap,
        });
        // Only a Weak: the task must not keep the store (and its file) alive.
        let weak = Arc::downgrade(&store);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(REAP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { return };
                if let Err(e) = store.reap_expired().await {
                    tracing::warn!(error = %e, "lease expiry failed");
                }
            }
        });
        Ok(store)
    }

    /// Run `f` on the connection in the blocking pool.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &Publisher, u64) -> Result<T, StoreError> + Send + 'static,
    {
        let publisher = Arc::clone(&self.publisher);
        let cap = self.history_cap;
        run_blocking(&self.conn, move |c| f(c, &publisher, cap)).await
    }

    async fn reap_expired(&self) -> Result<usize, StoreError> {
        self.blocking(|c, sender, cap| {
            let ids: Vec<LeaseId> = c
                .prepare_cached("SELECT id FROM leases WHERE expires_at_ms <= ?1")?
                .query_map([now_ms()], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for &id in &ids {
                tracing::debug!(lease = id, "lease expired");
                revoke(c, id, sender, cap)?;
            }
            sender.catch_up(c)?;
            Ok(ids.len())
        })
        .await
    }
}

impl Store for SqliteStore {
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<KeyValue>, StoreError>> {
        let key = key.to_owned();
        Box::pin(self.blocking(move |c, _, _| {
            Ok(
                c.prepare_cached("SELECT key, value, create_rev, mod_rev, lease FROM kv WHERE key = ?1")?
                    .query_row([&key], row_to_kv)
                    .optional()?,
            )
        }))
    }

    fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> BoxFuture<'_, Result<(Vec<KeyValue>, Revision), StoreError>> {
        let prefix = prefix.to_owned();
        let after = after.map(str::to_owned);
        Box::pin(self.blocking(move |c, _, _| {
            check_len("prefix", &prefix)?;
            // One read transaction: the rows and the revision are a consistent snapshot.
            let tx = c.transaction()?;
            let revision = current_rev(&tx)?;
            // Range scan from the prefix (or past `after`) and stop at the first key outside the
            // prefix: exact byte order, no LIKE wildcards to escape.
            let (sql, start) = match after {
                Some(a) if a.as_str() >= prefix.as_str() => ("key > ?1", a),
                _ => ("key >= ?1", prefix.clone()),
            };
            let sql = format!("SELECT key, value, create_rev, mod_rev, lease FROM kv WHERE {sql} ORDER BY key");
            let mut stmt = tx.prepare_cached(&sql)?;
            let mut rows = stmt.query([start])?;
            let mut out = Vec::new();
            while out.len() < limit {
                let Some(row) = rows.next()? else { break };
                let kv = row_to_kv(row)?;
                if !kv.key.starts_with(&prefix) {
                    break;
                }
                out.push(kv);
            }
            Ok((out, revision))
        }))
    }

    fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> BoxFuture<'_, Result<TxnResult, StoreError>> {
        Box::pin(async move {
            // Validate before touching the database.
            for op in &ops {
                check_op(op)?;
            }
            self.blocking(move |c, sender, cap| apply_txn(c, &compares, ops, sender, cap))
                .await
        })
    }

    fn watch(&self, prefix: &str, after: Revision) -> BoxFuture<'_, Result<WatchReceiver, StoreError>> {
        let prefix = prefix.to_owned();
        Box::pin(async move {
            check_len("prefix", &prefix)?;
            // Subscribe before reading the head: every commit is then either in the history read
            // below or in `live` (or both; the task dedupes by revision).
            let live = self.publisher.events.subscribe();
            let (head, compacted) = self
                .blocking(|c, _, _| {
                    Ok(
                        c.query_row("SELECT revision, compacted FROM meta WHERE id = 1", [], |r| {
                            Ok((r.get::<_, Revision>(0)?, r.get::<_, Revision>(1)?))
                        })?,
                    )
                })
                .await?;
            if after < compacted {
                return Err(StoreError::Compacted {
                    requested: after,
                    oldest: compacted + 1,
                });
            }
            let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
            tokio::spawn(run_watch(Arc::clone(&self.conn), live, tx, prefix, after, head));
            Ok(rx)
        })
    }

    fn lease_grant(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, StoreError>> {
        Box::pin(self.blocking(move |c, _, _| {
            let ttl_ms = duration_ms(ttl);
            if ttl_ms <= 0 {
                return Err(backend("lease ttl must be at least 1 ms"));
            }
            Ok(c.query_row(
                "INSERT INTO leases (ttl_ms, expires_at_ms) VALUES (?1, ?2) RETURNING id",
                [ttl_ms, now_ms().saturating_add(ttl_ms)],
                |r| r.get(0),
            )?)
        }))
    }

    fn lease_keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.blocking(move |c, _, _| {
            // An expired lease the reaper has not reached yet is already gone for the owner.
            let updated = c.execute(
                "UPDATE leases SET expires_at_ms = ?1 + ttl_ms WHERE id = ?2 AND expires_at_ms > ?1",
                params![now_ms(), lease],
            )?;
            if updated == 0 {
                Err(StoreError::LeaseNotFound(lease))
            } else {
                Ok(())
            }
        }))
    }

    fn lease_revoke(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.blocking(move |c, sender, cap| revoke(c, lease, sender, cap)))
    }

    fn revision(&self) -> BoxFuture<'_, Result<Revision, StoreError>> {
        Box::pin(self.blocking(|c, _, _| current_rev(c)))
    }
}

async fn run_blocking<T, F>(conn: &Arc<Mutex<Connection>>, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
{
    let conn = Arc::clone(conn);
    tokio::task::spawn_blocking(move || {
        // A panic inside `f` cannot leave a transaction open (rusqlite rolls back on drop), so a
        // poisoned lock still guards a usable connection.
        let mut guard = conn.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    })
    .await
    .map_err(|e| backend(format!("store task failed: {e}")))?
}

fn apply_txn(
    c: &mut Connection,
    compares: &[Compare],
    ops: Vec<Op>,
    sender: &Publisher,
    cap: u64,
) -> Result<TxnResult, StoreError> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current = current_rev(&tx)?;
    for cmp in compares {
        let holds = match cmp {
            Compare::Missing(key) => mod_rev_of(&tx, key)?.is_none(),
            Compare::ModRevision(key, rev) => mod_rev_of(&tx, key)? == Some(*rev),
            Compare::Exists(key) => mod_rev_of(&tx, key)?.is_some(),
        };
        if !holds {
            return Ok(done(false, current));
        }
    }
    if ops.is_empty() {
        return Ok(done(true, current));
    }
    let rev = current + 1;
    let now = now_ms();
    let mut events = Vec::new();
    for op in ops {
        match op {
            Op::Put { key, value, lease } => {
                if let Some(id) = lease {
                    let alive = tx
                        .prepare_cached("SELECT 1 FROM leases WHERE id = ?1 AND expires_at_ms > ?2")?
                        .exists(params![id, now])?;
                    if !alive {
                        // Dropping `tx` rolls back the ops applied so far.
                        return Err(StoreError::LeaseNotFound(id));
                    }
                }
                let create_revision: Revision = tx
                    .prepare_cached(
                        "INSERT INTO kv (key, value, create_rev, mod_rev, lease) VALUES (?1, ?2, ?3, ?3, ?4) \
                         ON CONFLICT(key) DO UPDATE SET value = excluded.value, mod_rev = excluded.mod_rev, \
                         lease = excluded.lease RETURNING create_rev",
                    )?
                    .query_row(params![key, value, rev, lease], |r| r.get(0))?;
                events.push(Event::Put(KeyValue {
                    key,
                    value,
                    create_revision,
                    mod_revision: rev,
                    lease,
                }));
            }
            Op::Delete { key } => {
                if tx.prepare_cached("DELETE FROM kv WHERE key = ?1")?.execute([&key])? > 0 {
                    events.push(Event::Delete { key, revision: rev });
                }
            }
            Op::DeletePrefix { prefix } => {
                let keys: Vec<String> = tx
                    .prepare_cached("SELECT key FROM kv WHERE key >= ?1 ORDER BY key")?
                    .query_map([&prefix], |r| r.get(0))?
                    .take_while(|k| k.as_ref().map_or(true, |k: &String| k.starts_with(&prefix)))
                    .collect::<Result<_, _>>()?;
                let mut del = tx.prepare_cached("DELETE FROM kv WHERE key = ?1")?;
                for key in keys {
                    del.execute([&key])?;
                    events.push(Event::Delete { key, revision: rev });
                }
            }
        }
    }
    commit(tx, rev, events, sender, cap)?;
    Ok(done(true, rev))
}

fn done(succeeded: bool, revision: Revision) -> TxnResult {
    TxnResult { succeeded, revision }
}

/// Delete the lease and its keys in one revision (no new revision if it had no keys).
fn revoke(c: &mut Connection, lease: LeaseId, sender: &Publisher, cap: u64) -> Result<(), StoreError> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if !tx
        .prepare_cached("SELECT 1 FROM leases WHERE id = ?1")?
        .exists([lease])?
    {
        return Err(StoreError::LeaseNotFound(lease));
    }
    let rev = current_rev(&tx)? + 1;
    // Keys first: they reference the lease (foreign key).
    let events: Vec<Event> = tx
        .prepare_cached("DELETE FROM kv WHERE lease = ?1 RETURNING key")?
        .query_map([lease], |r| {
            Ok(Event::Delete {
                key: r.get(0)?,
                revision: rev,
            })
        })?
        .collect::<Result<_, _>>()?;
    tx.execute("DELETE FROM leases WHERE id = ?1", [lease])?;
    if events.is_empty() {
        tx.commit()?;
        return Ok(());
    }
    commit(tx, rev, events, sender, cap)
}

/// Record `events` as revision `rev`, trim history, commit, then publish to watchers. Publishing
/// happens while the caller still holds the connection lock, so batches are sent in order.
fn commit(
    tx: Transaction<'_>,
    rev: Revision,
    events: Vec<Event>,
    sender: &Publisher,
    cap: u64,
) -> Result<(), StoreError> {
    let events: Vec<Event> = events
        .into_iter()
        .map(|event| match event {
            Event::Put(mut kv) if kv.key.starts_with(super::BULK_PREFIX) => {
                kv.value = Vec::new();
                Event::Put(kv)
            }
            other => other,
        })
        .collect();
    // Another process (a CLI command beside this edge) may have written since this one last
    // published: its revisions go out first, read in this transaction, or no watcher here would
    // ever see them (the reaper's catch-up only looks past the newest revision published).
    let published = sender.published.load(std::sync::atomic::Ordering::Relaxed);
    let earlier = match published + 1 < rev {
        true => Some(history_in(&tx, "", published, rev - 1)?),
        false => None,
    };
    tx.execute("UPDATE meta SET revision = ?1 WHERE id = 1", [rev])?;
    {
        let mut ins = tx.prepare_cached(
            "INSERT INTO history (rev, key, value, create_rev, lease, kind) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for event in &events {
            match event {
                Event::Put(kv) => {
                    ins.execute(params![rev, kv.key, kv.value, kv.create_revision, kv.lease, KIND_PUT])?
                }
                Event::Delete { key, .. } => {
                    ins.execute(params![rev, key, None::<u8>, None::<u8>, None::<u8>, KIND_DELETE])?
                }
            };
        }
    }
    let count: u64 = tx.query_row("SELECT COUNT(*) FROM history", [], |r| r.get(0))?;
    if count > cap {
        // Trim whole revisions, so a replay never delivers half a batch.
        let cut: Revision = tx.query_row(
            "SELECT rev FROM history ORDER BY rev DESC, rowid DESC LIMIT 1 OFFSET ?1",
            [cap],
            |r| r.get(0),
        )?;
        tx.execute("DELETE FROM history WHERE rev <= ?1", [cut])?;
        tx.execute("UPDATE meta SET compacted = ?1 WHERE id = 1", [cut])?;
    }
    tx.commit()?;
    if let Some(earlier) = earlier {
        sender.send_history(earlier);
    }
    sender.publish(rev, events);
    Ok(())
}

/// Make the database file readable by its owner only (it holds token hashes and tunnel
/// records), creating it if missing; SQLite gives its `-wal` and `-shm` files the same mode.
fn private_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| backend(format!("open {}: {e}", path.display())))?;
    let mode = file.metadata().map(|m| m.permissions().mode() & 0o777).unwrap_or(0o600);
    if mode & 0o077 != 0 {
        tracing::info!(path = %path.display(), "making the store readable by its owner only");
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| backend(format!("chmod {}: {e}", path.display())))?;
    }
    Ok(())
}

/// The task behind one watch: replay history in pages, then forward live batches.
async fn run_watch(
    conn: Arc<Mutex<Connection>>,
    mut live: broadcast::Receiver<Batch>,
    tx: mpsc::Sender<Vec<Event>>,
    prefix: String,
    mut last: Revision,
    head: Revision,
) {
    while last < head {
        let upto = head.min(last.saturating_add(REPLAY_PAGE_REVS));
        let p = prefix.clone();
        let page = match run_blocking(&conn, move |c| read_history(c, &p, last, upto)).await {
            Ok(Some(page)) => page,
            Ok(None) => {
                tracing::debug!(%prefix, "watch replay overtaken by compaction; closing it");
                return;
            }
            Err(e) => {
                tracing::warn!(%prefix, error = %e, "watch replay failed; closing it");
                return;
            }
        };
        for batch in page {
            if tx.send(batch).await.is_err() {
                return;
            }
        }
        last = upto;
    }
    drop(conn);
    loop {
        let batch = tokio::select! {
            () = tx.closed() => return,
            received = live.recv() => match received {
                Ok(batch) => batch,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(%prefix, missed = n, "watcher fell behind; closing it so it re-lists");
                    return;
                }
                // The store was dropped.
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        let Some(rev) = batch.first().map(Event::revision) else {
            tracing::debug!(%prefix, "another process's writes left the history; closing the watch so it re-lists");
            return;
        };
        if rev <= last {
            continue; // already sent by the replay
        }
        last = rev;
        let events: Vec<Event> = batch.iter().filter(|e| e.key().starts_with(&prefix)).cloned().collect();
        if !events.is_empty() && tx.send(events).await.is_err() {
            return;
        }
    }
}

/// History in `(after, upto]` under `prefix`, one batch per revision; `None` if compaction has
/// removed part of it.
fn read_history(
    c: &mut Connection,
    prefix: &str,
    after: Revision,
    upto: Revision,
) -> Result<Option<Vec<Vec<Event>>>, StoreError> {
    let tx = c.transaction()?;
    history_in(&tx, prefix, after, upto)
}

/// [`read_history`] inside a transaction the caller holds.
fn history_in(
    tx: &Connection,
    prefix: &str,
    after: Revision,
    upto: Revision,
) -> Result<Option<Vec<Vec<Event>>>, StoreError> {
    let compacted: Revision = tx.query_row("SELECT compacted FROM meta WHERE id = 1", [], |r| r.get(0))?;
    if compacted > after {
        return Ok(None);
    }
    let mut stmt = tx.prepare_cached(
        "SELECT rev, key, value, create_rev, lease, kind FROM history WHERE rev > ?1 AND rev <= ?2 ORDER BY rev, rowid",
    )?;
    let mut rows = stmt.query([after, upto])?;
    let mut batches: Vec<Vec<Event>> = Vec::new();
    let mut batch_rev = 0;
    while let Some(row) = rows.next()? {
        let key: String = row.get(1)?;
        if !key.starts_with(prefix) {
            continue;
        }
        let rev: Revision = row.get(0)?;
        let event = if row.get::<_, i64>(5)? == KIND_PUT {
            Event::Put(KeyValue {
                key,
                value: row.get(2)?,
                create_revision: row.get(3)?,
                mod_revision: rev,
                lease: row.get(4)?,
            })
        } else {
            Event::Delete { key, revision: rev }
        };
        match batches.last_mut() {
            Some(batch) if batch_rev == rev => batch.push(event),
            _ => {
                batch_rev = rev;
                batches.push(vec![event]);
            }
        }
    }
    Ok(Some(batches))
}

fn row_to_kv(row: &Row<'_>) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: row.get(0)?,
        value: row.get(1)?,
        create_revision: row.get(2)?,
        mod_revision: row.get(3)?,
        lease: row.get(4)?,
    })
}

fn current_rev(c: &Connection) -> Result<Revision, StoreError> {
    Ok(c.query_row("SELECT revision FROM meta WHERE id = 1", [], |r| r.get(0))?)
}

fn mod_rev_of(c: &Connection, key: &str) -> Result<Option<Revision>, StoreError> {
    Ok(c.prepare_cached("SELECT mod_rev FROM kv WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

/// Wall-clock milliseconds: lease expiry must mean the same thing across restarts.
fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, duration_ms)
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn backend(msg: impl Into<String>) -> StoreError {
    StoreError::Backend(msg.into())
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(format!("sqlite: {e}"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    use rusqlite::types::Value::{Integer, Text};

    use super::*;

    /// A unique directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            Self(std::env::temp_dir().join(format!("burrow-store-{}-{n}-{}", std::process::id(), now_ms())))
        }
        fn db(&self) -> PathBuf {
            self.0.join("nested").join("store.db")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn put(key: &str, value: &str) -> Op {
        Op::put(key, value)
    }

    fn leased(key: &str, lease: LeaseId) -> Op {
        Op::leased(key, "v", lease)
    }

    /// `(succeeded, revision)` of a txn that must not error.
    async fn txn(s: &SqliteStore, compares: Vec<Compare>, ops: Vec<Op>) -> (bool, Revision) {
        let r = s.txn(compares, ops).await.unwrap();
        (r.succeeded, r.revision)
    }

    async fn put1(s: &SqliteStore, key: &str, value: &str) {
        assert!(txn(s, vec![], vec![put(key, value)]).await.0);
    }

    async fn next(rx: &mut WatchReceiver) -> Vec<Event> {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn reopen_keeps_data_and_revision() {
        let dir = TempDir::new();
        let s = SqliteStore::open(&dir.db()).unwrap();
        let pragmas = s.blocking(|c, _, _| {
            let get = |p: &str| c.query_row(&format!("PRAGMA {p}"), [], |r| r.get::<_, rusqlite::types::Value>(0));
            Ok([
                get("journal_mode")?,
                get("synchronous")?,
                get("foreign_keys")?,
                get("busy_timeout")?,
            ])
        });
        assert_eq!(
            pragmas.await.unwrap(),
            [Text("wal".into()), Integer(2), Integer(1), Integer(5000)]
        );
        put1(&s, "a", "1").await;
        put1(&s, "b", "2").await;
        put1(&s, "a", "3").await;
        let lease = s.lease_grant(Duration::from_secs(60)).await.unwrap();
        txn(&s, vec![], vec![leased("c", lease)]).await;
        let before = s.list("", None, 10).await.unwrap();
        drop(s);

        let s = SqliteStore::open(&dir.db()).unwrap();
        assert_eq!(s.list("", None, 10).await.unwrap(), before);
        assert_eq!(s.revision().await.unwrap(), 4);
        s.lease_keep_alive(lease).await.unwrap();
        // History survives too.
        let mut rx = s.watch("a", 0).await.unwrap();
        assert_eq!(next(&mut rx).await[0].revision(), 1);
        assert_eq!(next(&mut rx).await[0].revision(), 3);
    }

    #[tokio::test]
    async fn watch_from_compacted_revision_fails() {
        let dir = TempDir::new();
        let s = SqliteStore::open_with_cap(&dir.db(), 5).unwrap();
        for i in 0..10 {
            put1(&s, &format!("k{i}"), "v").await;
        }
        // Revisions 6..=10 are kept, so watching after 5 still works.
        let err = s.watch("", 4).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Compacted {
                    requested: 4,
                    oldest: 6
                }
            ),
            "{err}"
        );
        let mut rx = s.watch("", 5).await.unwrap();
        assert_eq!(next(&mut rx).await[0].revision(), 6);
        let rows = s.blocking(|c, _, _| Ok(c.query_row("SELECT COUNT(*) FROM history", [], |r| r.get::<_, u64>(0))?));
        assert_eq!(rows.await.unwrap(), 5_u64);
    }

    /// A write by another process (a CLI command beside the edge) just before this process's
    /// own write reaches this process's watchers, in order: it used to be skipped for good.
    #[tokio::test]
    async fn another_process_write_just_before_ours_reaches_the_watch() {
        let dir = TempDir::new();
        let edge = SqliteStore::open(&dir.db()).unwrap();
        let mut rx = edge.watch("", 0).await.unwrap();
        let cli = SqliteStore::open(&dir.db()).unwrap();
        put1(&cli, "from-cli", "1").await;
        put1(&edge, "from-edge", "2").await;
        assert_eq!(next(&mut rx).await[0].key(), "from-cli");
        assert_eq!(next(&mut rx).await[0].key(), "from-edge");
    }
}
