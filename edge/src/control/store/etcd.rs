//! The etcd (v3 API) backend of the control-plane [`Store`], for a cluster of edges: every edge
//! reads, writes and watches the same etcd, so any edge serves the API and follows the config.
//!
//! Mapping: our revisions are etcd's (a fresh etcd is at revision 1); compares are create/mod
//! revision compares; leases are etcd leases (TTLs in whole seconds, at least etcd's minimum).
//! Every key lives under a prefix (`--store-prefix`, default `burrow/`), so several Burrow
//! clusters can share one etcd.
//!
//! What etcd does not do for us, done here:
//! - **Watches resume.** The client never re-opens a broken watch: the pump below re-watches from
//!   the last revision it delivered + 1 (another member answers after a member restart or a
//!   leader change). When that revision has been compacted away, the channel closes and the
//!   watcher re-lists ([`super::WatchReceiver`]'s contract: nothing lost, nothing twice).
//! - **One batch per transaction.** A catching-up watch gets many revisions per response; they are
//!   split by revision.
//! - **Bulk values.** etcd cannot leave values out of a watch: [`super::BULK_PREFIX`] values are
//!   dropped on arrival. A transaction bigger than etcd's request limit (1.5 MiB by default; a
//!   plugin upload is up to 8 MiB) first writes its bulk keys in transactions of their own, which
//!   no reader sees before the documents that name them.
//! - **Retries.** A read, or a write nothing was proposed for (no leader, no connection), is
//!   retried a few times on another member; a write whose outcome is unknown (timed out) is an
//!   error, never retried blindly.
//! - **Compaction.** etcd keeps every revision unless told otherwise: every few minutes the store
//!   compacts history older than [`HISTORY_KEPT`] revisions (harmless when several edges do it).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare as EtcdCompare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    Identity, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    BULK_PREFIX, Compare, Event, KeyValue, LeaseId, Op, Revision, Store, StoreError, TxnResult, WatchReceiver, check_op,
};

/// A call that gets no answer within this is an error (the edge keeps serving its table).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Tries of a call that failed for a passing reason (another member may answer, an election
/// ends): with [`RETRY_PAUSE`] growing linearly, about 2.5 s in all, longer than an election.
const TRIES: u32 = 6;
const RETRY_PAUSE: Duration = Duration::from_millis(170);
/// Bytes of one request we send before splitting bulk writes out (etcd refuses 1.5 MiB).
const MAX_REQUEST: usize = 1024 * 1024;
/// Bytes of one answer we accept: listing plugin chunks, or a watch delivering an upload.
const MAX_ANSWER: usize = 64 * 1024 * 1024;
/// Batches buffered per watcher.
const WATCH_CHANNEL: usize = 256;
/// Revisions of history kept for watchers that reconnect.
pub const HISTORY_KEPT: i64 = 100_000;
const COMPACT_EVERY: Duration = Duration::from_secs(300);

/// How to reach etcd (`burrow-edge run --store etcd://…`).
#[derive(Debug, Clone, Default)]
pub struct EtcdConfig {
    /// `http(s)://host:port` of every member.
    pub endpoints: Vec<String>,
    /// CA of the members' certificates (then the endpoints are `https://`).
    pub ca: Option<PathBuf>,
    /// Client certificate and key, for etcd with `--client-cert-auth`.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// User and password, for etcd with authentication enabled.
    pub user: Option<(String, String)>,
    /// Every key is stored under this prefix.
    pub prefix: String,
}

/// The store on an etcd cluster.
pub struct EtcdStore {
    client: Client,
    prefix: String,
    /// Cancelled when the store is dropped: its watches end, like the SQLite store's.
    closed: CancellationToken,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

impl EtcdStore {
    /// Connect (lazily: an unreachable etcd is an error of the first call, not of this one,
    /// unless authentication is on, which needs an answer now).
    pub async fn connect(config: &EtcdConfig) -> Result<Arc<Self>, StoreError> {
        if config.endpoints.is_empty() {
            return Err(backend("no etcd endpoint given"));
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            // etcd hangs up on clients that ping more often than every 5 s, or while idle.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(false)
            .with_require_leader(true);
        let read =
            |path: &PathBuf| std::fs::read(path).map_err(|e| backend(format!("reading {}: {e}", path.display())));
        if config.ca.is_some() || config.cert.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &config.ca {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let Some((cert, key)) = &config.cert {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(tls);
        }
        if let Some((user, password)) = &config.user {
            options = options.with_user(user, password).with_auto_token_refresh(true);
        }
        let client = Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(|e| backend(format!("etcd {}: {e}", config.endpoints.join(","))))?;
        let store = Arc::new(Self {
            client,
            prefix: config.prefix.clone(),
            closed: CancellationToken::new(),
        });
        tokio::spawn(compact_history(Arc::downgrade(&store), store.closed.clone()));
        Ok(store)
    }

    fn full(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.prefix).into_bytes()
    }

    /// Our key of an etcd key (`None`: outside the prefix, or not UTF-8).
    fn ours(&self, key: &[u8]) -> Option<String> {
        let key = std::str::from_utf8(key).ok()?;
        key.strip_prefix(self.prefix.as_str()).map(str::to_owned)
    }

    fn kv(&self, kv: &etcd_client::KeyValue) -> Option<KeyValue> {
        Some(KeyValue {
            key: self.ours(kv.key())?,
            value: kv.value().to_vec(),
            create_revision: revision(kv.create_revision()),
            mod_revision: revision(kv.mod_revision()),
            lease: (kv.lease() != 0).then(|| kv.lease() as LeaseId),
        })
    }

    fn kv_client(&self) -> etcd_client::KvClient {
        self.client.kv_client().max_decoding_message_size(MAX_ANSWER)
    }

    /// Run the transaction `call` until it succeeds, fails in a way that may have done something
    /// (or that no retry fixes), or [`TRIES`] tries.
    async fn retried_txn<T, F, Fut>(&self, what: &str, call: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        retry(what, nothing_done, call).await
    }

    /// Run the idempotent `call` (a read, a put or delete of a key no one else writes, a lease
    /// call) until it succeeds, fails for a reason no retry fixes, or [`TRIES`] tries: it rides
    /// out a leader election.
    async fn retried<T, F, Fut>(&self, what: &str, call: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        retry(what, transient, call).await
    }

    /// The revision a prefix range starts and ends at, in etcd keys.
    fn range(&self, prefix: &str, after: Option<&str>) -> (Vec<u8>, Vec<u8>) {
        let full = self.full(prefix);
        let start = match after {
            Some(after) if after >= prefix => [self.full(after).as_slice(), b"\0"].concat(),
            _ if full.is_empty() => vec![0],
            _ => full.clone(),
        };
        (start, prefix_end(&full))
    }

    /// Write the bulk values of `ops` ahead, when the whole would be too big for one etcd
    /// request. Returns the ops left for the transaction, and the bulk keys written ahead.
    async fn write_bulk_ahead(&self, ops: Vec<Op>) -> Result<(Vec<Op>, Vec<String>), StoreError> {
        let size: usize = ops.iter().map(op_size).sum();
        if size <= MAX_REQUEST {
            return Ok((ops, Vec::new()));
        }
        let (bulk, rest): (Vec<Op>, Vec<Op>) = ops
            .into_iter()
            .partition(|op| matches!(op, Op::Put { key, lease: None, .. } if key.starts_with(BULK_PREFIX)));
        let mut written = Vec::new();
        for op in bulk {
            if let Op::Put { key, value, .. } = op {
                let full = self.full(&key);
                let put = || {
                    let mut kv = self.kv_client();
                    let (full, value) = (full.clone(), value.clone());
                    async move { kv.put(full, value, None).await }
                };
                if let Err(e) = self.retried("put", put).await {
                    self.delete_keys(&written).await;
                    return Err(e);
                }
                written.push(key);
            }
        }
        Ok((rest, written))
    }

    /// Best effort: bulk keys written ahead of a transaction that did not happen.
    async fn delete_keys(&self, keys: &[String]) {
        for key in keys {
            let full = self.full(key);
            let delete = || {
                let mut kv = self.kv_client();
                let full = full.clone();
                async move { kv.delete(full, None).await }
            };
            if let Err(e) = self.retried("delete", delete).await {
                tracing::warn!("etcd: could not remove {key} after a failed write: {e}");
            }
        }
    }

    /// A call on an existing lease: an unknown or expired one is [`StoreError::LeaseNotFound`].
    async fn on_lease<F, Fut>(&self, what: &str, lease: LeaseId, call: F) -> Result<(), StoreError>
    where
        F: Fn(etcd_client::LeaseClient, i64) -> Fut,
        Fut: Future<Output = Result<(), etcd_client::Error>>,
    {
        match self
            .retried(what, || call(self.client.lease_client(), lease as i64))
            .await
        {
            Err(StoreError::Backend(message)) if message.contains("lease not found") => {
                Err(StoreError::LeaseNotFound(lease))
            }
            other => other,
        }
    }

    fn compare(&self, compare: &Compare) -> EtcdCompare {
        match compare {
            Compare::Missing(key) => EtcdCompare::create_revision(self.full(key), CompareOp::Equal, 0),
            Compare::ModRevision(key, rev) => EtcdCompare::mod_revision(self.full(key), CompareOp::Equal, *rev as i64),
            Compare::Exists(key) => EtcdCompare::create_revision(self.full(key), CompareOp::Greater, 0),
        }
    }

    fn op(&self, op: &Op) -> TxnOp {
        match op {
            Op::Put { key, value, lease } => TxnOp::put(
                self.full(key),
                value.clone(),
                lease.map(|l| PutOptions::new().with_lease(l as i64)),
            ),
            Op::Delete { key } => TxnOp::delete(self.full(key), None),
            Op::DeletePrefix { prefix } => {
                let (start, end) = self.range(prefix, None);
                TxnOp::delete(start, Some(DeleteOptions::new().with_range(end)))
            }
        }
    }

    async fn apply_txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnResult, StoreError> {
        let compares: Vec<EtcdCompare> = compares.iter().map(|c| self.compare(c)).collect();
        let ops: Vec<TxnOp> = ops.iter().map(|o| self.op(o)).collect();
        let txn = || {
            let mut kv = self.kv_client();
            let txn = Txn::new().when(compares.clone()).and_then(ops.clone());
            async move { kv.txn(txn).await }
        };
        let answer = self.retried_txn("txn", txn).await?;
        Ok(TxnResult {
            succeeded: answer.succeeded(),
            revision: answer.header().map_or(0, |h| revision(h.revision())),
        })
    }
}

impl Store for EtcdStore {
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<KeyValue>, StoreError>> {
        let full = self.full(key);
        Box::pin(async move {
            let get = || {
                let mut kv = self.kv_client();
                let full = full.clone();
                async move { kv.get(full, None).await }
            };
            let answer = self.retried("get", get).await?;
            Ok(answer.kvs().first().and_then(|kv| self.kv(kv)))
        })
    }

    fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> BoxFuture<'_, Result<(Vec<KeyValue>, Revision), StoreError>> {
        let (start, end) = self.range(prefix, after);
        Box::pin(async move {
            if limit == 0 {
                return Ok((Vec::new(), self.revision().await?));
            }
            let list = || {
                let mut kv = self.kv_client();
                let options = GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
                let start = start.clone();
                async move { kv.get(start, Some(options)).await }
            };
            let answer = self.retried("list", list).await?;
            let at = answer.header().map_or(0, |h| revision(h.revision()));
            Ok((answer.kvs().iter().filter_map(|kv| self.kv(kv)).collect(), at))
        })
    }

    fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> BoxFuture<'_, Result<TxnResult, StoreError>> {
        Box::pin(async move {
            for op in &ops {
                check_op(op)?;
            }
            if ops.is_empty() && compares.is_empty() {
                return Ok(TxnResult {
                    succeeded: true,
                    revision: self.revision().await?,
                });
            }
            let (ops, written) = self.write_bulk_ahead(ops).await?;
            let result = self.apply_txn(&compares, &ops).await;
            if !matches!(result, Ok(TxnResult { succeeded: true, .. })) {
                self.delete_keys(&written).await;
            }
            match result {
                Err(StoreError::Backend(message)) if message.contains("requested lease not found") => {
                    let lease = ops.iter().find_map(|op| match op {
                        Op::Put { lease: Some(l), .. } => Some(*l),
                        _ => None,
                    });
                    Err(StoreError::LeaseNotFound(lease.unwrap_or_default()))
                }
                other => other,
            }
        })
    }

    fn watch(&self, prefix: &str, after: Revision) -> BoxFuture<'_, Result<WatchReceiver, StoreError>> {
        let (start, end) = self.range(prefix, None);
        Box::pin(async move {
            let mut pump = Pump {
                client: self.client.clone(),
                prefix: self.prefix.clone(),
                start,
                end,
                next: after + 1,
                pending: Vec::new(),
            };
            let stream = pump.open().await?;
            let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
            tokio::spawn(pump.run(stream, tx, self.closed.clone()));
            Ok(rx)
        })
    }

    fn lease_grant(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, StoreError>> {
        // Whole seconds, rounded up: etcd raises it to its own minimum anyway.
        let seconds = i64::try_from(ttl.as_millis().div_ceil(1000).max(1)).unwrap_or(i64::MAX);
        Box::pin(async move {
            let grant = || {
                let mut lease = self.client.lease_client();
                async move { lease.grant(seconds, None).await }
            };
            Ok(self.retried("lease grant", grant).await?.id() as LeaseId)
        })
    }

    fn lease_keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.on_lease("lease keep-alive", lease, |mut client, id| async move {
            client.keep_alive(id).await.map(drop)
        }))
    }

    fn lease_revoke(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.on_lease("lease revoke", lease, |mut client, id| async move {
            client.revoke(id).await.map(drop)
        }))
    }

    fn revision(&self) -> BoxFuture<'_, Result<Revision, StoreError>> {
        let key = self.full("");
        Box::pin(async move {
            let count = || {
                let mut kv = self.kv_client();
                let key = if key.is_empty() { vec![0] } else { key.clone() };
                async move { kv.get(key, Some(GetOptions::new().with_count_only())).await }
            };
            let answer = self.retried("revision", count).await?;
            Ok(answer.header().map_or(0, |h| revision(h.revision())))
        })
    }
}

/// One watch, kept open across member restarts and connection losses.
struct Pump {
    client: Client,
    prefix: String,
    start: Vec<u8>,
    end: Vec<u8>,
    /// The first revision not delivered yet.
    next: Revision,
    /// Batches that arrived with the answer that created the watch.
    pending: Vec<Vec<Event>>,
}

impl Pump {
    /// Open the watch at `next`: an error when that revision is compacted away.
    async fn open(&mut self) -> Result<etcd_client::WatchStream, StoreError> {
        let options = WatchOptions::new()
            .with_range(self.end.clone())
            .with_start_revision(i64::try_from(self.next).unwrap_or(i64::MAX));
        let mut watch = self.client.watch_client().max_decoding_message_size(MAX_ANSWER);
        let mut stream = watch
            .watch(self.start.clone(), Some(options))
            .await
            .map_err(|e| error("watch", e))?;
        // The first answer says whether the watch was created, or why not. A watch from
        // compacted history is created, then cancelled in the next answer: look for that.
        let compacted = self.compacted().await?;
        loop {
            let answer = match tokio::time::timeout(CALL_TIMEOUT, stream.message()).await {
                Ok(Ok(Some(answer))) => answer,
                Ok(Ok(None)) => return Err(backend("etcd closed the watch")),
                Ok(Err(e)) => return Err(error("watch", e)),
                Err(_) if compacted => return Err(backend("etcd did not say where its history starts")),
                Err(_) => return Err(backend("etcd did not answer the watch")),
            };
            if answer.compact_revision() != 0 {
                return Err(StoreError::Compacted {
                    requested: self.next.saturating_sub(1),
                    oldest: revision(answer.compact_revision()),
                });
            }
            if answer.canceled() {
                return Err(backend(format!("etcd refused the watch: {}", answer.cancel_reason())));
            }
            if !compacted {
                // Events already (catching up) belong to the stream: give them to `run`.
                if !answer.events().is_empty() {
                    self.pending = self.batches(answer.events());
                }
                return Ok(stream);
            }
        }
    }

    /// Whether history from `next` on is gone: a read at that revision says so.
    async fn compacted(&self) -> Result<bool, StoreError> {
        let mut kv = self.client.kv_client();
        let at = i64::try_from(self.next).unwrap_or(i64::MAX);
        let options = GetOptions::new().with_count_only().with_revision(at);
        match kv
            .get(self.start.clone(), Some(options.with_range(self.end.clone())))
            .await
        {
            Ok(_) => Ok(false),
            Err(etcd_client::Error::GRpcStatus(status)) if status.message().contains("compacted") => Ok(true),
            // A future revision (nothing written since) or anything else: the watch will tell.
            Err(_) => Ok(false),
        }
    }

    /// Deliver every change, re-opening the watch when it breaks, until the store or the
    /// receiver goes, or the history needed is compacted (then the receiver re-lists).
    async fn run(
        mut self,
        mut stream: etcd_client::WatchStream,
        tx: mpsc::Sender<Vec<Event>>,
        closed: CancellationToken,
    ) {
        let mut failures = 0u32;
        for batch in std::mem::take(&mut self.pending) {
            if tx.send(batch).await.is_err() {
                return;
            }
        }
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                () = closed.cancelled() => return,
                () = tx.closed() => return,
            };
            match message {
                Ok(Some(answer)) if answer.compact_revision() != 0 || answer.canceled() => {
                    tracing::info!(
                        compacted = answer.compact_revision(),
                        "etcd ended a watch ({}); re-reading",
                        answer.cancel_reason()
                    );
                    return;
                }
                Ok(Some(answer)) => {
                    failures = 0;
                    for batch in self.batches(answer.events()) {
                        if tx.send(batch).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
                Ok(None) => tracing::debug!("etcd watch stream ended; watching again"),
                Err(e) => tracing::debug!("etcd watch: {e}; watching again"),
            }
            // Re-open from the first revision not delivered; another member may answer.
            loop {
                failures = failures.saturating_add(1);
                let pause = Duration::from_millis(100 * u64::from(failures.min(20)));
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = closed.cancelled() => return,
                }
                match self.open().await {
                    Ok(s) => {
                        stream = s;
                        for batch in std::mem::take(&mut self.pending) {
                            if tx.send(batch).await.is_err() {
                                return;
                            }
                        }
                        break;
                    }
                    Err(StoreError::Compacted { .. }) => return,
                    Err(e) => {
                        if failures % 10 == 1 {
                            tracing::warn!("etcd watch: {e}; retrying");
                        }
                    }
                }
            }
        }
    }

    /// The events of one answer, one batch per revision (one per transaction), values of bulk
    /// keys dropped.
    fn batches(&mut self, events: &[etcd_client::Event]) -> Vec<Vec<Event>> {
        let mut batches: Vec<Vec<Event>> = Vec::new();
        for event in events {
            let Some(kv) = event.kv() else { continue };
            let rev = revision(kv.mod_revision());
            if rev < self.next {
                continue;
            }
            let Some(key) = std::str::from_utf8(kv.key())
                .ok()
                .and_then(|k| k.strip_prefix(self.prefix.as_str()))
            else {
                continue;
            };
            let event = match event.event_type() {
                EventType::Put => Event::Put(KeyValue {
                    key: key.to_owned(),
                    value: if key.starts_with(BULK_PREFIX) {
                        Vec::new()
                    } else {
                        kv.value().to_vec()
                    },
                    create_revision: revision(kv.create_revision()),
                    mod_revision: rev,
                    lease: (kv.lease() != 0).then(|| kv.lease() as LeaseId),
                }),
                EventType::Delete => Event::Delete {
                    key: key.to_owned(),
                    revision: rev,
                },
            };
            match batches.last_mut() {
                Some(batch) if batch.first().is_some_and(|e| e.revision() == rev) => batch.push(event),
                _ => batches.push(vec![event]),
            }
        }
        if let Some(last) = batches.last().and_then(|b| b.first()) {
            self.next = last.revision() + 1;
        }
        batches
    }
}

/// Every [`COMPACT_EVERY`], drop history older than [`HISTORY_KEPT`] revisions.
async fn compact_history(store: std::sync::Weak<EtcdStore>, closed: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(COMPACT_EVERY) => {}
            () = closed.cancelled() => return,
        }
        let Some(store) = store.upgrade() else { return };
        let Ok(head) = store.revision().await else { continue };
        let to = i64::try_from(head).unwrap_or(i64::MAX) - HISTORY_KEPT;
        if to > 0 {
            let mut client = store.client.clone();
            match client.compact(to, None).await {
                Ok(_) => tracing::debug!(revision = to, "etcd history compacted"),
                // Another edge compacted further already.
                Err(e) if e.to_string().contains("compacted") => {}
                Err(e) => tracing::warn!("compacting etcd history: {e}"),
            }
        }
    }
}

/// Where a prefix range ends: the prefix with its last byte below 0xff incremented.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // "" (or all 0xff): to the end of the key space.
    vec![0]
}

fn revision(r: i64) -> Revision {
    Revision::try_from(r).unwrap_or_default()
}

fn op_size(op: &Op) -> usize {
    match op {
        Op::Put { key, value, .. } => key.len() + value.len() + 16,
        Op::Delete { key } => key.len() + 16,
        Op::DeletePrefix { prefix } => prefix.len() * 2 + 16,
    }
}

async fn retry<T, F, Fut>(what: &str, again: fn(&etcd_client::Error) -> bool, call: F) -> Result<T, StoreError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let mut tried: u32 = 0;
    loop {
        tried += 1;
        match call().await {
            Ok(answer) => return Ok(answer),
            Err(e) if tried < TRIES && again(&e) => {
                tracing::debug!("etcd {what}: {e}; trying again");
                tokio::time::sleep(RETRY_PAUSE * tried).await;
            }
            Err(e) => return Err(error(what, e)),
        }
    }
}

/// Whether a failed call may succeed when tried again: the cluster or the way to it, not the
/// request, was at fault.
fn transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded | tonic::Code::Aborted
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// Whether a failed call certainly did nothing, so trying again is safe: no connection, no
/// leader (nothing was proposed). A write that timed out may have happened.
fn nothing_done(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message();
            status.code() == tonic::Code::Unavailable
                && !message.contains("timed out")
                && !message.contains("leader changed")
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

fn error(what: &str, e: etcd_client::Error) -> StoreError {
    let detail = match &e {
        etcd_client::Error::GRpcStatus(status) => status.message().to_owned(),
        other => other.to_string(),
    };
    let hint = if detail.contains("too many operations") {
        " (start etcd with a larger --max-txn-ops, e.g. 10000)"
    } else if detail.contains("database space exceeded") {
        " (etcd is full: compact, defragment and disarm its NOSPACE alarm)"
    } else {
        ""
    };
    backend(format!("etcd {what}: {detail}{hint}"))
}

fn backend(message: impl Into<String>) -> StoreError {
    StoreError::Backend(message.into())
}
