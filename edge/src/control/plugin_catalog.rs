//! Plugins uploaded by accounts (`burrow plugin upload`), kept in the [`Store`] next to tunnels
//! and routes. Each upload of a name is a new immutable *version*, identified by the sha256 of its
//! component. A binding pins a version when it is made, so uploading never changes what a route
//! runs until the route is bound to the new version.
//!
//! Keys:
//!
//! ```text
//! plugins/<account>/<name>/<version>          PluginVersion (version zero-padded: key order)
//! plugin-counters/<account>/<name>            the last version number given (kept after deletes)
//! bulk/plugin-wasm/<account>/<name>/<version>/<i>  the component, in chunks (store values are
//!                                             small; `bulk/` keeps them out of watches)
//! ```
//!
//! [`Store`]: crate::control::store::Store

use burrow_protocol::AccountId;

use crate::control::resources::{
    ControlPlane, CpError, PoolDoc, Referrers, RouteDoc, from_json, guarded_delete, now, to_json, validate_name,
};
use crate::control::store::{BULK_PREFIX, Compare, Op};
use crate::plugins::binding::PluginBinding;
use crate::plugins::version::{PluginKind, PluginVersion, sha256_hex};

/// Largest component an account may upload.
pub const MAX_PLUGIN_SIZE: usize = 8 * 1024 * 1024;
/// Plugin names per account, and versions kept per name.
pub const MAX_PLUGINS: usize = 64;
pub const MAX_VERSIONS: usize = 20;
/// Store values stay well under the store's own limit.
const CHUNK: usize = 512 * 1024;

/// The key of a version's document.
fn key_of(v: &PluginVersion) -> String {
    version_key(v.account, &v.name, v.version)
}

/// The prefix of a version's component chunks.
fn wasm_prefix(v: &PluginVersion) -> String {
    format!("{BULK_PREFIX}plugin-wasm/{}/{}/{:010}/", v.account, v.name, v.version)
}

fn version_key(account: AccountId, name: &str, version: u32) -> String {
    format!("plugins/{account}/{name}/{version:010}")
}

/// Compares that hold while every pinned plugin version that `bindings` name exists: a binding
/// written with them cannot outlive a delete of its version.
pub(crate) fn bindings_exist<'b>(
    account: AccountId,
    bindings: impl IntoIterator<Item = &'b PluginBinding>,
) -> impl Iterator<Item = Compare> {
    bindings
        .into_iter()
        .filter_map(move |b| Some(Compare::Exists(version_key(account, &b.plugin, b.version?))))
}

/// A route or pool bound to one of `versions`, described with the command that unbinds it.
fn first_binding<'v>(
    routes: &[RouteDoc],
    pools: &[PoolDoc],
    versions: &'v [PluginVersion],
) -> Option<(&'v PluginVersion, String)> {
    for RouteDoc { hostname, plugins, .. } in routes {
        for binding in plugins {
            if let Some(v) = versions.iter().find(|v| v.is_bound_by(binding)) {
                let how = format!("route {hostname} (`burrow route plugin remove {hostname} {}`)", v.name);
                return Some((v, how));
            }
        }
    }
    pools.iter().find_map(|pool| {
        let binding = pool.spec.balancer.as_ref()?;
        let v = versions.iter().find(|v| v.is_bound_by(binding))?;
        Some((v, format!("pool {} as its balancer", pool.name)))
    })
}

impl ControlPlane {
    /// Before an upload is compiled: `Some(version)` when these bytes are already the latest
    /// version of `name`; an error when a limit refuses a new version.
    pub async fn check_upload(
        &self,
        account: AccountId,
        name: &str,
        sha256: &str,
    ) -> Result<Option<PluginVersion>, CpError> {
        validate_name("name", name)?;
        let versions = self.plugin_versions(account, Some(name)).await?;
        let Some(latest) = versions.last() else {
            let mut names: Vec<String> = self
                .plugin_versions(account, None)
                .await?
                .into_iter()
                .map(|v| v.name)
                .collect();
            names.dedup();
            if names.len() >= MAX_PLUGINS {
                return Err(CpError::Conflict(format!(
                    "the account has {MAX_PLUGINS} plugins, the most allowed; delete one first (`burrow plugin delete NAME`)"
                )));
            }
            return Ok(None);
        };
        if latest.sha256 == sha256 {
            return Ok(Some(latest.clone()));
        }
        if versions.len() >= MAX_VERSIONS {
            let routes = self.list_routes(account).await?;
            let pools = self.list_pools(account).await?;
            let unbound = versions
                .iter()
                .find(|v| first_binding(&routes, &pools, std::slice::from_ref(v)).is_none());
            let next_step = match unbound {
                Some(v) => format!("delete one first, e.g. `burrow plugin delete {name}@{}`", v.version),
                None => "every one is bound; unbind and delete one first (`burrow plugin list`)".into(),
            };
            return Err(CpError::Conflict(format!(
                "plugin {name:?} has {MAX_VERSIONS} versions, the most kept; {next_step}"
            )));
        }
        Ok(None)
    }

    /// Store `wasm` (already checked to be a component of `kind`) as the next version of `name`.
    /// Uploading the same bytes as the latest version returns that version (`false`: nothing new).
    /// Version numbers only go up, deletes included: a number never names other code.
    pub async fn put_plugin(
        &self,
        account: AccountId,
        name: &str,
        wasm: &[u8],
        kind: PluginKind,
    ) -> Result<(PluginVersion, bool), CpError> {
        if wasm.len() > MAX_PLUGIN_SIZE {
            return Err(CpError::Invalid {
                field: "wasm",
                reason: format!("a plugin is at most {MAX_PLUGIN_SIZE} bytes"),
            });
        }
        let sha256 = sha256_hex(wasm);
        if let Some(latest) = self.check_upload(account, name, &sha256).await? {
            return Ok((latest, false));
        }
        let counter_key = format!("plugin-counters/{account}/{name}");
        let (last, compare) = match self.store().get(&counter_key).await? {
            Some(kv) => (
                from_json::<u32>(&kv)?,
                Compare::ModRevision(counter_key.clone(), kv.mod_revision),
            ),
            None => {
                let last = self
                    .plugin_versions(account, Some(name))
                    .await?
                    .last()
                    .map_or(0, |v| v.version);
                (last, Compare::Missing(counter_key.clone()))
            }
        };
        let doc = PluginVersion {
            account,
            name: name.to_owned(),
            version: last + 1,
            sha256,
            size: wasm.len(),
            kind,
            created: now(),
        };
        let prefix = wasm_prefix(&doc);
        let mut ops: Vec<Op> = wasm
            .chunks(CHUNK)
            .enumerate()
            .map(|(i, chunk)| Op::put(format!("{prefix}{i:03}"), chunk.to_vec()))
            .collect();
        ops.push(Op::put(key_of(&doc), to_json(&doc)));
        ops.push(Op::put(counter_key, to_json(&doc.version)));
        if !self.store().txn(vec![compare], ops).await?.succeeded {
            return Err(CpError::Conflict(format!(
                "another upload of plugin {name:?} happened at the same time; retry"
            )));
        }
        Ok((doc, true))
    }

    /// The account's plugin versions (of one name, or all), by name then version.
    pub async fn plugin_versions(&self, account: AccountId, name: Option<&str>) -> Result<Vec<PluginVersion>, CpError> {
        let prefix = match name {
            Some(name) => format!("plugins/{account}/{name}/"),
            None => format!("plugins/{account}/"),
        };
        Ok(self.list_all(&prefix).await?.0)
    }

    /// One version of the account's plugin (`None`: the latest).
    pub async fn plugin_version(
        &self,
        account: AccountId,
        name: &str,
        version: Option<u32>,
    ) -> Result<PluginVersion, CpError> {
        let versions = self.plugin_versions(account, Some(name)).await?;
        let found = match version {
            Some(v) => versions.into_iter().find(|p| p.version == v),
            None => versions.into_iter().last(),
        };
        found.ok_or_else(|| match version {
            Some(v) => CpError::NotFound(format!("version {v} of plugin {name:?}")),
            None => CpError::NotFound(format!("plugin {name:?}")),
        })
    }

    /// The component of one version, checked against its sha256.
    pub async fn plugin_wasm(&self, version: &PluginVersion) -> Result<Vec<u8>, CpError> {
        let corrupt = |reason: &str| CpError::Corrupt {
            key: wasm_prefix(version),
            reason: reason.to_owned(),
        };
        let (chunks, _) = self
            .store()
            .list(&wasm_prefix(version), None, MAX_PLUGIN_SIZE / CHUNK + 1)
            .await?;
        let mut wasm = Vec::with_capacity(version.size);
        for chunk in &chunks {
            wasm.extend_from_slice(&chunk.value);
        }
        if wasm.len() != version.size || sha256_hex(&wasm) != version.sha256 {
            return Err(corrupt("the stored component does not match its sha256"));
        }
        Ok(wasm)
    }

    /// Delete one version of a plugin, or every version. Refused while a route or pool of the
    /// account is bound to one of them.
    pub async fn delete_plugin(
        &self,
        account: AccountId,
        name: &str,
        version: Option<u32>,
    ) -> Result<Vec<PluginVersion>, CpError> {
        let what = version.map_or_else(|| format!("plugin {name:?}"), |v| format!("{name}@{v}"));
        guarded_delete(&what, move || self.try_delete_plugin(account, name, version)).await
    }

    /// One attempt of [`Self::delete_plugin`]; `None` when a route or pool was written meanwhile.
    async fn try_delete_plugin(
        &self,
        account: AccountId,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<Vec<PluginVersion>>, CpError> {
        let doomed: Vec<PluginVersion> = self
            .plugin_versions(account, Some(name))
            .await?
            .into_iter()
            .filter(|v| version.is_none_or(|n| v.version == n))
            .collect();
        if doomed.is_empty() {
            let what = version.map_or_else(
                || format!("plugin {name:?}"),
                |v| format!("version {v} of plugin {name:?}"),
            );
            return Err(CpError::NotFound(what));
        }
        let Referrers { routes, pools, guard } = self.referrers(account).await?;
        if let Some((version, user)) = first_binding(&routes, &pools, &doomed) {
            return Err(CpError::Conflict(format!(
                "plugin {name}@{} is bound to {user}; unbind it first",
                version.version
            )));
        }
        let mut ops = Vec::with_capacity(doomed.len() * 2);
        for v in &doomed {
            ops.push(Op::Delete { key: key_of(v) });
            ops.push(Op::DeletePrefix { prefix: wasm_prefix(v) });
        }
        // A binding written since the routes and pools were read fails the guard.
        Ok(self.store().txn(vec![guard], ops).await?.succeeded.then_some(doomed))
    }

    /// Every plugin version some route or pool is bound to (what edges must load).
    pub(crate) async fn bound_plugin_versions(
        &self,
        routes: &[RouteDoc],
        pools: &[PoolDoc],
    ) -> Result<Vec<PluginVersion>, CpError> {
        let mut wanted: Vec<(AccountId, &str, u32)> = Vec::new();
        let bindings = routes
            .iter()
            .flat_map(|r| r.plugins.iter().map(move |b| (r.account, b)))
            .chain(
                pools
                    .iter()
                    .filter_map(|p| p.spec.balancer.as_ref().map(|b| (p.account, b))),
            );
        for (account, binding) in bindings {
            if let Some(version) = binding.version {
                wanted.push((account, &binding.plugin, version));
            }
        }
        wanted.sort_unstable();
        wanted.dedup();
        let mut out = Vec::with_capacity(wanted.len());
        for (account, name, version) in wanted {
            match self.store().get(&version_key(account, name, version)).await? {
                Some(kv) => out.push(from_json(&kv)?),
                // Deleted in a race with a bind: that route's requests fail with a clear error.
                None => tracing::warn!(%account, plugin = name, version, "a binding names a deleted plugin version"),
            }
        }
        Ok(out)
    }
}
