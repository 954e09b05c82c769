//! Compiling components: operator plugins at start, uploads checked for the API (in their
//! turn), the versions a route table binds (from memory, the artifact cache on disk, or fetched
//! and compiled), and linking each into its world.

use super::chain::describe_trap;
use super::*;

/// Accounts whose uploads may wait to be compiled at once; more get "busy, retry".
pub const MAX_UPLOADS_WAITING: usize = 16;

/// Why an upload cannot be checked now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadBusy {
    /// This account's previous upload is still being compiled.
    Account,
    /// [`MAX_UPLOADS_WAITING`] accounts' uploads are.
    Edge,
}

/// An account's place in the upload queue (see [`PluginHost::queue_upload`]); leaving it when
/// dropped.
pub struct UploadTurn {
    host: Arc<PluginHost>,
    account: AccountId,
}

impl Drop for UploadTurn {
    fn drop(&mut self) {
        if let Ok(mut uploading) = self.host.uploading.lock() {
            uploading.remove(&self.account);
        }
    }
}

impl PluginHost {
    /// Compile and link an operator plugin under `name`; errors name what is wrong with it.
    pub async fn load(&mut self, name: &str, wasm: &[u8]) -> Result<()> {
        let component = Component::from_binary(&self.engine, wasm)
            .map_err(|e| anyhow::anyhow!("plugin {name:?} is not a valid WebAssembly component: {e:?}"))?;
        let world = self.link(name, &component)?;
        let loaded = self.loaded("", name.into(), name.into(), String::new(), world).await?;
        tracing::info!(plugin = name, kind = ?loaded.kind(), hooks = ?loaded.declared, "plugin loaded");
        self.plugins.insert(name.to_owned(), Arc::new(loaded));
        Ok(())
    }

    /// `account` labels the metrics of an uploaded plugin (empty for an operator's).
    pub(super) async fn loaded(
        &self,
        account: &str,
        name: Arc<str>,
        space: Arc<str>,
        sha256: String,
        world: World,
    ) -> Result<LoadedPlugin> {
        let declared = self.declared_hooks(&name, &world).await?;
        Ok(LoadedPlugin {
            metrics: self.metrics.for_plugin(account, &name),
            own_metrics: self.metrics.own(account, &name),
            name,
            space,
            sha256,
            world,
            declared,
            breaker: Default::default(),
        })
    }

    /// Ask a component which hooks it implements (`hooks`), in a throwaway instance.
    pub(super) async fn declared_hooks(&self, name: &str, world: &World) -> Result<Declared> {
        let World::Hooks(pre) = world else {
            return Ok(Declared::default());
        };
        let _slot = self.slot().await;
        let binding = Binding::default();
        let mut store = self.new_store(name.into(), name.into(), &binding, AccountId(uuid::Uuid::nil()));
        // hooks() gets a key-value store of its own, dropped after: it runs under no account.
        store.data_mut().kv = Arc::default();
        let failed = |e: wasmtime::Error| anyhow::anyhow!("plugin {name:?}: hooks() failed: {}", describe_trap(&e));
        let instance = pre.instantiate_async(&mut store).await.map_err(failed)?;
        let hooks = instance.call_hooks(&mut store).await.map_err(failed)?;
        let size = |n: u32, what: &str| {
            let n = n as usize;
            anyhow::ensure!(
                n <= MAX_HOOK_BODY,
                "plugin {name:?} declares a {what} of {n} bytes; at most {MAX_HOOK_BODY}"
            );
            Ok(n)
        };
        let set = hooks.hooks;
        Ok(Declared {
            request_body: set
                .contains(types::HookSet::REQUEST_BODY)
                .then(|| size(hooks.max_request_body, "max-request-body"))
                .transpose()?,
            response_headers: set.contains(types::HookSet::RESPONSE_HEADERS),
            response_body: set
                .contains(types::HookSet::RESPONSE_BODY)
                .then(|| size(hooks.max_response_body, "max-response-body"))
                .transpose()?,
            log: set.contains(types::HookSet::LOG),
        })
    }

    /// Link a component against the host: it must implement one of the two worlds.
    pub(super) fn link(&self, name: &str, component: &Component) -> Result<World> {
        let mut linker = Linker::<HostState>::new(&self.engine);
        bindings::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)
            .map_err(|e| anyhow::anyhow!("linking host functions: {e:?}"))?;
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| anyhow::anyhow!("linking WASI: {e:?}"))?;
        let pre = linker
            .instantiate_pre(component)
            .map_err(|e| anyhow::anyhow!("plugin {name:?} does not fit the burrow:plugin contract: {e:?}"))?;
        match bindings::PluginPre::new(pre.clone()) {
            Ok(hooks) => Ok(World::Hooks(hooks)),
            Err(hooks_error) => Ok(World::Balancer(balancer_bindings::BalancerPre::new(pre).map_err(
                |e| {
                    anyhow::anyhow!(
                        "plugin {name:?} exports neither on-request-headers (world plugin: {hooks_error:?}) \
                     nor select-origin (world balancer: {e:?})"
                    )
                },
            )?)),
        }
    }

    /// A place in the upload queue for `account`, or why there is none: the account has an
    /// upload being checked already, or [`MAX_UPLOADS_WAITING`] accounts do.
    pub fn queue_upload(self: &Arc<Self>, account: AccountId) -> Result<UploadTurn, UploadBusy> {
        let mut uploading = self.uploading.lock().map_err(|_| UploadBusy::Edge)?;
        if uploading.contains(&account) {
            return Err(UploadBusy::Account);
        }
        if uploading.len() >= MAX_UPLOADS_WAITING {
            return Err(UploadBusy::Edge);
        }
        uploading.insert(account);
        Ok(UploadTurn {
            host: self.clone(),
            account,
        })
    }

    /// Check an upload: compile it (off the runtime's workers, in its turn) and say which world
    /// it implements. Nothing is kept: the edges compile a version when a route binds it.
    pub async fn check_upload(self: &Arc<Self>, turn: &UploadTurn, name: &str, wasm: Arc<[u8]>) -> Result<PluginKind> {
        debug_assert!(Arc::ptr_eq(self, &turn.host));
        let _permit = self.upload_turn.acquire().await?;
        let (host, label) = (self.clone(), name.to_owned());
        let world = tokio::task::spawn_blocking(move || {
            let component = Component::from_binary(&host.engine, &wasm)
                .map_err(|e| anyhow::anyhow!("plugin {label:?} is not a valid WebAssembly component: {e:?}"))?;
            host.link(&label, &component)
        })
        .await??;
        self.declared_hooks(name, &world).await?;
        Ok(world.kind())
    }

    /// The component with this sha256, linked: from memory, from the artifact cache on disk, or
    /// compiled from `wasm` (then cached on disk). `None`: not compiled yet and no `wasm` given.
    /// Blocking: compiling takes up to seconds.
    pub(super) fn compile(&self, name: &str, sha256: &str, wasm: Option<&[u8]>) -> Result<Option<World>> {
        if let Some(world) = self.compiled.lock().ok().and_then(|c| c.get(sha256).cloned()) {
            return Ok(Some(world));
        }
        let artifact = self.cache_dir.as_ref().map(|dir| dir.join(format!("{sha256}.cwasm")));
        let cached = artifact.as_ref().filter(|path| path.exists()).and_then(|path| {
            // SAFETY: the file is an artifact this edge wrote itself (`Component::serialize`) into
            // its private data directory, whole then renamed into place; wasmtime checks that it
            // was made by this version with this configuration.
            #[allow(unsafe_code, reason = "loading our own precompiled artifact")]
            let deserialized = unsafe { Component::deserialize_file(&self.engine, path) };
            match deserialized {
                Ok(component) => Some(component),
                Err(e) => {
                    tracing::warn!(
                        plugin = name,
                        "cached artifact {} not usable ({e}); compiling",
                        path.display()
                    );
                    None
                }
            }
        });
        let component = match (cached, wasm) {
            (Some(component), _) => component,
            (None, None) => return Ok(None),
            (None, Some(wasm)) => {
                let component = Component::from_binary(&self.engine, wasm)
                    .map_err(|e| anyhow::anyhow!("plugin {name:?} is not a valid WebAssembly component: {e:?}"))?;
                if let Some(path) = &artifact {
                    let written = component
                        .serialize()
                        .map_err(|e| anyhow::anyhow!("{e:?}"))
                        .and_then(|bytes| burrow_shared::files::write_private(path, &bytes));
                    if let Err(e) = written {
                        tracing::warn!(plugin = name, "could not cache the compiled plugin: {e:#}");
                    }
                }
                component
            }
        };
        let world = self.link(name, &component)?;
        if let Ok(mut compiled) = self.compiled.lock() {
            compiled.insert(sha256.to_owned(), world.clone());
        }
        Ok(Some(world))
    }

    /// Make `versions` (what the next route table binds) ready to run, fetching and compiling
    /// the ones not loaded yet, before the table is swapped in. A version that cannot be loaded
    /// is logged and left out: requests of its routes fail with a clear error (or pass, if
    /// fail-open) while every other route keeps working. `false` when one was left out.
    pub async fn prepare<F, Fut>(self: &Arc<Self>, versions: &[PluginVersion], fetch: F) -> bool
    where
        F: Fn(PluginVersion) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<u8>>>,
    {
        let current = self.uploaded.lock().map(|u| u.clone()).unwrap_or_default();
        let mut next = HashMap::with_capacity(versions.len());
        let mut complete = true;
        for v in versions {
            let key = (v.account, v.name.clone(), v.version);
            if let Some(loaded) = current.get(&key).filter(|p| p.sha256 == v.sha256) {
                next.insert(key, loaded.clone());
                continue;
            }
            let label = format!("{}@{}", v.name, v.version);
            let loaded = match self.load_version(&label, v, &fetch).await {
                Ok(world) => {
                    // Uploads keep their key-value data apart from an operator plugin's.
                    let space = format!("uploaded/{}", v.name);
                    let account = v.account.to_string();
                    self.loaded(&account, label.as_str().into(), space.into(), v.sha256.clone(), world)
                        .await
                }
                Err(e) => Err(e),
            };
            match loaded {
                Ok(loaded) => {
                    tracing::info!(plugin = %label, account = %v.account, sha256 = %v.sha256, "plugin version loaded");
                    next.insert(key, Arc::new(loaded));
                }
                Err(e) => {
                    complete = false;
                    tracing::error!(
                        plugin = %label, account = %v.account,
                        "plugin version not loaded; its routes fail until it is (retrying): {e:#}"
                    );
                }
            }
        }
        if let Ok(mut compiled) = self.compiled.lock() {
            compiled.retain(|sha, _| next.values().any(|p| p.sha256 == *sha));
        }
        for (key, gone) in current.iter().filter(|(key, _)| !next.contains_key(*key)) {
            // Its series leave /metrics with it: versions come and go, series must not pile up.
            self.metrics.forget(&key.0.to_string(), &gone.name);
            gone.own_metrics.forget();
        }
        self.remove_unused_artifacts(&next);
        if let Ok(mut uploaded) = self.uploaded.lock() {
            *uploaded = next;
        }
        complete
    }

    /// Delete cached artifacts no bound version uses (deleted versions, old bindings).
    pub(super) fn remove_unused_artifacts(&self, bound: &HashMap<UploadedKey, Arc<LoadedPlugin>>) {
        let Some(entries) = self.cache_dir.as_ref().and_then(|dir| std::fs::read_dir(dir).ok()) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let ours = matches!(path.extension().and_then(|e| e.to_str()), Some("cwasm" | "tmp"));
            if ours
                && !bound.values().any(|p| p.sha256 == stem)
                && let Err(e) = std::fs::remove_file(&path)
            {
                tracing::debug!("removing the unused artifact {}: {e}", path.display());
            }
        }
    }

    pub(super) async fn load_version<F, Fut>(
        self: &Arc<Self>,
        label: &str,
        v: &PluginVersion,
        fetch: &F,
    ) -> Result<World>
    where
        F: Fn(PluginVersion) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<u8>>>,
    {
        // The sha256 names a file in the artifact cache: only ever hex digits.
        anyhow::ensure!(
            v.sha256.len() == 64
                && v.sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "the version's sha256 {:?} is not 64 lowercase hex digits",
            v.sha256
        );
        let _permit = self.compiles.acquire().await?;
        let (host, name, sha) = (self.clone(), label.to_owned(), v.sha256.clone());
        if let Some(world) = tokio::task::spawn_blocking(move || host.compile(&name, &sha, None)).await?? {
            return Ok(world);
        }
        let wasm = fetch(v.clone()).await?;
        anyhow::ensure!(
            sha256_hex(&wasm) == v.sha256,
            "the fetched component does not match its sha256"
        );
        let (host, name, sha) = (self.clone(), label.to_owned(), v.sha256.clone());
        tokio::task::spawn_blocking(move || host.compile(&name, &sha, Some(&wasm)))
            .await??
            .ok_or_else(|| anyhow::anyhow!("not compiled"))
    }
}
