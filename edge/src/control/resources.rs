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
    Op::Put {
        key: references_key(account),
        value: Vec::new(),
        lease: None,
    }
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

/// What an edge needs from the control plane: tunnels and routes at one revision. Also the
/// on-disk snapshot format an edge starts from when the store is unreachable.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub revision: Revision,
    pub tunnels: Vec<Tunnel>,
    pub routes: Vec<RouteDoc>,
    #[serde(default)]
    pub pools: Vec<PoolDoc>,
    /// The uploaded plugin versions that bindings name (metadata; edges fetch the components).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginVersion>,
}

impl Snapshot {
    /// The routing table's record of a stored tunnel.
    pub fn tunnel_record(t: &Tunnel) -> Result<TunnelRecord, String> {
        let hash =
            decode_hex32(&t.secret_sha256).ok_or_else(|| format!("tunnel {} has a corrupt secret hash", t.id))?;
        Ok(TunnelRecord {
            id: t.id,
            account: t.account,
            name: t.name.clone(),
            secret_sha256: hash,
        })
    }

    /// Build the routing table, with bindings of uploaded plugins attached to what `plugins`
    /// has loaded (see [`PluginHost::prepare`]). A route whose tunnel belongs to another account
    /// is never served (the API prevents it; this guards against a store edited by hand).
    pub fn to_table(&self, plugins: Option<&PluginHost>) -> Result<RouteTable, String> {
        let resolve = |account: AccountId, binding: &PluginBinding| match plugins {
            Some(host) => host.resolve(account, binding),
            None => Binding::new(binding.clone()),
        };
        let records = self
            .tunnels
            .iter()
            .map(Self::tunnel_record)
            .collect::<Result<Vec<_>, _>>()?;
        let owners: std::collections::HashMap<TunnelId, AccountId> =
            self.tunnels.iter().map(|t| (t.id, t.account)).collect();
        let mut pools = Vec::with_capacity(self.pools.len());
        let mut pool_index = std::collections::HashMap::new();
        for p in &self.pools {
            let mut spec = p.spec.clone();
            let balancer = spec.balancer.as_ref().map(|b| resolve(p.account, b));
            // A tunnel deleted in a race with a pool edit is dropped, not fatal for the table.
            spec.origins.retain(|o| owners.get(&o.tunnel) == Some(&p.account));
            if let Err(reason) = spec.validate() {
                tracing::warn!(pool = %p.name, "pool skipped: {reason}");
                continue;
            }
            pool_index.insert((p.account, p.name.as_str()), pools.len());
            pools.push(PoolDef {
                account: p.account,
                name: p.name.clone(),
                spec,
                balancer,
            });
        }
        // One tenant's broken fallback chain (a race between two edits) must not stop the whole
        // table from building: such a pool loses its fallback instead.
        for i in 0..pools.len() {
            let mut hops = 0;
            let mut next = pools[i].spec.fallback.clone();
            let account = pools[i].account;
            let broken = loop {
                let Some(name) = next else { break false };
                hops += 1;
                match pool_index.get(&(account, name.as_str())) {
                    Some(&j) if j != i && hops <= crate::pools::pool::MAX_FALLBACK_DEPTH => {
                        next = pools[j].spec.fallback.clone();
                    }
                    _ => break true,
                }
            };
            if broken {
                tracing::warn!(pool = %pools[i].name, "fallback ignored: it is missing, loops or is too long");
                pools[i].spec.fallback = None;
            }
        }
        let routes = self
            .routes
            .iter()
            .filter_map(|r| {
                let target = match (r.tunnel, &r.pool) {
                    (Some(t), None) if owners.get(&t) == Some(&r.account) => Target::Tunnel(t),
                    (None, Some(pool)) if pool_index.contains_key(&(r.account, pool.as_str())) => {
                        Target::Pool(pool_index[&(r.account, pool.as_str())])
                    }
                    _ => {
                        tracing::warn!(hostname = %r.hostname, "route skipped: its account does not own its tunnel or pool");
                        return None;
                    }
                };
                let plugins = r.plugins.iter().map(|b| resolve(r.account, b)).collect();
                Some(Route { hostname: r.hostname.clone(), target, plugins })
            })
            .collect();
        RouteTable::build(records, routes, pools)
            .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
    }
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
    async fn list_keyed<T: for<'de> Deserialize<'de>>(
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

    // --- accounts and tokens -----------------------------------------------------------------

    /// Operator bootstrap: a new account and its first (admin) token, shown once.
    pub async fn create_account(&self, name: &str) -> Result<(Account, String), CpError> {
        validate_name("name", name)?;
        let account = Account {
            id: AccountId::new_random(),
            name: name.to_owned(),
            created: now(),
        };
        let key = format!("accounts/{}", account.id);
        let (token, token_ops) = self.new_token(account.id, "admin");
        let mut ops = vec![Op::Put {
            key: key.clone(),
            value: to_json(&account),
            lease: None,
        }];
        ops.extend(token_ops);
        self.store.txn(vec![Compare::Missing(key)], ops).await?;
        Ok((account, token))
    }

    pub async fn list_accounts(&self) -> Result<Vec<Account>, CpError> {
        Ok(self.list_all("accounts/").await?.0)
    }

    /// An account by UUID or by name (a name two accounts share must be given as a UUID).
    pub async fn find_account(&self, reference: &str) -> Result<Account, CpError> {
        if let Ok(id) = reference.parse::<Uuid>() {
            return self.account(AccountId(id)).await;
        }
        let named: Vec<Account> = self
            .list_accounts()
            .await?
            .into_iter()
            .filter(|a| a.name == reference)
            .collect();
        match &named[..] {
            [one] => Ok(one.clone()),
            [] => Err(CpError::NotFound(format!("account {reference:?}"))),
            several => Err(CpError::Conflict(format!(
                "{} accounts are named {reference:?}; give one by its id: {}",
                several.len(),
                several.iter().map(|a| a.id.to_string()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// Delete an account with everything it owns: tokens (they stop working at once), tunnels
    /// (edges close their connections), routes, pools, plugins and zones. One transaction.
    pub async fn delete_account(&self, reference: &str) -> Result<Account, CpError> {
        let account = self.find_account(reference).await?;
        let a = account.id;
        let mut ops: Vec<Op> = [
            format!("tunnels/{a}/"),
            format!("tunnel-names/{a}/"),
            format!("pools/{a}/"),
            format!("plugins/{a}/"),
            format!("plugin-counters/{a}/"),
            format!("{}plugin-wasm/{a}/", crate::control::store::BULK_PREFIX),
            format!("zone-claims/{a}/"),
        ]
        .into_iter()
        .map(|prefix| Op::DeletePrefix { prefix })
        .collect();
        let (tunnels, _) = self.list_all::<Tunnel>(&format!("tunnels/{a}/")).await?;
        ops.extend(tunnels.iter().map(|t| Op::DeletePrefix {
            prefix: format!("connections/{}/", t.id),
        }));
        ops.extend(self.list_routes(a).await?.iter().map(|r| Op::Delete {
            key: format!("routes/{}", r.hostname),
        }));
        ops.extend(self.list_tokens(Some(a)).await?.iter().map(|t| Op::Delete {
            key: format!("tokens/{}", t.id),
        }));
        ops.extend(self.list_zones(Some(a)).await?.iter().map(|z| Op::Delete {
            key: format!("zones/{}", z.zone),
        }));
        ops.push(Op::Delete { key: references_key(a) });
        let key = format!("accounts/{a}");
        ops.push(Op::Delete { key: key.clone() });
        // Nothing the account wrote since it was read may survive it (a route would dangle).
        let guard = match self.store.get(&references_key(a)).await? {
            Some(kv) => Compare::ModRevision(references_key(a), kv.mod_revision),
            None => Compare::Missing(references_key(a)),
        };
        if !self.store.txn(vec![Compare::Exists(key), guard], ops).await?.succeeded {
            return Err(CpError::Conflict(format!(
                "account {:?} changed while it was being deleted; retry",
                account.name
            )));
        }
        Ok(account)
    }

    /// API tokens (not node tokens), of one account or of all.
    pub async fn list_tokens(&self, account: Option<AccountId>) -> Result<Vec<Token>, CpError> {
        let (tokens, _) = self.list_all::<Token>("tokens/").await?;
        Ok(tokens
            .into_iter()
            .filter(|t| !t.node && account.is_none_or(|a| t.account == a))
            .collect())
    }

    /// Another API token for an account, shown once.
    pub async fn create_token(&self, account: AccountId, name: &str) -> Result<(Token, String), CpError> {
        validate_name("name", name)?;
        let (token, ops) = self.new_token(account, name);
        let id = token_id(&token).unwrap_or_default().to_owned();
        let mut compares = vec![Compare::Exists(format!("accounts/{account}"))];
        compares.push(Compare::Missing(format!("tokens/{id}")));
        if !self.store.txn(compares, ops).await?.succeeded {
            return Err(CpError::NotFound("account".into()));
        }
        let doc = self.store.get(&format!("tokens/{id}")).await?;
        let doc = doc.ok_or_else(|| CpError::NotFound("token".into()))?;
        Ok((from_json(&doc)?, token))
    }

    /// Revoke a token by its id (the part after `burrow_`): it stops working at once.
    pub async fn revoke_token(&self, id: &str) -> Result<Token, CpError> {
        let key = format!("tokens/{id}");
        let kv = self.store.get(&key).await?;
        let kv = kv.ok_or_else(|| CpError::NotFound(format!("token {id:?}")))?;
        let doc: Token = from_json(&kv)?;
        self.store
            .txn(
                vec![Compare::ModRevision(key.clone(), kv.mod_revision)],
                vec![Op::Delete { key }],
            )
            .await?;
        Ok(doc)
    }

    pub async fn account(&self, id: AccountId) -> Result<Account, CpError> {
        let kv = self.store.get(&format!("accounts/{id}")).await?;
        kv.map(|kv| from_json(&kv))
            .transpose()?
            .ok_or_else(|| CpError::NotFound("account".into()))
    }

    /// A token for an edge-only node (`burrow-edge run --control-plane URL --node-token T`).
    pub async fn create_node_token(&self, name: &str) -> Result<String, CpError> {
        validate_name("name", name)?;
        let (token, ops) = self.new_token_doc(AccountId(Uuid::nil()), name, true);
        self.store.txn(vec![], ops).await?;
        Ok(token)
    }

    /// A new token for `account`: returns the token text and the ops that store its hash.
    fn new_token(&self, account: AccountId, name: &str) -> (String, Vec<Op>) {
        self.new_token_doc(account, name, false)
    }

    fn new_token_doc(&self, account: AccountId, name: &str, node: bool) -> (String, Vec<Op>) {
        let id = format!("{:016x}", rand::random::<u64>());
        let secret: [u8; 32] = rand::random();
        let token = format!(
            "burrow_{id}_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        );
        let doc = Token {
            id: id.clone(),
            account,
            name: name.to_owned(),
            sha256: encode_hex(&Sha256::digest(token.as_bytes())),
            created: now(),
            node,
        };
        (
            token,
            vec![Op::Put {
                key: format!("tokens/{id}"),
                value: to_json(&doc),
                lease: None,
            }],
        )
    }

    /// The account a bearer token belongs to, or `None` (unknown token, wrong secret, or a node
    /// token — the caller cannot tell which).
    pub async fn authenticate(&self, token: &str) -> Result<Option<AccountId>, CpError> {
        Ok(self.find_token(token).await?.filter(|t| !t.node).map(|t| t.account))
    }

    /// The node name a valid node token was created for, or `None`.
    pub async fn authenticate_node(&self, token: &str) -> Result<Option<String>, CpError> {
        Ok(self.find_token(token).await?.filter(|t| t.node).map(|t| t.name))
    }

    /// The stored token matching `token`, compared in constant time.
    async fn find_token(&self, token: &str) -> Result<Option<Token>, CpError> {
        let Some(id) = token_id(token) else {
            return Ok(None);
        };
        let Some(kv) = self.store.get(&format!("tokens/{id}")).await? else {
            return Ok(None);
        };
        let doc: Token = from_json(&kv)?;
        let presented = encode_hex(&Sha256::digest(token.as_bytes()));
        Ok(bool::from(presented.as_bytes().ct_eq(doc.sha256.as_bytes())).then_some(doc))
    }

    // --- tunnels ------------------------------------------------------------------------------

    /// Create a tunnel. The secret is returned once and stored only as a hash.
    pub async fn create_tunnel(&self, account: AccountId, name: &str) -> Result<(Tunnel, TunnelSecret), CpError> {
        validate_name("name", name)?;
        if name.parse::<TunnelId>().is_ok() {
            return Err(CpError::Invalid {
                field: "name",
                reason: "must not be a UUID (names and ids share the CLI)".into(),
            });
        }
        let secret = TunnelSecret::generate();
        let tunnel = Tunnel {
            id: TunnelId::new_random(),
            account,
            name: name.to_owned(),
            secret_sha256: encode_hex(&hash_secret(&secret)),
            created: now(),
        };
        let name_key = format!("tunnel-names/{account}/{name}");
        let ops = vec![
            Op::Put {
                key: name_key.clone(),
                value: to_json(&tunnel.id),
                lease: None,
            },
            Op::Put {
                key: format!("tunnels/{account}/{}", tunnel.id),
                value: to_json(&tunnel),
                lease: None,
            },
        ];
        let result = self.store.txn(vec![Compare::Missing(name_key)], ops).await?;
        if !result.succeeded {
            return Err(CpError::Conflict(format!("a tunnel named {name:?} already exists")));
        }
        Ok((tunnel, secret))
    }

    pub async fn list_tunnels(
        &self,
        account: AccountId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Tunnel>, CpError> {
        let prefix = format!("tunnels/{account}/");
        let after = after.map(|a| format!("{prefix}{a}"));
        let (page, _) = self.store.list(&prefix, after.as_deref(), limit).await?;
        page.iter().map(from_json).collect()
    }

    /// A tunnel of `account` by name or UUID. Other accounts' tunnels are "not found".
    pub async fn find_tunnel(&self, account: AccountId, reference: &str) -> Result<Tunnel, CpError> {
        let id = match reference.parse::<TunnelId>() {
            Ok(id) => id,
            Err(_) => {
                let kv = self.store.get(&format!("tunnel-names/{account}/{reference}")).await?;
                let kv = kv.ok_or_else(|| CpError::NotFound(format!("tunnel {reference:?}")))?;
                from_json(&kv)?
            }
        };
        let kv = self.store.get(&format!("tunnels/{account}/{id}")).await?;
        kv.map(|kv| from_json(&kv))
            .transpose()?
            .ok_or_else(|| CpError::NotFound(format!("tunnel {reference:?}")))
    }

    /// Delete a tunnel, its routes and its connection records. Refused while connections are
    /// live unless `force`.
    pub async fn delete_tunnel(&self, account: AccountId, reference: &str, force: bool) -> Result<Tunnel, CpError> {
        guarded_delete(&format!("tunnel {reference:?}"), move || {
            self.try_delete_tunnel(account, reference, force)
        })
        .await
    }

    /// One attempt of [`Self::delete_tunnel`]; `None` when a route or pool was written meanwhile.
    async fn try_delete_tunnel(
        &self,
        account: AccountId,
        reference: &str,
        force: bool,
    ) -> Result<Option<Tunnel>, CpError> {
        let tunnel = self.find_tunnel(account, reference).await?;
        let live = self.connections(tunnel.id).await?;
        if !live.is_empty() && !force {
            return Err(CpError::Conflict(format!(
                "tunnel {:?} has {} live connection(s); stop its connectors or delete with --force",
                tunnel.name,
                live.len()
            )));
        }
        let Referrers { routes, pools, guard } = self.referrers(account).await?;
        let member_of: Vec<&str> = pools
            .iter()
            .filter(|p| p.spec.origins.iter().any(|o| o.tunnel == tunnel.id))
            .map(|p| p.name.as_str())
            .collect();
        if let Some(pool) = member_of.first() {
            return Err(CpError::Conflict(format!(
                "tunnel {:?} is an origin of pool(s) {}; remove it first with `burrow pool origin remove {pool} {}`",
                tunnel.name,
                member_of.join(", "),
                tunnel.name
            )));
        }
        let mut ops = vec![
            Op::Delete {
                key: format!("tunnels/{account}/{}", tunnel.id),
            },
            Op::Delete {
                key: format!("tunnel-names/{account}/{}", tunnel.name),
            },
            Op::DeletePrefix {
                prefix: format!("connections/{}/", tunnel.id),
            },
        ];
        ops.extend(
            routes
                .iter()
                .filter(|r| r.tunnel == Some(tunnel.id))
                .map(|r| Op::Delete {
                    key: format!("routes/{}", r.hostname),
                }),
        );
        Ok(self.store.txn(vec![guard], ops).await?.succeeded.then_some(tunnel))
    }

    // --- routes -------------------------------------------------------------------------------

    /// Route `hostname` to a tunnel of `account`. A hostname owned by another account is a
    /// conflict; moving one between the caller's own tunnels needs `overwrite`.
    pub async fn route(
        &self,
        account: AccountId,
        hostname: &str,
        to: RouteTo<'_>,
        overwrite: bool,
        plugins: Option<Vec<PluginBinding>>,
    ) -> Result<RouteDoc, CpError> {
        if let Some(plugins) = &plugins {
            validate_plugins(plugins)?;
        }
        let hostname = hostname.to_ascii_lowercase();
        validate_hostname(&hostname).map_err(|reason| CpError::Invalid {
            field: "hostname",
            reason,
        })?;
        self.check_routable(account, &hostname).await?;
        let (tunnel, pool, target) = match to {
            RouteTo::Tunnel(reference) => {
                let id = self.find_tunnel(account, reference).await?.id;
                (Some(id), None, format!("tunnels/{account}/{id}"))
            }
            RouteTo::Pool(name) => {
                let name = self.pool(account, name).await?.0.name;
                let key = format!("pools/{account}/{name}");
                (None, Some(name), key)
            }
        };
        let key = format!("routes/{hostname}");
        let existing = self.store.get(&key).await?;
        let mut kept_plugins = Vec::new();
        let compare = match &existing {
            None => Compare::Missing(key.clone()),
            Some(kv) => {
                let current: RouteDoc = from_json(kv)?;
                kept_plugins = current.plugins;
                if current.account != account {
                    return Err(CpError::Conflict(format!("{hostname} is routed by another account")));
                }
                if (current.tunnel != tunnel || current.pool != pool) && !overwrite {
                    return Err(CpError::Conflict(format!(
                        "{hostname} already routes elsewhere in your account; pass --overwrite-dns to move it"
                    )));
                }
                Compare::ModRevision(key.clone(), kv.mod_revision)
            }
        };
        let doc = RouteDoc {
            hostname: hostname.clone(),
            account,
            tunnel,
            pool,
            created: now(),
            plugins: plugins.unwrap_or(kept_plugins),
        };
        let mut compares = vec![compare, Compare::Exists(target)];
        compares.extend(bindings_exist(account, &doc.plugins));
        let result = self
            .store
            .txn(
                compares,
                vec![
                    Op::Put {
                        key,
                        value: to_json(&doc),
                        lease: None,
                    },
                    references_written(account),
                ],
            )
            .await?;
        if !result.succeeded {
            return Err(CpError::Conflict(format!(
                "{hostname}, or the tunnel, pool or plugin version it names, changed concurrently; retry"
            )));
        }
        Ok(doc)
    }

    /// One route of `account`, and the revision it was last written at (for `If-Match`).
    pub async fn route_doc(&self, account: AccountId, hostname: &str) -> Result<(RouteDoc, Revision), CpError> {
        let kv = self
            .store
            .get(&format!("routes/{}", hostname.to_ascii_lowercase()))
            .await?;
        let not_found = || CpError::NotFound(format!("route {hostname}"));
        let kv = kv.ok_or_else(not_found)?;
        let doc: RouteDoc = from_json(&kv)?;
        if doc.account != account {
            return Err(not_found());
        }
        Ok((doc, kv.mod_revision))
    }

    /// Replace a route's plugin chain (`expect`: the route must be unchanged since that revision).
    pub async fn set_route_plugins(
        &self,
        account: AccountId,
        hostname: &str,
        plugins: Vec<PluginBinding>,
        expect: Option<Revision>,
    ) -> Result<RouteDoc, CpError> {
        validate_plugins(&plugins)?;
        let (mut doc, revision) = self.route_doc(account, hostname).await?;
        if expect.is_some_and(|e| e != revision) {
            return Err(CpError::Conflict(format!(
                "route {hostname} changed since revision {}; read it again",
                expect.unwrap_or_default()
            )));
        }
        let mut compares = vec![Compare::ModRevision(format!("routes/{}", doc.hostname), revision)];
        compares.extend(bindings_exist(account, &plugins));
        doc.plugins = plugins;
        let put = Op::Put {
            key: format!("routes/{}", doc.hostname),
            value: to_json(&doc),
            lease: None,
        };
        if !self
            .store
            .txn(compares, vec![put, references_written(account)])
            .await?
            .succeeded
        {
            return Err(CpError::Conflict(format!(
                "route {hostname}, or a plugin version it binds, changed concurrently; retry"
            )));
        }
        Ok(doc)
    }

    pub async fn delete_route(&self, account: AccountId, hostname: &str) -> Result<(), CpError> {
        let key = format!("routes/{}", hostname.to_ascii_lowercase());
        let kv = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| CpError::NotFound(format!("route {hostname}")))?;
        let doc: RouteDoc = from_json(&kv)?;
        if doc.account != account {
            return Err(CpError::NotFound(format!("route {hostname}")));
        }
        self.store
            .txn(
                vec![Compare::ModRevision(key.clone(), kv.mod_revision)],
                vec![Op::Delete { key }],
            )
            .await?;
        Ok(())
    }

    /// The account's routes and pools, read for a delete's "nothing refers to it" check.
    pub(crate) async fn referrers(&self, account: AccountId) -> Result<Referrers, CpError> {
        // Read before the lists: a reference written after this read fails the guard.
        let key = references_key(account);
        let guard = match self.store.get(&key).await? {
            Some(kv) => Compare::ModRevision(key, kv.mod_revision),
            None => Compare::Missing(key),
        };
        let routes = self.list_routes(account).await?;
        let pools = self.list_pools(account).await?;
        Ok(Referrers { routes, pools, guard })
    }

    pub async fn list_routes(&self, account: AccountId) -> Result<Vec<RouteDoc>, CpError> {
        let (routes, _) = self.list_all::<RouteDoc>("routes/").await?;
        Ok(routes.into_iter().filter(|r| r.account == account).collect())
    }

    // --- pools --------------------------------------------------------------------------------

    /// A pool and the revision it was last written at (for `If-Match`).
    pub async fn pool(&self, account: AccountId, name: &str) -> Result<(PoolDoc, Revision), CpError> {
        let kv = self.store.get(&format!("pools/{account}/{name}")).await?;
        let kv = kv.ok_or_else(|| CpError::NotFound(format!("pool {name:?}")))?;
        Ok((from_json(&kv)?, kv.mod_revision))
    }

    pub async fn list_pools(&self, account: AccountId) -> Result<Vec<PoolDoc>, CpError> {
        Ok(self.list_all(&format!("pools/{account}/")).await?.0)
    }

    /// Create or replace a pool. Origins name tunnels of `account` (name or UUID). `expect`:
    /// `Some(0)` = must not exist yet, `Some(rev)` = must be unchanged since `rev`.
    pub async fn put_pool(
        &self,
        account: AccountId,
        name: &str,
        spec: PoolSpec<String>,
        expect: Option<Revision>,
    ) -> Result<PoolDoc, CpError> {
        validate_name("name", name)?;
        let invalid = |reason: String| CpError::Invalid { field: "pool", reason };
        if spec.origins.len() > crate::pools::pool::MAX_ORIGINS_PER_POOL {
            return Err(invalid(format!(
                "a pool has at most {} origins",
                crate::pools::pool::MAX_ORIGINS_PER_POOL
            )));
        }
        let mut ids = Vec::with_capacity(spec.origins.len());
        for origin in &spec.origins {
            ids.push(self.find_tunnel(account, &origin.tunnel).await?.id);
        }
        let mut ids = ids.into_iter();
        let spec = spec
            .resolve(|_| ids.next().ok_or(()))
            .map_err(|()| invalid("origins changed while resolving".into()))?;
        spec.validate().map_err(invalid)?;
        // Follow the fallback chain: it must exist, end, and stay within the hop limit. Every
        // pool of it must be unchanged when this one is written, so two concurrent writes
        // cannot close a loop.
        let mut next = spec.fallback.clone();
        let mut chain = Vec::new();
        let mut hops = 0;
        while let Some(fallback) = next {
            hops += 1;
            if fallback == name {
                return Err(invalid(format!("fallback {fallback:?} leads back to this pool")));
            }
            if hops > crate::pools::pool::MAX_FALLBACK_DEPTH {
                return Err(invalid(format!(
                    "the fallback chain is longer than {} pools",
                    crate::pools::pool::MAX_FALLBACK_DEPTH
                )));
            }
            let (pool, revision) = self.pool(account, &fallback).await?;
            chain.push(Compare::ModRevision(format!("pools/{account}/{fallback}"), revision));
            next = pool.spec.fallback;
        }
        let key = format!("pools/{account}/{name}");
        let existing = self.store.get(&key).await?;
        let created = match &existing {
            Some(kv) => from_json::<PoolDoc>(kv)?.created,
            None => now(),
        };
        let mut compares = vec![match (expect, &existing) {
            (Some(0), _) => Compare::Missing(key.clone()),
            (Some(rev), _) => Compare::ModRevision(key.clone(), rev),
            (None, Some(kv)) => Compare::ModRevision(key.clone(), kv.mod_revision),
            (None, None) => Compare::Missing(key.clone()),
        }];
        // What the pool names must still exist when it is written.
        let origins = spec.origins.iter().map(|o| format!("tunnels/{account}/{}", o.tunnel));
        compares.extend(origins.map(Compare::Exists));
        compares.extend(chain);
        compares.extend(bindings_exist(account, spec.balancer.iter()));
        let doc = PoolDoc {
            account,
            name: name.to_owned(),
            created,
            spec,
        };
        let put = Op::Put {
            key,
            value: to_json(&doc),
            lease: None,
        };
        if !self
            .store
            .txn(compares, vec![put, references_written(account)])
            .await?
            .succeeded
        {
            return Err(CpError::Conflict(match expect {
                Some(0) => format!("a pool named {name:?} already exists, or what it names was just deleted"),
                _ => format!("pool {name:?}, or what it names, changed concurrently; read it again and retry"),
            }));
        }
        Ok(doc)
    }

    /// Delete a pool that no route and no other pool (as fallback) uses.
    pub async fn delete_pool(&self, account: AccountId, name: &str) -> Result<(), CpError> {
        guarded_delete(&format!("pool {name:?}"), move || self.try_delete_pool(account, name)).await
    }

    /// One attempt of [`Self::delete_pool`]; `None` when a route or pool was written meanwhile.
    async fn try_delete_pool(&self, account: AccountId, name: &str) -> Result<Option<()>, CpError> {
        let (_, revision) = self.pool(account, name).await?;
        let Referrers { routes, pools, guard } = self.referrers(account).await?;
        if let Some(r) = routes.iter().find(|r| r.pool.as_deref() == Some(name)) {
            return Err(CpError::Conflict(format!(
                "{} routes to pool {name:?}; route it elsewhere or delete the route first",
                r.hostname
            )));
        }
        if let Some(p) = pools.iter().find(|p| p.spec.fallback.as_deref() == Some(name)) {
            return Err(CpError::Conflict(format!(
                "pool {:?} falls back to {name:?}; change its fallback first",
                p.name
            )));
        }
        let key = format!("pools/{account}/{name}");
        let guards = vec![guard, Compare::ModRevision(key.clone(), revision)];
        Ok(self
            .store
            .txn(guards, vec![Op::Delete { key }])
            .await?
            .succeeded
            .then_some(()))
    }

    // --- pool health as each edge sees it --------------------------------------------------

    /// Store an edge's health view (under its lease, if it has one: it vanishes with the edge).
    pub async fn put_node_health(&self, report: &HealthReport, lease: Option<LeaseId>) -> Result<(), CpError> {
        validate_name("node", &report.node)?;
        let origins: usize = report.pools.iter().map(|p| p.origins.len()).sum();
        if origins > crate::control::health_monitor::MAX_REPORTED_ORIGINS {
            return Err(CpError::Invalid {
                field: "pools",
                reason: format!(
                    "at most {} origins per report",
                    crate::control::health_monitor::MAX_REPORTED_ORIGINS
                ),
            });
        }
        let put = Op::Put {
            key: format!("health/{}", report.node),
            value: to_json(report),
            lease,
        };
        self.store.txn(vec![], vec![put]).await?;
        Ok(())
    }

    /// Every edge's last health view.
    pub async fn node_health(&self) -> Result<Vec<HealthReport>, CpError> {
        Ok(self.list_all("health/").await?.0)
    }

    // --- connections --------------------------------------------------------------------------

    pub async fn connections(&self, tunnel: TunnelId) -> Result<Vec<Connection>, CpError> {
        Ok(self.list_all(&format!("connections/{tunnel}/")).await?.0)
    }

    pub async fn record_connection(&self, lease: LeaseId, conn: &Connection) -> Result<(), CpError> {
        let key = format!("connections/{}/{}", conn.tunnel, conn.connection_id);
        self.store
            .txn(
                vec![],
                vec![Op::Put {
                    key,
                    value: to_json(conn),
                    lease: Some(lease),
                }],
            )
            .await?;
        Ok(())
    }

    pub async fn remove_connection(&self, tunnel: TunnelId, connection_id: Uuid) -> Result<(), CpError> {
        let key = format!("connections/{tunnel}/{connection_id}");
        self.store.txn(vec![], vec![Op::Delete { key }]).await?;
        Ok(())
    }

    /// Drop the connection records of a tunnel whose connections are gone (`burrow tunnel
    /// cleanup`); `live` says which this edge still holds (other edges write theirs back if
    /// they are removed while live). Returns how many were removed.
    pub async fn cleanup_connections(
        &self,
        account: AccountId,
        reference: &str,
        live: impl Fn(&Connection) -> bool,
    ) -> Result<usize, CpError> {
        let tunnel = self.find_tunnel(account, reference).await?;
        let stale: Vec<Op> = self
            .connections(tunnel.id)
            .await?
            .iter()
            .filter(|c| !live(c))
            .map(|c| Op::Delete {
                key: format!("connections/{}/{}", c.tunnel, c.connection_id),
            })
            .collect();
        let count = stale.len();
        if count > 0 {
            self.store.txn(vec![], stale).await?;
        }
        Ok(count)
    }

    // --- what edges serve ---------------------------------------------------------------------

    /// Read every tunnel, route and pool: the start of a [`LiveConfig`].
    pub async fn read_config(&self) -> Result<LiveConfig, CpError> {
        let (tunnels, rev_t) = self.list_keyed("tunnels/").await?;
        let (routes, rev_r) = self.list_keyed("routes/").await?;
        let (pools, rev_p) = self.list_keyed("pools/").await?;
        // Separate reads: a write that landed between them is newer than the oldest of them,
        // so the watch from there delivers it.
        Ok(LiveConfig {
            revision: rev_t.min(rev_r).min(rev_p),
            tunnels,
            routes,
            pools,
        })
    }

    /// What edges serve, as of `config`, with the metadata of the plugin versions it binds.
    pub async fn snapshot(&self, config: &LiveConfig) -> Result<Snapshot, CpError> {
        let routes: Vec<RouteDoc> = config.routes.values().cloned().collect();
        let pools: Vec<PoolDoc> = config.pools.values().cloned().collect();
        let plugins = self.bound_plugin_versions(&routes, &pools).await?;
        Ok(Snapshot {
            revision: config.revision,
            tunnels: config.tunnels.values().cloned().collect(),
            routes,
            pools,
            plugins,
        })
    }
}

/// The tunnels, routes and pools of the store, kept current from watch events: a change costs an
/// edge the keys that changed, not a re-read of the whole config (35 ms at 10k tunnels and 10k
/// routes).
#[derive(Debug, Default)]
pub struct LiveConfig {
    revision: Revision,
    tunnels: BTreeMap<String, Tunnel>,
    routes: BTreeMap<String, RouteDoc>,
    pools: BTreeMap<String, PoolDoc>,
}

impl LiveConfig {
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Apply one batch of watch events; says whether it changed what edges serve (plugin
    /// metadata included). A value that does not decode is an error: re-read the whole config.
    pub fn apply(&mut self, events: &[Event]) -> Result<bool, CpError> {
        let mut changed = false;
        for event in events {
            let (key, revision) = match event {
                Event::Put(kv) => (&kv.key, kv.mod_revision),
                Event::Delete { key, revision } => (key, *revision),
            };
            self.revision = self.revision.max(revision);
            changed |= affects_routing(key);
            match event {
                Event::Put(kv) => match key.split_once('/').map(|(kind, _)| kind) {
                    Some("tunnels") => {
                        self.tunnels.insert(key.clone(), from_json(kv)?);
                    }
                    Some("routes") => {
                        self.routes.insert(key.clone(), from_json(kv)?);
                    }
                    Some("pools") => {
                        self.pools.insert(key.clone(), from_json(kv)?);
                    }
                    _ => {}
                },
                Event::Delete { key, .. } => {
                    self.tunnels.remove(key);
                    self.routes.remove(key);
                    self.pools.remove(key);
                }
            }
        }
        Ok(changed)
    }
}

/// Whether a changed key affects what edges serve.
pub fn affects_routing(key: &str) -> bool {
    ["tunnels/", "routes/", "pools/", "plugins/"]
        .iter()
        .any(|prefix| key.starts_with(prefix))
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
        Op::Put {
            key: key.into(),
            value: b"{}".to_vec(),
            lease: None,
        }
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
