//! Accounts and their API tokens; node tokens of edge-only nodes.

use super::*;

impl ControlPlane {
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
        let mut ops = vec![Op::put(key.clone(), to_json(&account))];
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
        (token, vec![Op::put(format!("tokens/{id}"), to_json(&doc))])
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
}
