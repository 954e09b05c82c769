//! Control-plane resources kept in the [`Store`]: accounts, API tokens, tunnels, hostname routes
//! and (leased) connection records. Tunnels and routes are persistent; connections are not.
//!
//! Keys:
//!
//! ```text
//! accounts/<account>                 Account
//! tokens/<token id>                  Token (hash only)
//! tunnels/<account>/<tunnel>         Tunnel (secret hash only)
//! tunnel-names/<account>/<name>      tunnel id — keeps names unique per account
//! routes/<hostname>                  Route — hostnames are global, owned by one account
//! pools/<account>/<name>             Pool — origins are tunnels of the same account
//! connections/<tunnel>/<connection>  Connection, attached to the edge node's lease
//! health/<node>                      HealthReport: that edge's view of every pool origin
//! ```
//!
//! Every multi-key change is one store transaction with compares, so two API calls racing for
//! the same name or hostname cannot both win.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use burrow_protocol::{AccountId, TunnelId, TunnelSecret};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::control::health_monitor::HealthReport;
use crate::control::plugin_catalog::bindings_exist;
use crate::control::store::{Compare, Event, KeyValue, LeaseId, Op, Revision, Store, StoreError};
use crate::control::tunnels_file::{decode_hex32, encode_hex};
use crate::hostname::validate_hostname;
use crate::plugins::binding::{Binding, PluginBinding};
use crate::plugins::binding::{MAX_PLUGIN_CONFIG, MAX_PLUGINS_PER_ROUTE};
use crate::plugins::host::PluginHost;
use crate::plugins::version::PluginVersion;
use crate::pools::pool::PoolSpec;
use crate::route_table::{PoolDef, Route, RouteTable, Target, TunnelRecord, hash_secret};

mod accounts;
mod config;
mod pools;
mod routes;
mod tunnels;

pub use config::{LiveConfig, Snapshot, affects_routing};

/// Longest tunnel or account name.
pub const MAX_NAME_LEN: usize = 64;
/// Page size when reading a whole prefix.
const PAGE: usize = 1000;
/// Attempts of a delete whose "nothing refers to it" check was overtaken by a new reference.
const DELETE_ATTEMPTS: usize = 3;

pub use burrow_api::{Account, Connection};
/// A hostname route, as the store keeps it (the API's shape).
pub type RouteDoc = burrow_api::Route;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Token {
    /// Public part of the token, shown for identification (`burrow_<id>_…`).
    pub id: String,
    pub account: AccountId,
    pub name: String,
    /// Hex SHA-256 of the whole token.
    pub sha256: String,
    pub created: u64,
    /// A node token: lets an edge-only node read the routing config (`/v1/watch`), nothing else.
    #[serde(default)]
    pub node: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tunnel {
    pub id: TunnelId,
    pub account: AccountId,
    pub name: String,
    /// Hex SHA-256 of the 32-byte secret.
    pub secret_sha256: String,
    pub created: u64,
}

/// A load-balanced pool of the account's tunnels.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolDoc {
    pub account: AccountId,
    pub name: String,
    pub created: u64,
    pub spec: PoolSpec<TunnelId>,
}

/// What a hostname route points at, as the caller names it.
#[derive(Debug, Clone, Copy)]
pub enum RouteTo<'a> {
    /// A tunnel name or UUID.
    Tunnel(&'a str),
    /// A pool name.
    Pool(&'a str),
}

/// Why a control-plane operation failed; the API maps each kind to a status.
#[derive(Debug, thiserror::Error)]
pub enum CpError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The caller may not do this (a hostname outside its zones).
    #[error("{0}")]
    Forbidden(String),
    /// Something outside the store the call needs did not answer (DNS for a zone claim).
    #[error("{0}")]
    Unavailable(String),
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored document {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
}

/// What can refer to a tunnel, pool or plugin version of an account: its routes and pools, and
/// the compare that fails a delete if a reference was written since they were read.
pub(crate) struct Referrers {
    pub routes: Vec<RouteDoc>,
    pub pools: Vec<PoolDoc>,
    pub guard: Compare,
}

/// The key every write that adds a reference (a route or pool naming a tunnel, pool or plugin
/// version) puts in its transaction. A delete reads it before checking that nothing refers to
/// what it deletes, and commits only if it is unchanged: one key per account, so deletes race
/// only with their own account's writes, and nothing is scanned.
fn references_key(account: AccountId) -> String {
    format!("references/{account}")
}

/// The op that marks a write as adding references (see [`references_key`]).
fn references_written(account: AccountId) -> Op {
    Op::put(references_key(account), Vec::new())
}

/// Run a delete until its guard holds. An attempt checks that nothing refers to what it deletes
/// and commits only if no reference was written since that check (`None` otherwise): the next
/// attempt then sees the new reference and refuses, or cascades to it.
pub(crate) async fn guarded_delete<T, F: Future<Output = Result<Option<T>, CpError>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> Result<T, CpError> {
    for _ in 0..DELETE_ATTEMPTS {
        if let Some(deleted) = attempt().await? {
            return Ok(deleted);
        }
    }
    Err(CpError::Conflict(format!(
        "routes or pools kept changing while deleting {what}; retry"
    )))
}

/// The control plane's operations over a store.
#[derive(Clone)]
pub struct ControlPlane {
    store: Arc<dyn Store>,
    /// The edge's own names (node name, advertised and certificate names): never a tenant's.
    own_names: Arc<[String]>,
}

pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

pub(crate) fn from_json<T: for<'de> Deserialize<'de>>(kv: &KeyValue) -> Result<T, CpError> {
    serde_json::from_slice(&kv.value).map_err(|e| CpError::Corrupt {
        key: kv.key.clone(),
        reason: e.to_string(),
    })
}

/// The public id of a token (`burrow_<id>_<secret>`), if it has the token's shape.
pub fn token_id(token: &str) -> Option<&str> {
    let id = token.strip_prefix("burrow_")?.split_once('_')?.0;
    (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// A plugin chain's size limits.
fn validate_plugins(plugins: &[PluginBinding]) -> Result<(), CpError> {
    if plugins.len() > MAX_PLUGINS_PER_ROUTE {
        let reason = format!("at most {MAX_PLUGINS_PER_ROUTE} plugins per route");
        return Err(CpError::Invalid {
            field: "plugins",
            reason,
        });
    }
    if plugins
        .iter()
        .any(|p| p.config.len() > MAX_PLUGIN_CONFIG || validate_name("plugins", &p.plugin).is_err())
    {
        let reason = format!("each plugin needs a valid name and a config of at most {MAX_PLUGIN_CONFIG} bytes");
        return Err(CpError::Invalid {
            field: "plugins",
            reason,
        });
    }
    Ok(())
}

pub fn validate_name(field: &'static str, name: &str) -> Result<(), CpError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() || name.len() > MAX_NAME_LEN || !ok_chars || name.starts_with('.') {
        return Err(CpError::Invalid {
            field,
            reason: format!("must be 1-{MAX_NAME_LEN} characters of letters, digits, '-', '_' or '.'"),
        });
    }
    Ok(())
}

impl ControlPlane {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            own_names: Arc::from(Vec::new()),
        }
    }

    /// This control plane with the edge's own names, which no tenant may route.
    pub fn with_own_names(mut self, names: Vec<String>) -> Self {
        self.own_names = names.into_iter().map(|n| n.to_ascii_lowercase()).collect();
        self
    }

    pub fn own_names(&self) -> &[String] {
        &self.own_names
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub(crate) async fn list_all<T: for<'de> Deserialize<'de>>(
        &self,
        prefix: &str,
    ) -> Result<(Vec<T>, Revision), CpError> {
        let mut docs = Vec::new();
        let revision = self
            .list_each(prefix, |kv| {
                docs.push(from_json(&kv)?);
                Ok(())
            })
            .await?;
        Ok((docs, revision))
    }

    /// Every document under `prefix` by key (what watch events name), and the revision to watch
    /// from.
    pub(crate) async fn list_keyed<T: for<'de> Deserialize<'de>>(
        &self,
        prefix: &str,
    ) -> Result<(BTreeMap<String, T>, Revision), CpError> {
        let mut docs = BTreeMap::new();
        let revision = self
            .list_each(prefix, |kv| {
                let doc = from_json(&kv)?;
                docs.insert(kv.key, doc);
                Ok(())
            })
            .await?;
        Ok((docs, revision))
    }

    /// Hand every key under `prefix` to `each`, page by page, and return the revision to watch
    /// from for what the listing missed.
    async fn list_each(
        &self,
        prefix: &str,
        mut each: impl FnMut(KeyValue) -> Result<(), CpError>,
    ) -> Result<Revision, CpError> {
        let mut after: Option<String> = None;
        // The revision of the *first* page: a write landing between pages, in a range already
        // read, is newer than it, so a watch from it delivers that write. Any later page's
        // revision would skip it for good.
        let mut revision = None;
        loop {
            let (page, rev) = self.store.list(prefix, after.as_deref(), PAGE).await?;
            let revision = *revision.get_or_insert(rev);
            let full = page.len() == PAGE;
            after = page.last().map(|kv| kv.key.clone());
            page.into_iter().try_for_each(&mut each)?;
            if !full {
                return Ok(revision);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use futures_util::future::BoxFuture;

    use crate::control::store::sqlite::SqliteStore;
    use crate::control::store::{LeaseId, TxnResult, WatchReceiver};
    use crate::pools::pool::PoolOrigin;

    use super::*;

    /// A real store that commits one more write, into the range already read, just before the
    /// second page of a listing is read (as a concurrent API call can).
    struct WriteBetweenPages {
        inner: Arc<SqliteStore>,
        written: AtomicBool,
    }

    fn put(key: &str) -> Op {
        Op::put(key, b"{}".to_vec())
    }

    impl Store for WriteBetweenPages {
        fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<KeyValue>, StoreError>> {
            self.inner.get(key)
        }
        fn list(
            &self,
            prefix: &str,
            after: Option<&str>,
            limit: usize,
        ) -> BoxFuture<'_, Result<(Vec<KeyValue>, Revision), StoreError>> {
            let (prefix, after) = (prefix.to_owned(), after.map(str::to_owned));
            Box::pin(async move {
                if after.is_some() && !self.written.swap(true, Ordering::SeqCst) {
                    self.inner.txn(vec![], vec![put("things/0000-late")]).await?;
                }
                self.inner.list(&prefix, after.as_deref(), limit).await
            })
        }
        fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> BoxFuture<'_, Result<TxnResult, StoreError>> {
            self.inner.txn(compares, ops)
        }
        fn watch(&self, prefix: &str, after: Revision) -> BoxFuture<'_, Result<WatchReceiver, StoreError>> {
            self.inner.watch(prefix, after)
        }
        fn lease_grant(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, StoreError>> {
            self.inner.lease_grant(ttl)
        }
        fn lease_keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
            self.inner.lease_keep_alive(lease)
        }
        fn lease_revoke(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
            self.inner.lease_revoke(lease)
        }
        fn revision(&self) -> BoxFuture<'_, Result<Revision, StoreError>> {
            self.inner.revision()
        }
    }

    /// A route written while its pool or tunnel is deleted: whichever wins, no route is left
    /// naming a pool or tunnel that does not exist.
    #[tokio::test]
    async fn a_delete_racing_a_route_to_it_leaves_no_route_dangling() {
        let cp = ControlPlane::new(SqliteStore::open_in_memory().unwrap());
        let (account, _) = cp.create_account("acme").await.unwrap();
        let a = account.id;
        cp.add_zone(a, "test", crate::control::zones::ZoneSource::Operator)
            .await
            .unwrap();
        let mut outcomes = std::collections::BTreeSet::new();
        for i in 0..20 {
            let (tunnel, pool) = (format!("t{i}"), format!("p{i}"));
            let (to_pool, to_tunnel) = (format!("p{i}.test"), format!("t{i}.test"));
            let id = cp.create_tunnel(a, &tunnel).await.unwrap().0.id.to_string();
            cp.put_pool(a, &pool, PoolSpec::default(), None).await.unwrap();
            let (routed, deleted) = tokio::join!(
                cp.route(a, &to_pool, RouteTo::Pool(&pool), false, None),
                cp.delete_pool(a, &pool)
            );
            outcomes.insert(("pool", routed.is_ok(), deleted.is_ok()));
            let (routed, deleted) = tokio::join!(
                cp.route(a, &to_tunnel, RouteTo::Tunnel(&id), false, None),
                cp.delete_tunnel(a, &id, false)
            );
            outcomes.insert(("tunnel", routed.is_ok(), deleted.is_ok()));
            for route in cp.list_routes(a).await.unwrap() {
                match (&route.pool, route.tunnel) {
                    (Some(p), _) => assert!(cp.pool(a, p).await.is_ok(), "{} names deleted pool {p}", route.hostname),
                    (None, Some(t)) => assert!(
                        cp.find_tunnel(a, &t.to_string()).await.is_ok(),
                        "{} names deleted tunnel {t}",
                        route.hostname
                    ),
                    (None, None) => panic!("{} names nothing", route.hostname),
                }
            }
        }
        // A pool that a route won is never deleted; a tunnel's delete takes its routes along.
        assert!(!outcomes.contains(&("pool", true, true)), "{outcomes:?}");
    }

    /// The config an edge keeps from watch events is the config a fresh read gives, through
    /// creates, edits and deletes of tunnels, routes and pools (and writes that do not route).
    #[tokio::test]
    async fn a_config_kept_from_watch_events_matches_a_fresh_read() {
        let store = SqliteStore::open_in_memory().unwrap();
        let cp = ControlPlane::new(store.clone());
        let (account, _) = cp.create_account("acme").await.unwrap();
        let a = account.id;
        cp.add_zone(a, "test", crate::control::zones::ZoneSource::Operator)
            .await
            .unwrap();
        cp.create_tunnel(a, "web").await.unwrap();
        cp.route(a, "a.test", RouteTo::Tunnel("web"), false, None)
            .await
            .unwrap();
        let mut config = cp.read_config().await.unwrap();
        let mut watch = store.watch("", config.revision()).await.unwrap();

        cp.create_tunnel(a, "api").await.unwrap();
        cp.route(a, "b.test", RouteTo::Tunnel("api"), false, None)
            .await
            .unwrap();
        cp.route(a, "a.test", RouteTo::Tunnel("api"), true, None).await.unwrap();
        let spec = PoolSpec {
            origins: vec![PoolOrigin {
                tunnel: "web".to_string(),
                weight: 1,
                enabled: true,
            }],
            ..Default::default()
        };
        cp.put_pool(a, "both", spec, None).await.unwrap();
        cp.route(a, "c.test", RouteTo::Pool("both"), false, None).await.unwrap();
        cp.delete_route(a, "b.test").await.unwrap();
        cp.create_node_token("edge-2").await.unwrap(); // not routing: no change
        let mut changes = 0;
        while config.revision() < store.revision().await.unwrap() {
            let events = tokio::time::timeout(Duration::from_secs(5), watch.recv())
                .await
                .unwrap()
                .unwrap();
            changes += usize::from(config.apply(&events).unwrap());
        }
        assert_eq!(changes, 6, "every routing write counts, the token does not");

        let kept = serde_json::to_value(cp.snapshot(&config).await.unwrap()).unwrap();
        let fresh = serde_json::to_value(cp.snapshot(&cp.read_config().await.unwrap()).await.unwrap()).unwrap();
        let hosts = |s: &serde_json::Value| s["routes"].as_array().unwrap().len();
        assert_eq!(hosts(&kept), 2, "{kept}");
        assert_eq!(kept["tunnels"], fresh["tunnels"]);
        assert_eq!(kept["routes"], fresh["routes"]);
        assert_eq!(kept["pools"], fresh["pools"]);
    }

    /// A listing longer than a page is read in several reads; a watch from the revision it
    /// reports must deliver whatever it missed. (The scale bench lost a tunnel for good this way.)
    #[tokio::test]
    async fn a_write_between_pages_of_a_listing_reaches_the_watch() {
        let inner = SqliteStore::open_in_memory().unwrap();
        for chunk in (0..PAGE + 10).collect::<Vec<_>>().chunks(200) {
            let ops = chunk.iter().map(|i| put(&format!("things/{i:04}-a"))).collect();
            inner.txn(vec![], ops).await.unwrap();
        }
        let store = Arc::new(WriteBetweenPages {
            inner,
            written: AtomicBool::new(false),
        });
        let cp = ControlPlane::new(store.clone());
        let (things, revision) = cp.list_all::<serde_json::Value>("things/").await.unwrap();
        assert_eq!(things.len(), PAGE + 10, "the late write sorts before the second page");
        let mut watch = store.watch("things/", revision).await.unwrap();
        let events = tokio::time::timeout(Duration::from_secs(5), watch.recv())
            .await
            .expect("the watch delivers the write the listing missed")
            .unwrap();
        assert!(events.iter().any(|e| e.key() == "things/0000-late"), "{events:?}");
    }

    #[test]
    fn a_fallback_loop_costs_the_pool_its_fallback_not_the_whole_table() {
        let account = AccountId(Uuid::from_u128(1));
        let tunnel = Tunnel {
            id: TunnelId(Uuid::from_u128(2)),
            account,
            name: "web".into(),
            secret_sha256: "00".repeat(32),
            created: 0,
        };
        let pool = |name: &str, fallback: &str| PoolDoc {
            account,
            name: name.into(),
            created: 0,
            spec: PoolSpec {
                origins: vec![PoolOrigin {
                    tunnel: tunnel.id,
                    weight: 1,
                    enabled: true,
                }],
                fallback: Some(fallback.into()),
                ..Default::default()
            },
        };
        let route = RouteDoc {
            hostname: "a.test".into(),
            account,
            tunnel: None,
            pool: Some("a".into()),
            created: 0,
            plugins: Vec::new(),
        };
        let snapshot = Snapshot {
            revision: 1,
            tunnels: vec![tunnel.clone()],
            routes: vec![route],
            pools: vec![pool("a", "b"), pool("b", "a"), pool("c", "missing")],
            plugins: Vec::new(),
        };
        let table = snapshot.to_table(None).unwrap();
        assert_eq!(table.pools().len(), 3);
        let fallbacks: Vec<_> = table.pools().iter().map(|p| p.fallback).collect();
        assert_eq!(
            fallbacks,
            vec![None, Some(0), None],
            "the loop is cut once; a missing fallback is dropped"
        );
        assert!(table.lookup("a.test").is_some());
    }
}
