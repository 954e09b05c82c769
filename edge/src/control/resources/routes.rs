//! Hostname routes and the plugin chains bound to them.

use super::*;

impl ControlPlane {
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
            .txn(compares, vec![Op::put(key, to_json(&doc)), references_written(account)])
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
        let put = Op::put(format!("routes/{}", doc.hostname), to_json(&doc));
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
}
