//! Tunnels, and the (leased) records of their live connections.

use super::*;

impl ControlPlane {
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
            Op::put(name_key.clone(), to_json(&tunnel.id)),
            Op::put(format!("tunnels/{account}/{}", tunnel.id), to_json(&tunnel)),
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

    pub async fn connections(&self, tunnel: TunnelId) -> Result<Vec<Connection>, CpError> {
        Ok(self.list_all(&format!("connections/{tunnel}/")).await?.0)
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
}
