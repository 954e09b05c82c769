//! The control-plane store: a small key-value interface with revisions, transactions, watches and
//! leases — the shape of etcd's API, so a cluster backend can be added without redesign.
//!
//! Keys are UTF-8 paths (`tunnels/<account>/<id>`); values are bytes (JSON documents). Every
//! successful write bumps one global revision. Watches deliver every change after a revision, in
//! order. Keys written with a lease vanish when the lease expires or is revoked (connection
//! records).
//!
//! Backends: [`sqlite::SqliteStore`] (embedded default, one machine), [`etcd::EtcdStore`] (a
//! cluster of edges).

pub mod etcd;
pub mod sqlite;

use std::time::Duration;

use futures_util::future::BoxFuture;

/// Global, monotonically increasing version of the store. 0 means "nothing written yet".
pub type Revision = u64;

/// Identifies a lease; keys attached to it are deleted when it ends.
pub type LeaseId = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created the key.
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
    pub lease: Option<LeaseId>,
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Missing(String),
    /// The key exists and was last written at this revision.
    ModRevision(String, Revision),
    /// The key exists (a write naming it must not outlive its delete).
    Exists(String),
}

/// A write inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        key: String,
    },
    DeletePrefix {
        prefix: String,
    },
}

impl Op {
    /// A put without a lease.
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }

    /// A put attached to `lease`.
    pub fn leased(key: impl Into<String>, value: impl Into<Vec<u8>>, lease: LeaseId) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: Some(lease),
        }
    }
}

/// Outcome of a transaction: whether the conditions held (then all ops were applied atomically),
/// and the store's revision afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnResult {
    pub succeeded: bool,
    pub revision: Revision,
}

/// Longest key (or prefix) a backend accepts.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value: bigger data is split over several keys (plugin components).
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// Refuse a write no backend should take, the same way on every backend.
pub fn check_op(op: &Op) -> Result<(), StoreError> {
    match op {
        Op::Put { key, value, .. } => {
            check_key(key)?;
            if value.len() > MAX_VALUE_BYTES {
                return Err(StoreError::Backend(format!(
                    "value too large for key {key:?}: {} bytes (max {MAX_VALUE_BYTES})",
                    value.len()
                )));
            }
            Ok(())
        }
        Op::Delete { key } => check_key(key),
        Op::DeletePrefix { prefix } => check_len("prefix", prefix),
    }
}

fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::Backend("key must not be empty".into()));
    }
    check_len("key", key)
}

pub(crate) fn check_len(what: &str, key: &str) -> Result<(), StoreError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(StoreError::Backend(format!(
            "{what} too long: {} bytes (max {MAX_KEY_BYTES})",
            key.len()
        )));
    }
    Ok(())
}

/// Keys under this prefix hold bulk data (plugin components): a watch learns that such a key
/// changed but not its value, and the watch history does not keep the value either (so a few
/// large writes cannot fill the history or be copied to every watcher).
pub const BULK_PREFIX: &str = "bulk/";

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(KeyValue),
    Delete { key: String, revision: Revision },
}

impl Event {
    pub fn key(&self) -> &str {
        match self {
            Event::Put(kv) => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }

    pub fn revision(&self) -> Revision {
        match self {
            Event::Put(kv) => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The watch asked for history that has been compacted away: re-list and watch from now.
    #[error("revision {requested} is compacted (oldest kept: {oldest}); re-list and watch again")]
    Compacted { requested: Revision, oldest: Revision },
    #[error("lease {0} not found or expired")]
    LeaseNotFound(LeaseId),
    #[error("store backend: {0}")]
    Backend(String),
}

/// A stream of change batches from a watch; one batch per committed transaction. Ends (`None`)
/// when the store shuts down or the watcher fell too far behind (then re-list and watch again).
pub type WatchReceiver = tokio::sync::mpsc::Receiver<Vec<Event>>;

/// The store interface every backend implements. Writes return only once durable.
pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<KeyValue>, StoreError>>;

    /// Keys starting with `prefix` in key order, at most `limit`, starting after `after`
    /// (exclusive, for pagination), and the revision they were read at.
    fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> BoxFuture<'_, Result<(Vec<KeyValue>, Revision), StoreError>>;

    /// If every compare holds, apply every op atomically with one new revision.
    fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> BoxFuture<'_, Result<TxnResult, StoreError>>;

    /// Changes to keys under `prefix` with revision > `after`, history first, then live.
    fn watch(&self, prefix: &str, after: Revision) -> BoxFuture<'_, Result<WatchReceiver, StoreError>>;

    /// A lease that ends `ttl` after the last keep-alive.
    fn lease_grant(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, StoreError>>;
    fn lease_keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>>;
    /// End the lease now; its keys are deleted (and watchers see the deletes).
    fn lease_revoke(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Current revision.
    fn revision(&self) -> BoxFuture<'_, Result<Revision, StoreError>>;
}
