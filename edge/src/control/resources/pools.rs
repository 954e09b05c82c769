//! Pools of an account's tunnels, and each edge's view of their health.

use super::*;

impl ControlPlane {
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
        let put = Op::put(key, to_json(&doc));
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
}
