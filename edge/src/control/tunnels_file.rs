//! The file provider of tunnel records and routes, for operators who keep config in git.
//!
//! ```yaml
//! tunnels:
//!   - id: 6ff42ae2-765d-4adf-8112-31c55c1551ef
//!     name: web
//!     account: 0b6b7f9e-3a53-4a5e-9d47-1d0c2b0d6a11
//!     secret-sha256: 5d41402abc4b2a76b9719d911017c592...   # never the secret itself
//! routes:
//!   - hostname: app.example.com
//!     tunnel: web            # name or id
//!   - hostname: lb.example.com
//!     pool: web-pool
//! pools:
//!   - name: web-pool
//!     spec:                  # the same document as the API's PUT /v1/pools/NAME
//!       origins: [{tunnel: web, weight: 2}, {tunnel: web-eu}]
//!       steering: least-outstanding
//! ```

use std::path::Path;

use anyhow::{Context, Result};
use burrow_protocol::{AccountId, TunnelId};
use serde::{Deserialize, Serialize};

use crate::plugins::binding::{Binding, PluginBinding};
use crate::pools::pool::PoolSpec;
use crate::route_table::{PoolDef, Route, RouteTable, Target, TunnelRecord};

/// Bigger files are refused: this is config, not data.
const MAX_FILE_SIZE: u64 = 16 * 1024 * 1024;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelsFile {
    #[serde(default)]
    pub tunnels: Vec<TunnelEntry>,
    #[serde(default)]
    pub routes: Vec<RouteEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<PoolEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolEntry {
    pub name: String,
    pub spec: PoolSpec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TunnelEntry {
    pub id: TunnelId,
    pub name: String,
    pub account: AccountId,
    /// Hex SHA-256 of the tunnel secret.
    pub secret_sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEntry {
    pub hostname: String,
    /// Tunnel name or UUID (or set `pool`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<String>,
    /// Pool name (or set `tunnel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Plugins run for this hostname, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginBinding>,
}

impl TunnelsFile {
    pub fn load(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).with_context(|| format!("reading tunnels file {}", path.display()))?;
        anyhow::ensure!(
            meta.len() <= MAX_FILE_SIZE,
            "tunnels file {} is {} bytes; the limit is {MAX_FILE_SIZE}",
            path.display(),
            meta.len()
        );
        let text = std::fs::read_to_string(path).with_context(|| format!("reading tunnels file {}", path.display()))?;
        serde_yaml_ng::from_str(&text).with_context(|| format!("parsing tunnels file {}", path.display()))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_yaml_ng::to_string(self)?;
        burrow_shared::files::write_private(path, text.as_bytes())
    }

    /// Build the routing snapshot, reporting every problem with its position.
    pub fn to_table(&self) -> Result<RouteTable> {
        let mut problems = Vec::new();
        let mut records = Vec::with_capacity(self.tunnels.len());
        for (i, t) in self.tunnels.iter().enumerate() {
            match decode_hex32(&t.secret_sha256) {
                Some(hash) => records.push(TunnelRecord {
                    id: t.id,
                    account: t.account,
                    name: t.name.clone(),
                    secret_sha256: hash,
                }),
                None => problems.push(format!("tunnels[{i}].secret-sha256: must be 64 hex characters")),
            }
        }
        let find_tunnel = |reference: &str| {
            let by_id = reference.parse::<TunnelId>().ok();
            self.tunnels.iter().find(|t| Some(t.id) == by_id || t.name == reference)
        };
        let mut pools = Vec::with_capacity(self.pools.len());
        for (i, p) in self.pools.iter().enumerate() {
            let resolved = p.spec.clone().resolve(|reference| {
                find_tunnel(reference).ok_or_else(|| format!("pools[{i}].spec.origins: no tunnel named {reference:?}"))
            });
            let spec = match resolved {
                Ok(spec) => spec,
                Err(problem) => {
                    problems.push(problem);
                    continue;
                }
            };
            // The file has no accounts of its own: a pool belongs to its tunnels' account.
            let Some(first) = spec.origins.first() else {
                problems.push(format!(
                    "pools[{i}]: a pool in a tunnels file needs at least one origin"
                ));
                continue;
            };
            let account = first.tunnel.account;
            let spec = spec.resolve(|t| Ok::<_, ()>(t.id)).unwrap_or_default();
            pools.push(PoolDef {
                account,
                name: p.name.clone(),
                balancer: spec.balancer.clone().map(Binding::new),
                spec,
            });
        }
        let mut routes = Vec::with_capacity(self.routes.len());
        for (i, r) in self.routes.iter().enumerate() {
            let target = match (&r.tunnel, &r.pool) {
                (Some(tunnel), None) => match find_tunnel(tunnel) {
                    Some(t) => Target::Tunnel(t.id),
                    None => {
                        problems.push(format!("routes[{i}].tunnel: no tunnel named {tunnel:?}"));
                        continue;
                    }
                },
                (None, Some(pool)) => match pools.iter().position(|p| &p.name == pool) {
                    Some(index) => Target::Pool(index),
                    None => {
                        problems.push(format!("routes[{i}].pool: no pool named {pool:?}"));
                        continue;
                    }
                },
                _ => {
                    problems.push(format!("routes[{i}]: set exactly one of tunnel and pool"));
                    continue;
                }
            };
            routes.push(Route {
                hostname: r.hostname.clone(),
                target,
                plugins: r.plugins.iter().cloned().map(Binding::new).collect(),
            });
        }
        match RouteTable::build(records, routes, pools) {
            Ok(table) if problems.is_empty() => Ok(table),
            Ok(_) => anyhow::bail!("{}", problems.join("\n")),
            Err(errors) => {
                problems.extend(errors.iter().map(|e| e.to_string()));
                anyhow::bail!("{}", problems.join("\n"))
            }
        }
    }
}

pub fn decode_hex32(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

pub fn encode_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn file_builds_a_table_and_reports_bad_entries() {
        let good = r#"
tunnels:
  - id: 6ff42ae2-765d-4adf-8112-31c55c1551ef
    name: web
    account: 0b6b7f9e-3a53-4a5e-9d47-1d0c2b0d6a11
    secret-sha256: "0000000000000000000000000000000000000000000000000000000000000001"
routes:
  - hostname: app.example.com
    tunnel: web
  - hostname: "*.example.com"
    tunnel: 6ff42ae2-765d-4adf-8112-31c55c1551ef
"#;
        let file: TunnelsFile = serde_yaml_ng::from_str(good).unwrap();
        let table = file.to_table().unwrap();
        assert_eq!(table.route_count(), 2);
        assert!(table.lookup("x.example.com").is_some());

        let bad = good
            .replace("0000000000000000000000000000000000000000000000000000000000000001", "zz")
            .replace("tunnel: web", "tunnel: nope");
        let file: TunnelsFile = serde_yaml_ng::from_str(&bad).unwrap();
        let err = file.to_table().unwrap_err().to_string();
        assert!(err.contains("tunnels[0].secret-sha256"), "{err}");
        assert!(err.contains("routes[0].tunnel: no tunnel named \"nope\""), "{err}");
    }
}
