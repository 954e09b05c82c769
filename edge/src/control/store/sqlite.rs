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

use super::{Compare, Event, KeyValue, LeaseId, Op, Revision, Store, StoreError, TxnResult, WatchReceiver};

const MAX_KEY_BYTES: usize = 1024;
const MAX_VALUE_BYTES: usize = 1024 * 1024;
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

const SCHEMA: &str = "
BEGIN;
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
        match read_history(c, "", published, head)? {
            Some(batches) => batches.into_iter().for_each(|b| {
                let _ = self.events.send(Arc::new(b));
            }),
            None => {
                let _ = self.events.send(Arc::new(Vec::new()));
            }
        }
        self.published.store(head, std::sync::atomic::Ordering::Relaxed);
        Ok(())
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
                match op {
                    Op::Put { key, value, .. } => {
                        check_key(key)?;
                        if value.len() > MAX_VALUE_BYTES {
                            return Err(backend(format!(
                                "value too large for key {key:?}: {} bytes (max {MAX_VALUE_BYTES})",
                                value.len()
                            )));
                        }
                    }
                    Op::Delete { key } => check_key(key)?,
                    Op::DeletePrefix { prefix } => check_len("prefix", prefix)?,
                }
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

fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(backend("key must not be empty"));
    }
    check_len("key", key)
}

fn check_len(what: &str, key: &str) -> Result<(), StoreError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(backend(format!(
            "{what} too long: {} bytes (max {MAX_KEY_BYTES})",
            key.len()
        )));
    }
    Ok(())
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
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }

    fn leased(key: &str, lease: LeaseId) -> Op {
        Op::Put {
            key: key.into(),
            value: b"v".to_vec(),
            lease: Some(lease),
        }
    }

    fn del(key: &str, revision: Revision) -> Event {
        Event::Delete {
            key: key.into(),
            revision,
        }
    }

    /// `(succeeded, revision)` of a txn that must not error.
    async fn txn(s: &SqliteStore, compares: Vec<Compare>, ops: Vec<Op>) -> (bool, Revision) {
        let r = s.txn(compares, ops).await.unwrap();
        (r.succeeded, r.revision)
    }

    async fn put1(s: &SqliteStore, key: &str, value: &str) {
        assert!(txn(s, vec![], vec![put(key, value)]).await.0);
    }

    async fn keys(s: &SqliteStore, prefix: &str, after: Option<&str>, limit: usize) -> Vec<String> {
        s.list(prefix, after, limit)
            .await
            .unwrap()
            .0
            .into_iter()
            .map(|kv| kv.key)
            .collect()
    }

    async fn next(rx: &mut WatchReceiver) -> Vec<Event> {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn put_get_list_prefix_and_pagination() {
        let dir = TempDir::new();
        let s = SqliteStore::open(&dir.db()).unwrap();
        for k in ["a/1", "a/2", "a/3", "a/4", "a0", "b/1", "a%/x", "a_/y", "ab"] {
            put1(&s, k, k).await;
        }
        assert_eq!(s.get("a/2").await.unwrap().unwrap().value, b"a/2");
        assert!(s.get("a/9").await.unwrap().is_none());

        assert_eq!(s.list("a/", None, 100).await.unwrap().1, 9);
        assert_eq!(keys(&s, "a/", None, 100).await, ["a/1", "a/2", "a/3", "a/4"]);
        assert_eq!(keys(&s, "a/", None, 2).await, ["a/1", "a/2"]);
        assert_eq!(keys(&s, "a/", Some("a/2"), 2).await, ["a/3", "a/4"]);
        assert!(keys(&s, "a/", Some("a/4"), 2).await.is_empty());
        // LIKE wildcards are plain characters here.
        assert_eq!(keys(&s, "a%", None, 10).await, ["a%/x"]);
        assert_eq!(keys(&s, "a_", None, 10).await, ["a_/y"]);
        assert_eq!(keys(&s, "", None, 100).await.len(), 9);

        // Limits and empty values.
        let err = s
            .txn(vec![], vec![put(&"k".repeat(MAX_KEY_BYTES + 1), "v")])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("key too long"), "{err}");
        let big = Op::Put {
            key: "big".into(),
            value: vec![0; MAX_VALUE_BYTES + 1],
            lease: None,
        };
        let err = s.txn(vec![], vec![big]).await.unwrap_err();
        assert!(err.to_string().contains("value too large"), "{err}");
        put1(&s, "empty", "").await;
        assert_eq!(s.get("empty").await.unwrap().unwrap().value, b"");
    }

    #[tokio::test]
    async fn txn_compares_revisions_and_deletes() {
        let dir = TempDir::new();
        let s = SqliteStore::open(&dir.db()).unwrap();
        assert_eq!(s.revision().await.unwrap(), 0);
        let missing = || vec![Compare::Missing("k".into())];
        let at = |rev| vec![Compare::ModRevision("k".into(), rev)];

        assert_eq!(txn(&s, missing(), vec![put("k", "v1")]).await, (true, 1));
        // Failed compares write nothing and report the current revision.
        assert_eq!(
            txn(&s, missing(), vec![put("k", "x"), put("other", "x")]).await,
            (false, 1)
        );
        assert_eq!(txn(&s, at(7), vec![put("k", "x")]).await, (false, 1));
        assert!(s.get("other").await.unwrap().is_none());
        assert_eq!(s.get("k").await.unwrap().unwrap().value, b"v1");

        assert_eq!(txn(&s, at(1), vec![put("k", "v2")]).await, (true, 2));
        let kv = s.get("k").await.unwrap().unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.value), (1, 2, b"v2".to_vec()));

        // Several ops share one revision.
        assert_eq!(
            txn(&s, vec![], vec![put("p/a", "1"), put("p/b", "2"), put("q", "3")]).await,
            (true, 3)
        );
        assert_eq!(s.get("p/b").await.unwrap().unwrap().mod_revision, 3);
        let mut rx = s.watch("", 3).await.unwrap();
        let prefix = Op::DeletePrefix { prefix: "p/".into() };
        assert_eq!(txn(&s, vec![], vec![prefix]).await, (true, 4));
        assert_eq!(next(&mut rx).await, [del("p/a", 4), del("p/b", 4)]);
        assert!(keys(&s, "p/", None, 10).await.is_empty());
        assert!(s.get("q").await.unwrap().is_some());
        // Deleting a missing key is a no-op (no event) but still a successful write.
        assert_eq!(
            txn(&s, vec![], vec![Op::Delete { key: "nope".into() }]).await,
            (true, 5)
        );
        // No ops: no new revision.
        assert_eq!(txn(&s, vec![], vec![]).await, (true, 5));
        put1(&s, "q", "4").await;
        assert_eq!(next(&mut rx).await[0].revision(), 6);

        // Exists: "q" does, "p/a" was deleted.
        let exists = |k: &str| Compare::Exists(k.into());
        assert_eq!(txn(&s, vec![exists("p/a")], vec![put("x", "1")]).await, (false, 6));
        assert_eq!(txn(&s, vec![exists("q")], vec![put("x", "1")]).await, (true, 7));
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bulk_values_stay_out_of_watches_and_history() {
        let dir = TempDir::new();
        let s = SqliteStore::open(&dir.db()).unwrap();
        let mut live = s.watch("", 0).await.unwrap();
        put1(&s, "bulk/blob", "a large value").await;
        put1(&s, "small", "v").await;
        let values = |batch: Vec<Event>| -> Vec<(String, Vec<u8>)> {
            batch
                .into_iter()
                .map(|e| match e {
                    Event::Put(kv) => (kv.key, kv.value),
                    Event::Delete { key, .. } => (key, Vec::new()),
                })
                .collect()
        };
        assert_eq!(
            values(live.recv().await.unwrap()),
            [("bulk/blob".to_owned(), Vec::new())]
        );
        assert_eq!(
            values(live.recv().await.unwrap()),
            [("small".to_owned(), b"v".to_vec())]
        );
        // Replayed from history: the same.
        let mut replay = s.watch("", 0).await.unwrap();
        assert_eq!(
            values(replay.recv().await.unwrap()),
            [("bulk/blob".to_owned(), Vec::new())]
        );
        // The value itself is kept.
        assert_eq!(s.get("bulk/blob").await.unwrap().unwrap().value, b"a large value");
    }

    #[tokio::test]
    async fn watch_replays_then_streams_live_in_order() {
        let dir = TempDir::new();
        let s = SqliteStore::open(&dir.db()).unwrap();
        put1(&s, "w/1", "a").await;
        put1(&s, "x/1", "b").await;
        txn(&s, vec![], vec![put("w/2", "c"), put("x/2", "d")]).await;

        let mut rx = s.watch("w/", 0).await.unwrap();
        // Writers race the replay and the switch to live events.
        let writer = {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                for i in 0..200 {
                    put1(&s, &format!("{}/{i}", if i % 2 == 0 { "w" } else { "x" }), "v").await;
                }
                txn(&s, vec![], vec![Op::Delete { key: "w/1".into() }]).await;
            })
        };
        let mut revs = Vec::new();
        while revs.last() != Some(&204) {
            let batch = next(&mut rx).await;
            let rev = batch[0].revision();
            assert!(
                batch.iter().all(|e| e.revision() == rev && e.key().starts_with("w/")),
                "{batch:?}"
            );
            if rev == 3 {
                assert_eq!(batch.len(), 1, "filtered by prefix");
            }
            revs.push(rev);
        }
        writer.await.unwrap();
        let expected: Vec<Revision> = [1, 3].into_iter().chain((4..204).step_by(2)).chain([204]).collect();
        assert_eq!(revs, expected, "in order, no gaps, no duplicates");
        assert!(
            tokio::time::timeout(Duration::from_millis(100), rx.recv())
                .await
                .is_err()
        );

        // Watching from the head gets only new changes.
        let mut rx = s.watch("", 204).await.unwrap();
        put1(&s, "z", "1").await;
        assert_eq!(next(&mut rx).await, [Event::Put(s.get("z").await.unwrap().unwrap())]);
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

    #[tokio::test]
    async fn leases_revoke_expire_and_validate() {
        let dir = TempDir::new();
        let s = SqliteStore::open(&dir.db()).unwrap();
        let gone = |r: Result<(), StoreError>| matches!(r, Err(StoreError::LeaseNotFound(_)));

        // Unknown lease: the whole txn fails and writes nothing.
        let err = s
            .txn(vec![], vec![put("plain", "v"), leased("conn/x", 999)])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::LeaseNotFound(999)));
        assert!(s.get("plain").await.unwrap().is_none());
        assert_eq!(s.revision().await.unwrap(), 0);

        let mut rx = s.watch("conn/", 0).await.unwrap();
        let long = s.lease_grant(Duration::from_secs(60)).await.unwrap();
        txn(
            &s,
            vec![],
            vec![leased("conn/a", long), leased("conn/b", long), put("keep", "v")],
        )
        .await;
        assert_eq!(next(&mut rx).await.len(), 2);
        s.lease_revoke(long).await.unwrap();
        assert_eq!(next(&mut rx).await, [del("conn/a", 2), del("conn/b", 2)]);
        assert!(s.get("conn/a").await.unwrap().is_none());
        assert!(s.get("keep").await.unwrap().is_some());
        assert!(gone(s.lease_keep_alive(long).await));
        assert!(gone(s.lease_revoke(long).await));

        // Expiry: kept alive past its TTL, then left to lapse.
        let short = s.lease_grant(Duration::from_millis(300)).await.unwrap();
        assert_ne!(short, long);
        txn(&s, vec![], vec![leased("conn/c", short)]).await;
        assert_eq!(next(&mut rx).await.len(), 1);
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            s.lease_keep_alive(short).await.unwrap();
        }
        assert!(s.get("conn/c").await.unwrap().is_some());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while s.get("conn/c").await.unwrap().is_some() {
            assert!(tokio::time::Instant::now() < deadline, "lease did not expire");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(next(&mut rx).await, [del("conn/c", 4)]);
        assert!(gone(s.lease_keep_alive(short).await));
    }

    /// Another process writing the same file (`burrow-edge account delete` beside a running
    /// edge): this process's watchers get its changes, in order.
    #[tokio::test]
    async fn watchers_see_another_process_writes() {
        let dir = TempDir::new();
        let ours = SqliteStore::open(&dir.db()).unwrap();
        let theirs = SqliteStore::open(&dir.db()).unwrap();
        put1(&ours, "a", "1").await;
        let mut rx = ours.watch("", 1).await.unwrap();
        put1(&theirs, "b", "2").await;
        txn(&theirs, vec![], vec![Op::Delete { key: "a".into() }]).await;
        let first = next(&mut rx).await;
        assert_eq!(first.len(), 1);
        assert!(
            matches!(&first[0], Event::Put(kv) if kv.key == "b" && kv.mod_revision == 2),
            "{first:?}"
        );
        assert_eq!(next(&mut rx).await, [del("a", 3)]);
        put1(&ours, "c", "3").await;
        let own = next(&mut rx).await;
        assert!(
            matches!(&own[0], Event::Put(kv) if kv.key == "c" && kv.mod_revision == 4),
            "{own:?}"
        );
    }

    #[tokio::test]
    async fn dropping_the_store_ends_watches() {
        let s = SqliteStore::open_in_memory().unwrap();
        let mut rx = s.watch("", 0).await.unwrap();
        put1(&s, "a", "1").await;
        assert_eq!(next(&mut rx).await.len(), 1);
        drop(s);
        let end = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert!(end.unwrap().is_none());
    }
}
