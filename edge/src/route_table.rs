//! The routing snapshot: hostname → tunnel, plus the tunnel records used to check credentials.
//!
//! A table is immutable once built. A change builds a whole new table off the hot path and
//! swaps it in with one `ArcSwap::store`; requests in flight keep the table they loaded. Routes
//! and tunnel records live in the *same* snapshot so they can never disagree.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::sync::Arc;

use burrow_protocol::{AccountId, TunnelId, TunnelSecret};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use burrow_shared::host_port;

use crate::hostname::validate_hostname;
use crate::plugins::binding::Binding;
use crate::pools::pool::{Pool, PoolSpec};

/// A tunnel as the edge knows it: enough to route to it and to check a connector's secret.
#[derive(Clone)]
pub struct TunnelRecord {
    pub id: TunnelId,
    pub account: AccountId,
    pub name: String,
    /// SHA-256 of the 32-byte secret. The secret is random, so a fast hash is enough.
    pub secret_sha256: [u8; 32],
}

impl fmt::Debug for TunnelRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelRecord")
            .field("id", &self.id)
            .field("account", &self.account)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TunnelRecord {
    /// Constant-time check of a presented secret (and its account) against this record.
    pub fn verify(&self, account: AccountId, secret: &TunnelSecret) -> bool {
        let presented: [u8; 32] = Sha256::digest(secret.0).into();
        let secret_ok = presented.ct_eq(&self.secret_sha256);
        let account_ok = account.0.as_bytes().ct_eq(self.account.0.as_bytes());
        (secret_ok & account_ok).into()
    }
}

/// SHA-256 of a tunnel secret, as stored in records.
pub fn hash_secret(secret: &TunnelSecret) -> [u8; 32] {
    Sha256::digest(secret.0).into()
}

/// Where a hostname goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The pattern as configured: `app.example.com` or `*.example.com`.
    pub hostname: String,
    pub target: Target,
    /// Plugins run for this hostname, in order (shared by every request on the route).
    pub plugins: Arc<[Binding]>,
}

/// What a route sends its requests to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Tunnel(TunnelId),
    /// Index into the pools given to [`RouteTable::build`] (and then into [`RouteTable::pools`]).
    Pool(usize),
}

/// A pool handed to [`RouteTable::build`]: its origins must be tunnels of the same account.
#[derive(Debug, Clone)]
pub struct PoolDef {
    pub account: AccountId,
    pub name: String,
    pub spec: PoolSpec<TunnelId>,
    /// `spec.balancer`, resolved to the plugin it runs.
    pub balancer: Option<Binding>,
}

/// One immutable snapshot of routes and tunnel records.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, Route>,
    /// Keyed by the suffix after `*`, e.g. `.example.com`.
    wildcard: HashMap<String, Route>,
    tunnels: HashMap<TunnelId, TunnelRecord>,
    pools: Vec<Pool>,
    pool_index: HashMap<(AccountId, String), usize>,
}

/// A problem that stops a table from being built; the old table keeps serving.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("route {hostname:?}: {reason}")]
    BadHostname { hostname: String, reason: String },
    #[error("route {hostname:?} is defined twice")]
    DuplicateRoute { hostname: String },
    #[error("route {hostname:?} points to tunnel {tunnel}, which does not exist")]
    UnknownTunnel { hostname: String, tunnel: TunnelId },
    #[error("tunnel {0} is defined twice")]
    DuplicateTunnel(TunnelId),
    #[error("pool {pool:?}: {reason}")]
    BadPool { pool: String, reason: String },
    #[error("route {hostname:?} points to a pool that does not exist")]
    UnknownPool { hostname: String },
}

/// What benchmarks build: `n` routes over `n / 10` tunnels of one account, every tenth route a
/// wildcard (the way sites mix apex and subdomain routes): `app<i>.example.com`,
/// `*.site<i>.example.com`.
#[doc(hidden)]
pub fn synthetic(n: usize) -> (Vec<TunnelRecord>, Vec<Route>) {
    let account = AccountId(uuid::Uuid::from_u128(1));
    let tunnels: Vec<TunnelRecord> = (0..(n / 10).max(1))
        .map(|i| TunnelRecord {
            id: TunnelId(uuid::Uuid::from_u128(i as u128 + 1)),
            account,
            name: format!("t{i}"),
            secret_sha256: [0; 32],
        })
        .collect();
    let routes = (0..n)
        .map(|i| Route {
            hostname: if i % 10 == 0 {
                format!("*.site{i}.example.com")
            } else {
                format!("app{i}.example.com")
            },
            target: Target::Tunnel(tunnels[i % tunnels.len()].id),
            plugins: Arc::new([]),
        })
        .collect();
    (tunnels, routes)
}

impl RouteTable {
    /// Build a table, reporting every problem at once.
    pub fn build(
        tunnels: Vec<TunnelRecord>,
        routes: Vec<Route>,
        pools: Vec<PoolDef>,
    ) -> Result<RouteTable, Vec<BuildError>> {
        let mut errors = Vec::new();
        let mut table = RouteTable::default();
        table.tunnels.reserve(tunnels.len());
        table.exact.reserve(routes.len());
        for record in tunnels {
            let id = record.id;
            if table.tunnels.insert(id, record).is_some() {
                errors.push(BuildError::DuplicateTunnel(id));
            }
        }
        table.build_pools(pools, &mut errors);
        for mut route in routes {
            route.hostname.make_ascii_lowercase();
            if let Err(reason) = validate_hostname(&route.hostname) {
                errors.push(BuildError::BadHostname {
                    hostname: route.hostname,
                    reason,
                });
                continue;
            }
            match route.target {
                Target::Tunnel(tunnel) if !table.tunnels.contains_key(&tunnel) => {
                    errors.push(BuildError::UnknownTunnel {
                        hostname: route.hostname,
                        tunnel,
                    });
                    continue;
                }
                Target::Pool(i) if i >= table.pools.len() => {
                    errors.push(BuildError::UnknownPool {
                        hostname: route.hostname,
                    });
                    continue;
                }
                _ => {}
            }
            let (map, key) = match route.hostname.strip_prefix('*') {
                Some(suffix) => (&mut table.wildcard, suffix.to_owned()),
                None => (&mut table.exact, route.hostname.clone()),
            };
            match map.entry(key) {
                Entry::Occupied(_) => errors.push(BuildError::DuplicateRoute {
                    hostname: route.hostname,
                }),
                Entry::Vacant(slot) => {
                    slot.insert(route);
                }
            }
        }
        table.set_probe_hosts();
        if errors.is_empty() { Ok(table) } else { Err(errors) }
    }

    /// Find the route for a request's host (port allowed, any case): exact match first, then the
    /// most specific `*.` wildcard (`*.b.example.com` before `*.example.com`).
    pub fn lookup(&self, host: &str) -> Option<&Route> {
        let host = strip_port(host);
        let host = host.strip_suffix('.').unwrap_or(host);
        // Lowercase only when needed: most clients already send lowercase hosts.
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        if let Some(route) = self.exact.get(host) {
            return Some(route);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        let mut rest = host;
        while let Some(dot) = rest.find('.') {
            let suffix = &rest[dot..];
            if let Some(route) = self.wildcard.get(suffix) {
                return Some(route);
            }
            rest = &rest[dot + 1..];
        }
        None
    }

    pub fn tunnel(&self, id: &TunnelId) -> Option<&TunnelRecord> {
        self.tunnels.get(id)
    }

    /// Every pool, indexed by [`Target::Pool`] and [`Pool::fallback`].
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// A pool by account and name, with its index.
    pub fn pool(&self, account: AccountId, name: &str) -> Option<(usize, &Pool)> {
        let i = *self.pool_index.get(&(account, name.to_owned()))?;
        Some((i, &self.pools[i]))
    }

    /// The account that owns a route's target.
    pub fn route_account(&self, route: &Route) -> Option<AccountId> {
        match route.target {
            Target::Tunnel(id) => self.tunnel(&id).map(|t| t.account),
            Target::Pool(i) => self.pools.get(i).map(|p| p.account),
        }
    }

    /// Keep the health of origins that are in both tables: a config change must not forget
    /// that an origin is down (or make a healthy one wait for probes again).
    pub fn inherit_health(&mut self, old: &RouteTable) {
        for pool in &mut self.pools {
            let Some((_, previous)) = old.pool(pool.account, &pool.name) else {
                continue;
            };
            if previous.spec.monitor != pool.spec.monitor {
                // A changed or removed monitor starts over: its old verdicts no longer apply.
                continue;
            }
            for (i, origin) in pool.spec.origins.iter().enumerate() {
                if let Some(j) = previous.spec.origins.iter().position(|o| o.tunnel == origin.tunnel) {
                    pool.health[i] = previous.health[j].clone();
                }
            }
        }
    }

    /// Monitors without a `host` probe with a hostname routed to their pool (exact names first;
    /// `*.example.com` gives `burrow-health.example.com`).
    fn set_probe_hosts(&mut self) {
        let routes = self.exact.values().chain(self.wildcard.values());
        for route in routes {
            if let Target::Pool(i) = route.target
                && self.pools[i].probe_host.is_none()
            {
                let host = match route.hostname.strip_prefix('*') {
                    Some(suffix) => format!("burrow-health{suffix}"),
                    None => route.hostname.clone(),
                };
                self.pools[i].probe_host = Some(host);
            }
        }
    }

    /// Check pools (origins owned by the pool's account, fallbacks that exist and do not loop)
    /// and add them in order, so that route targets can index them.
    fn build_pools(&mut self, pools: Vec<PoolDef>, errors: &mut Vec<BuildError>) {
        for (i, def) in pools.iter().enumerate() {
            if self.pool_index.insert((def.account, def.name.clone()), i).is_some() {
                errors.push(BuildError::BadPool {
                    pool: def.name.clone(),
                    reason: "defined twice".into(),
                });
            }
        }
        let mut built = Vec::with_capacity(pools.len());
        for def in pools {
            let bad = |reason: String| BuildError::BadPool {
                pool: def.name.clone(),
                reason,
            };
            if let Err(reason) = def.spec.validate() {
                errors.push(bad(reason));
            }
            let mut names = Vec::with_capacity(def.spec.origins.len());
            for origin in &def.spec.origins {
                match self.tunnels.get(&origin.tunnel) {
                    Some(t) if t.account == def.account => names.push(t.name.clone()),
                    _ => {
                        errors.push(bad(format!(
                            "origin {} is not a tunnel of the pool's account",
                            origin.tunnel
                        )));
                        names.push(String::new());
                    }
                }
            }
            let fallback = def.spec.fallback.as_ref().and_then(|name| {
                let found = self.pool_index.get(&(def.account, name.clone())).copied();
                if found.is_none() {
                    errors.push(bad(format!("fallback pool {name:?} does not exist")));
                }
                found
            });
            let mut pool = Pool::new(def.account, def.name, def.spec, names, fallback);
            pool.balancer = def.balancer;
            built.push(pool);
        }
        for (i, pool) in built.iter().enumerate() {
            let mut hops = 0;
            let mut next = pool.fallback;
            while let Some(j) = next {
                hops += 1;
                if j == i || hops > crate::pools::pool::MAX_FALLBACK_DEPTH {
                    errors.push(BuildError::BadPool {
                        pool: pool.name.clone(),
                        reason: format!(
                            "its fallback chain loops or is longer than {}",
                            crate::pools::pool::MAX_FALLBACK_DEPTH
                        ),
                    });
                    break;
                }
                next = built[j].fallback;
            }
        }
        self.pools = built;
    }

    pub fn route_count(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    pub fn tunnel_count(&self) -> usize {
        self.tunnels.len()
    }
}

/// `host`, `host:port`, `[v6]:port` → host.
fn strip_port(host: &str) -> &str {
    host_port::unbracket(host_port::split(host).0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn tunnel(n: u128) -> TunnelRecord {
        TunnelRecord {
            id: TunnelId(Uuid::from_u128(n)),
            account: AccountId(Uuid::from_u128(100)),
            name: format!("t{n}"),
            secret_sha256: hash_secret(&TunnelSecret([n as u8; 32])),
        }
    }

    fn route(host: &str, n: u128) -> Route {
        Route {
            hostname: host.into(),
            target: Target::Tunnel(TunnelId(Uuid::from_u128(n))),
            plugins: Arc::new([]),
        }
    }

    #[test]
    fn exact_then_most_specific_wildcard() {
        let table = RouteTable::build(
            vec![tunnel(1), tunnel(2), tunnel(3)],
            vec![
                route("app.example.com", 1),
                route("*.example.com", 2),
                route("*.b.example.com", 3),
            ],
            vec![],
        )
        .unwrap();
        let cases = [
            ("app.example.com", Some(1)),
            ("APP.Example.com:8443", Some(1)),
            ("app.example.com.", Some(1)),
            ("x.example.com", Some(2)),
            ("x.y.example.com", Some(2)),
            ("x.b.example.com", Some(3)),
            ("b.example.com", Some(2)),
            ("example.com", None),
            ("other.org", None),
            ("[::1]:80", None),
            ("", None),
        ];
        for (host, want) in cases {
            let got = table.lookup(host).map(|r| match r.target {
                Target::Tunnel(t) => t.0.as_u128(),
                Target::Pool(_) => unreachable!(),
            });
            assert_eq!(got, want, "host {host:?}");
        }
    }

    #[test]
    fn build_reports_every_problem() {
        let errors = RouteTable::build(
            vec![tunnel(1)],
            vec![
                route("a.*.com", 1),
                route("ok.com", 9),
                route("dup.com", 1),
                route("dup.com", 1),
                route("Bad_Host", 1),
            ],
            vec![],
        )
        .unwrap_err();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(matches!(errors[1], BuildError::UnknownTunnel { .. }));
        assert!(matches!(errors[2], BuildError::DuplicateRoute { .. }));
    }

    #[test]
    fn verify_checks_secret_and_account() {
        let record = tunnel(7);
        assert!(record.verify(record.account, &TunnelSecret([7; 32])));
        assert!(!record.verify(record.account, &TunnelSecret([8; 32])));
        assert!(!record.verify(AccountId(Uuid::from_u128(5)), &TunnelSecret([7; 32])));
        assert!(!format!("{record:?}").contains("secret"));
    }
}
