//! The wasmtime host for plugins: WebAssembly components written against `wit/plugin.wit`.
//!
//! One `Engine` per edge; each plugin is compiled once and linked once into an `InstancePre`.
//! By default every hook call gets a fresh instance in a fresh `Store` (no state shared between
//! requests; a binding may opt into reusing instances, `reuse: N`), from the pooling allocator
//! (see `PluginHost::new` and docs/performance.md for what it costs),
//! a deadline by epoch interruption (a ticker thread advances the epoch every millisecond while
//! calls run, see `plugin_ticker`) and a
//! memory cap. A trap, a timeout or a limit hit is an error for that request only.
//!
//! Calls run on the runtime worker that serves the request, on a wasmtime fiber (async support):
//! no hop to another thread. A running plugin yields to other tasks at every epoch tick, and its
//! deadline counts the ticks it was running for, so time spent waiting for a busy CPU is not
//! charged to it.
//!
//! The request is passed as a *borrowed resource*: the plugin calls getters and setters on the
//! edge's own `HeaderMap` instead of receiving a copy of every header.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::metrics::{CallResult, MAX_OWN_METRICS, OwnMetrics, PluginCallMetrics, PluginMetrics};
use crate::plugins::binding::{Binding, PluginBinding};
use crate::plugins::kv::{KvStores, Space};
use crate::plugins::ticker::{EpochTicker, Running};
use crate::plugins::version::{PluginKind, PluginVersion, sha256_hex};
use burrow_protocol::AccountId;

mod bindings {
    wasmtime::component::bindgen!({ path: "../wit", world: "plugin", exports: { default: async } });
}

/// The `balancer` world shares the `types` and `host` interfaces (one host implementation).
mod balancer_bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "balancer",
        exports: { default: async },
        with: {
            "burrow:plugin/types": super::bindings::burrow::plugin::types,
            "burrow:plugin/host": super::bindings::burrow::plugin::host,
            "burrow:plugin/kv": super::bindings::burrow::plugin::kv,
            "burrow:plugin/metrics": super::bindings::burrow::plugin::metrics,
            "burrow:plugin/crypto": super::bindings::burrow::plugin::crypto,
        },
    });
}

pub use bindings::burrow::plugin::crypto;
use bindings::burrow::plugin::{host as wit_host, kv as wit_kv, metrics as wit_metrics, types};
pub use types::Candidate;

/// Time a hook may run (epoch ticks of 1 ms).
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(5);
/// Linear memory a plugin instance may grow to.
pub const MAX_MEMORY: usize = 16 * 1024 * 1024;
/// Longest path a plugin may set (the listener's own URI limit is of the same order).
const MAX_PATH: usize = 8 * 1024;
/// Most header values a plugin may grow a request to (appending is otherwise unbounded).
const MAX_PLUGIN_HEADERS: usize = 256;
/// Largest response body a plugin may answer with.
const MAX_RESPONSE_BODY: usize = 1024 * 1024;
/// Wasm calls running at once. Each holds one slot of the pooling allocator; callers wait for a
/// slot (`PluginHost::slot`) rather than fail when all are taken.
pub const MAX_CONCURRENT_CALLS: u32 = 128;
/// Idle instances kept for reuse-mode bindings, across all of them (each keeps a pool slot and
/// its memory resident). Beyond it a finished instance is dropped.
const MAX_WARM_INSTANCES: usize = 64;
/// `on-log` calls that may run or wait for a slot at once; more are dropped and counted.
pub const MAX_PENDING_LOGS: usize = 1024;
/// Idle instances kept for one binding.
const MAX_IDLE_PER_BINDING: usize = 8;
/// Most requests one instance may serve in reuse mode.
pub const MAX_REUSE: u32 = 100_000;

/// What a plugin sees of the request during a hook.
#[derive(Clone)]
pub struct PluginRequest {
    pub method: Method,
    pub authority: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub client_addr: SocketAddr,
    pub request_id: String,
    /// The route's hostname pattern, and the account that owns it (plugins' key-value spaces
    /// are per account).
    pub route: String,
    pub account: AccountId,
}

/// The origin's response head, while the response hooks run.
pub struct PluginResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// What a phase of the chain works on, handed from plugin to plugin: the request, the origin's
/// response head (response phases), and the buffered body of a body phase.
pub struct Exchange {
    pub request: PluginRequest,
    pub response: Option<PluginResponse>,
    pub body: Option<Bytes>,
}

/// What the chain decided.
#[allow(
    clippy::large_enum_variant,
    reason = "moved once per phase; boxing would allocate per request"
)]
pub enum Outcome {
    Continue(Exchange),
    Respond(Response<Full<Bytes>>),
}

/// The hook phases of a request, in the order they run (see `wit/plugin.wit`).
#[derive(Debug, Clone, Copy)]
pub enum Phase {
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
    /// After the response, with how it went (see [`PluginHost::log`]).
    Log(LogEntry),
}

pub use types::LogEntry;

/// Largest body a plugin may declare for a body hook (its instance holds it, maybe twice).
pub const MAX_HOOK_BODY: usize = 4 * 1024 * 1024;
/// Bodies buffered for body hooks at once, all requests together (a visitor trickling many
/// large bodies must not take the edge's memory).
pub const MAX_BUFFERED_BODIES: usize = 256 * 1024 * 1024;

/// Bytes of [`MAX_BUFFERED_BODIES`] held by one request (given back on drop).
pub struct BodyReservation(Arc<AtomicUsize>, usize);

impl Drop for BodyReservation {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::Relaxed);
    }
}

/// The hooks a plugin implements beyond `on-request-headers` (asked once, when it is loaded), or
/// those of a whole chain (the largest body limit: each plugin still gets only bodies within its
/// own, see [`PluginHost::run`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Declared {
    /// Buffer request bodies up to this size for `on-request-body`.
    pub request_body: Option<usize>,
    pub response_headers: bool,
    /// Buffer response bodies up to this size for `on-response-body`.
    pub response_body: Option<usize>,
    pub log: bool,
}

impl Declared {
    fn runs(&self, phase: Phase) -> bool {
        match phase {
            Phase::RequestHeaders => true,
            Phase::RequestBody => self.request_body.is_some(),
            Phase::ResponseHeaders => self.response_headers,
            Phase::ResponseBody => self.response_body.is_some(),
            Phase::Log(_) => self.log,
        }
    }

    /// Whether any response hook runs.
    pub fn response(&self) -> bool {
        self.response_headers || self.response_body.is_some()
    }

    fn merge(self, other: Declared) -> Declared {
        Declared {
            request_body: self.request_body.max(other.request_body),
            response_headers: self.response_headers || other.response_headers,
            response_body: self.response_body.max(other.response_body),
            log: self.log || other.log,
        }
    }
}

/// What a hook decided: the union of `action` and `body-action`.
enum Decision {
    Continue,
    Replace(Bytes),
    Respond(Response<Full<Bytes>>),
}

/// A failed call: the exchange if it could be taken back, and why.
type CallFailure = (Option<Exchange>, String);

/// Why a plugin failed this request. Logged once by the caller.
#[derive(Debug, thiserror::Error)]
#[error("plugin {plugin:?}: {reason}")]
pub struct PluginError {
    pub plugin: String,
    pub reason: String,
}

struct HostState {
    table: ResourceTable,
    /// WASI with nothing in it: no files, no environment, no sockets. Rust guests built for
    /// wasm32-wasip2 import WASI for their standard library (panics, clocks, randomness).
    /// Built on first use: most hook calls never touch WASI, and building it (random generators,
    /// clocks, stdio) is a measurable part of a fresh instance's cost.
    wasi: Option<WasiCtx>,
    limits: StoreLimits,
    plugin: Arc<str>,
    space_name: Arc<str>,
    own_metrics: Option<Arc<OwnMetrics>>,
    /// A refused metric name was logged (once per instance).
    metric_refused: bool,
    config: String,
    account: AccountId,
    kv: Arc<KvStores>,
    /// This plugin's space for `account`, looked up on first use.
    space: Option<Arc<std::sync::Mutex<Space>>>,
}

struct LoadedPlugin {
    /// For logs and metrics: `name`, or `name@version` for an uploaded plugin.
    name: Arc<str>,
    /// The plugin's key-value space name (the same for every version).
    space: Arc<str>,
    /// Hex sha256 of the component (uploaded plugins).
    sha256: String,
    world: World,
    declared: Declared,
    /// Its own counters and histograms (the `metrics` import).
    own_metrics: Arc<OwnMetrics>,
    /// Trips when the plugin fails for most clients ([`crate::plugins::breaker`]).
    breaker: crate::plugins::breaker::Breaker,
    metrics: PluginCallMetrics,
}

/// Which world a component implements, ready to instantiate.
#[derive(Clone)]
enum World {
    /// Request hooks, bound to routes.
    Hooks(bindings::PluginPre<HostState>),
    /// `select-origin`, bound to pools.
    Balancer(balancer_bindings::BalancerPre<HostState>),
}

/// The compiled plugins of one edge: the operator's (`--plugin`, by name) and the uploaded
/// versions that the current route table binds.
pub struct PluginHost {
    engine: Engine,
    plugins: HashMap<String, Arc<LoadedPlugin>>,
    uploaded: std::sync::Mutex<HashMap<UploadedKey, Arc<LoadedPlugin>>>,
    /// Compiled components by sha256: uploads checked by the API, then what bindings use.
    compiled: std::sync::Mutex<HashMap<String, World>>,
    /// Where compiled components are kept across restarts (`<data-dir>/plugins`).
    cache_dir: Option<PathBuf>,
    /// Compiling takes a core for up to seconds: one at a time.
    compiles: tokio::sync::Semaphore,
    /// Bytes of bodies buffered for body hooks right now.
    buffered: Arc<AtomicUsize>,
    ticker: EpochTicker,
    slots: Arc<tokio::sync::Semaphore>,
    /// `on-log` calls running or waiting for a slot (see [`PluginHost::spawn_log`]).
    pending_logs: Arc<tokio::sync::Semaphore>,
    /// Idle reuse-mode instances, all bindings together (at most [`MAX_WARM_INSTANCES`]).
    warm_idle: Arc<AtomicUsize>,
    kv: Arc<KvStores>,
    pub metrics: PluginMetrics,
}

impl World {
    fn kind(&self) -> PluginKind {
        match self {
            World::Hooks(_) => PluginKind::Hooks,
            World::Balancer(_) => PluginKind::Balancer,
        }
    }
}

impl LoadedPlugin {
    fn kind(&self) -> PluginKind {
        self.world.kind()
    }
}

/// An uploaded plugin version of one account.
type UploadedKey = (AccountId, String, u32);

/// The uploaded plugin version a binding runs, found when the route table is built (no lookup
/// per request). Empty for operator plugins and for versions this edge could not load.
#[derive(Clone, Default)]
pub struct ResolvedPlugin(Option<Arc<LoadedPlugin>>);

impl std::fmt::Debug for ResolvedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.0.as_ref().map(|p| &*p.name);
        write!(f, "ResolvedPlugin({name:?})")
    }
}

/// Resolution is derived from the binding's fields, not part of what a binding is.
impl PartialEq for ResolvedPlugin {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for ResolvedPlugin {}

/// An instance kept between requests of one reuse-mode binding.
struct Warm<E = Exports> {
    store: Store<HostState>,
    exports: E,
    served: u32,
}

/// What a kept instance exports: a binding's plugin is of one world, so a binding only ever
/// keeps instances of that one.
enum Exports {
    Hooks(bindings::Plugin),
    Balancer(balancer_bindings::Balancer),
}

impl Exports {
    fn hooks(self) -> Option<bindings::Plugin> {
        match self {
            Self::Hooks(hooks) => Some(hooks),
            Self::Balancer(_) => None,
        }
    }

    fn balancer(self) -> Option<balancer_bindings::Balancer> {
        match self {
            Self::Balancer(balancer) => Some(balancer),
            Self::Hooks(_) => None,
        }
    }
}

/// The idle instances of one binding, at most [`MAX_IDLE_PER_BINDING`] (so one busy route cannot
/// take the whole global cap). Clones share them; a binding read anew (any route-table rebuild)
/// starts with none.
#[derive(Clone, Default)]
pub struct WarmInstances(Arc<std::sync::Mutex<Vec<(Warm, IdleSlot)>>>);

/// One unit of the global idle-instance cap, given back when the idle instance leaves the list
/// (taken for a call, or dropped with its binding).
struct IdleSlot(Arc<AtomicUsize>);

impl IdleSlot {
    fn acquire(idle: &Arc<AtomicUsize>) -> Option<Self> {
        if idle.fetch_add(1, Ordering::Relaxed) < MAX_WARM_INSTANCES {
            Some(Self(idle.clone()))
        } else {
            idle.fetch_sub(1, Ordering::Relaxed);
            None
        }
    }
}

impl Drop for IdleSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl WarmInstances {
    fn take(&self) -> Option<Warm> {
        self.0.lock().ok()?.pop().map(|(warm, _slot)| warm)
    }

    /// Keep `warm` for the next request, unless a cap is reached (then it is dropped).
    fn put(&self, warm: Warm, idle: &Arc<AtomicUsize>) {
        let Ok(mut list) = self.0.lock() else { return };
        if list.len() < MAX_IDLE_PER_BINDING
            && let Some(slot) = IdleSlot::acquire(idle)
        {
            list.push((warm, slot));
        }
    }
}

impl std::fmt::Debug for WarmInstances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle = self.0.lock().map_or(0, |list| list.len());
        write!(f, "WarmInstances({idle} idle)")
    }
}

/// Idle instances are a cache, not part of what a binding is.
impl PartialEq for WarmInstances {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for WarmInstances {}

impl PluginHost {
    pub fn new() -> Result<Self> {
        // A fresh instance per call is affordable only with the pooling allocator: slots are
        // reserved once and reused, and memories are reset by memset of the pages the call
        // dirtied (found with PAGEMAP_SCAN on Linux ≥ 6.7) instead of madvise and page faults.
        // Default allocation measured 91 µs per no-op call.
        let mut pool = wasmtime::PoolingAllocationConfig::new();
        let slots = MAX_CONCURRENT_CALLS;
        let instances = slots + MAX_WARM_INSTANCES as u32;
        pool.total_component_instances(instances)
            .total_core_instances(instances * 8)
            .total_memories(instances * 2)
            .total_tables(instances * 8)
            // Per component, what the totals above assume: a component needing more is refused
            // when it is loaded, instead of draining the pool for every plugin at run time.
            .max_memories_per_component(2)
            .max_core_instances_per_component(8)
            .max_tables_per_component(8)
            .max_memory_size(MAX_MEMORY)
            .total_stacks(instances)
            .linear_memory_keep_resident(2 * 1024 * 1024)
            .table_keep_resident(64 * 1024)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(256 * 1024)
            .async_stack_size(512 * 1024)
            // Memories never exceed MAX_MEMORY: reserving just that (instead of 4 GiB each) keeps
            // the pool's address space at a few GiB, at the price of explicit bounds checks.
            .memory_reservation(MAX_MEMORY as u64)
            .memory_guard_size(64 * 1024)
            .memory_reservation_for_growth(0)
            .allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("creating the wasm engine: {e:?}"))?;
        let ticker = EpochTicker::start(engine.clone())?;
        Ok(Self {
            engine,
            plugins: HashMap::new(),
            uploaded: Default::default(),
            compiled: Default::default(),
            cache_dir: None,
            compiles: tokio::sync::Semaphore::new(1),
            buffered: Arc::default(),
            ticker,
            slots: Arc::new(tokio::sync::Semaphore::new(slots as usize)),
            pending_logs: Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_LOGS)),
            warm_idle: Arc::new(AtomicUsize::new(0)),
            kv: Default::default(),
            metrics: Default::default(),
        })
    }

    /// Wait for an instance slot of the pooling allocator; held until dropped. Wasm runs only
    /// under a slot, so the slot also keeps the epoch ticking.
    async fn slot(&self) -> Option<CallSlot<'_>> {
        // The semaphore is never closed, so this always holds a permit.
        let permit = self.slots.acquire().await.ok()?;
        Some(CallSlot {
            _permit: permit,
            _running: self.ticker.running(),
        })
    }

    /// Keep compiled uploaded plugins in `dir`, so a restart does not compile them again.
    pub fn set_cache_dir(&mut self, dir: PathBuf) {
        self.cache_dir = Some(dir);
    }

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
    async fn loaded(
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
    async fn declared_hooks(&self, name: &str, world: &World) -> Result<Declared> {
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

    /// Whether every binding of `chain` whose plugin runs `phase` is fail-open (so a body too big
    /// for them may pass without them).
    pub fn fail_open_for(&self, chain: &[Binding], phase: Phase) -> bool {
        chain
            .iter()
            .all(|b| b.fail_open || self.plugin_for(b).is_ok_and(|p| !p.declared.runs(phase)))
    }

    /// Room for `bytes` more of buffered bodies, held until the reservation is dropped; `None`
    /// when all of [`MAX_BUFFERED_BODIES`] is taken.
    pub fn reserve_body(&self, bytes: usize) -> Option<BodyReservation> {
        let taken = self.buffered.fetch_add(bytes, Ordering::Relaxed);
        let reservation = BodyReservation(self.buffered.clone(), bytes);
        (taken + bytes <= MAX_BUFFERED_BODIES).then_some(reservation)
    }

    /// What the proxy must do for `chain`: the hooks its plugins declare, together.
    pub fn chain_needs(&self, chain: &[Binding]) -> Declared {
        chain
            .iter()
            .filter_map(|binding| self.plugin_for(binding).ok())
            .fold(Declared::default(), |needs, plugin| needs.merge(plugin.declared))
    }

    /// Link a component against the host: it must implement one of the two worlds.
    fn link(&self, name: &str, component: &Component) -> Result<World> {
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

    /// Whether `name` is an operator plugin and a balancer (`Some(true)`) or request hooks
    /// (`Some(false)`).
    pub fn is_balancer(&self, name: &str) -> Option<bool> {
        self.plugins.get(name).map(|p| p.kind() == PluginKind::Balancer)
    }

    /// Check an upload: compile it (off the runtime's workers, one compile at a time) and say
    /// which world it implements. Nothing is kept: the edges compile a version when a route
    /// binds it.
    pub async fn check_upload(self: &Arc<Self>, name: &str, wasm: Arc<[u8]>) -> Result<PluginKind> {
        let _permit = self.compiles.acquire().await?;
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
    fn compile(&self, name: &str, sha256: &str, wasm: Option<&[u8]>) -> Result<Option<World>> {
        if let Some(world) = self.compiled.lock().ok().and_then(|c| c.get(sha256).cloned()) {
            return Ok(Some(world));
        }
        let artifact = self.cache_dir.as_ref().map(|dir| dir.join(format!("{sha256}.cwasm")));
        let cached = artifact.as_ref().filter(|path| path.exists()).and_then(|path| {
            // SAFETY: the file is an artifact this edge wrote itself (`Component::serialize`) into
            // its private data directory, whole then renamed into place; wasmtime checks that it
            // was made by this version with this configuration. The only unsafe code of Burrow.
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
    fn remove_unused_artifacts(&self, bound: &HashMap<UploadedKey, Arc<LoadedPlugin>>) {
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

    async fn load_version<F, Fut>(self: &Arc<Self>, label: &str, v: &PluginVersion, fetch: &F) -> Result<World>
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

    /// `binding` with the uploaded version it names attached (see [`ResolvedPlugin`]).
    pub fn resolve(&self, account: AccountId, binding: &PluginBinding) -> Binding {
        let mut binding = Binding::new(binding.clone());
        if let Some(version) = binding.version {
            let key = (account, binding.plugin.clone(), version);
            binding.resolved = ResolvedPlugin(self.uploaded.lock().ok().and_then(|u| u.get(&key).cloned()));
        }
        binding
    }

    /// The plugin a binding runs: its resolved upload, or the operator plugin of that name.
    fn plugin_for<'a>(&'a self, binding: &'a Binding) -> Result<&'a LoadedPlugin, String> {
        match (&binding.resolved.0, binding.version) {
            (Some(plugin), _) => Ok(plugin),
            (None, Some(version)) => Err(format!("version {version} is not loaded on this edge (see its log)")),
            (None, None) => self
                .plugins
                .get(&binding.plugin)
                .map(|p| &**p)
                .ok_or_else(|| "not loaded on this edge".into()),
        }
    }

    /// Run one phase of the chain: the plugins that implement its hook, in chain order for the
    /// request phases and in reverse for the response phases (the first plugin sees the request
    /// first and the response last). Stops at the first `respond`. A failing binding fails the
    /// request unless it is fail-open.
    pub async fn run(&self, chain: &[Binding], phase: Phase, mut exchange: Exchange) -> Result<Outcome, PluginError> {
        // One instance at a time per chain: a reused one goes back before the next call.
        let _slot = self.slot().await;
        let reverse = matches!(phase, Phase::ResponseHeaders | Phase::ResponseBody);
        for i in 0..chain.len() {
            let binding = &chain[if reverse { chain.len() - 1 - i } else { i }];
            let failed = |reason: String| PluginError {
                plugin: binding.plugin.clone(),
                reason,
            };
            let plugin = match self.plugin_for(binding) {
                Ok(plugin) => plugin,
                Err(_) if binding.fail_open => continue,
                Err(reason) => return Err(failed(reason)),
            };
            if !plugin.declared.runs(phase) {
                continue;
            }
            match self.call(plugin, binding, exchange, phase).await {
                Ok((back, Decision::Continue)) => exchange = back,
                Ok((mut back, Decision::Replace(body))) => {
                    back.body = Some(body);
                    exchange = back;
                }
                Ok((_, Decision::Respond(response))) => return Ok(Outcome::Respond(response)),
                Err(failure) => {
                    let (back, reason) = *failure;
                    if binding.fail_open {
                        tracing::warn!(plugin = %plugin.name, "plugin failed, continuing (fail-open): {reason}");
                        exchange = back.ok_or_else(|| failed(format!("{reason}; the request was lost")))?;
                        continue;
                    }
                    return Err(failed(reason));
                }
            }
        }
        Ok(Outcome::Continue(exchange))
    }

    /// Run [`Self::log`] beside the request, unless [`MAX_PENDING_LOGS`] already wait for a slot:
    /// then it is dropped and counted (`burrow_plugin_logs_dropped`), so a burst of logged
    /// responses cannot queue without bound, each holding its request's headers.
    pub fn spawn_log(self: &Arc<Self>, chain: Arc<[Binding]>, request: PluginRequest, entry: LogEntry) {
        let Ok(pending) = self.pending_logs.clone().try_acquire_owned() else {
            self.metrics.log_dropped();
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let host = self.clone();
        runtime.spawn(async move {
            host.log(&chain, request, entry).await;
            drop(pending);
        });
    }

    /// Run `on-log` of the chain's plugins that implement it, in chain order. A failure is
    /// counted and logged like any call's, and the next plugin still runs.
    pub async fn log(&self, chain: &[Binding], request: PluginRequest, entry: LogEntry) {
        let _slot = self.slot().await;
        let mut exchange = Exchange {
            request,
            response: None,
            body: None,
        };
        for binding in chain {
            let Ok(plugin) = self.plugin_for(binding) else { continue };
            if !plugin.declared.log {
                continue;
            }
            match self.call(plugin, binding, exchange, Phase::Log(entry)).await {
                Ok((back, _)) => exchange = back,
                Err(failure) => {
                    let (back, reason) = *failure;
                    tracing::warn!(plugin = %plugin.name, "on-log failed: {reason}");
                    let Some(back) = back else { return };
                    exchange = back;
                }
            }
        }
    }

    /// Ask a balancer plugin which candidate serves this request (`None`: let the edge choose).
    pub async fn select_origin(
        &self,
        binding: &Binding,
        request: PluginRequest,
        candidates: Vec<Candidate>,
    ) -> Result<Option<u32>, PluginError> {
        let failed = |reason: String| PluginError {
            plugin: binding.plugin.clone(),
            reason,
        };
        let plugin = self.plugin_for(binding).map_err(failed)?;
        let World::Balancer(pre) = &plugin.world else {
            return Err(failed("is not a balancer (it does not export select-origin)".into()));
        };
        if let Some(reason) = self.tripped(plugin) {
            return Err(failed(reason));
        }
        let source = request.client_addr.ip();
        let _slot = self.slot().await;
        let started = Instant::now();
        let (mut store, instance, served) = match warm(binding, Exports::balancer) {
            Some(warm) => (warm.store, Ok(warm.exports), warm.served),
            None => {
                let mut store = self.store(plugin, binding, request.account);
                let instance = pre.instantiate_async(&mut store).await;
                (store, instance, 0)
            }
        };
        let handle = store
            .data_mut()
            .table
            .push(request)
            .map_err(|e| failed(format!("resource table: {e}")))?;
        let rep = handle.rep();
        let (kept, result) = match instance {
            Ok(balancer) => {
                let result = balancer
                    .call_select_origin(&mut store, Resource::new_borrow(rep), &candidates)
                    .await;
                (Some(balancer), result)
            }
            Err(e) => (None, Err(e)),
        };
        // The request is lent for this call only: a kept instance must not accumulate them.
        let _ = store.data_mut().table.delete(Resource::<PluginRequest>::new_own(rep));
        self.record(plugin, source, started, result.as_ref().err())
            .map_err(failed)?;
        // An instance that failed (trap, deadline, limit) may be in any state: never reused.
        if let (Some(balancer), Ok(_)) = (kept, &result) {
            self.keep_warm(binding, store, Exports::Balancer(balancer), served);
        }
        result.map_err(|e| failed(describe_trap(&e)))
    }

    /// Keep an instance of `binding` that has served one more call, unless that was its last.
    fn keep_warm(&self, binding: &Binding, store: Store<HostState>, exports: Exports, served: u32) {
        let served = served + 1;
        if served < binding.reuse.min(MAX_REUSE) {
            binding.warm.put(Warm { store, exports, served }, &self.warm_idle);
        }
    }

    /// `Some(reason)` when the plugin is tripped and this call should not run it.
    fn tripped(&self, plugin: &LoadedPlugin) -> Option<String> {
        let Err(reason) = plugin.breaker.admit(Instant::now()) else {
            return None;
        };
        plugin.metrics.record(CallResult::Tripped, None);
        Some(reason)
    }

    /// Count a call for the client at `source` that started at `started`, in the metrics and the
    /// plugin's breaker; a failure becomes its reason.
    fn record(
        &self,
        plugin: &LoadedPlugin,
        source: std::net::IpAddr,
        started: Instant,
        error: Option<&wasmtime::Error>,
    ) -> Result<(), String> {
        let result = match error.map(|e| e.downcast_ref::<wasmtime::Trap>()) {
            None => CallResult::Ok,
            Some(Some(wasmtime::Trap::Interrupt)) => CallResult::Deadline,
            Some(Some(_)) => CallResult::Trap,
            Some(None) => CallResult::Error,
        };
        plugin.metrics.record(result, Some(started.elapsed().as_secs_f64()));
        let tripped = plugin.breaker.record(error.is_none(), source, Instant::now());
        let Some(e) = error else { return Ok(()) };
        let reason = describe_trap(e);
        if tripped {
            tracing::error!(plugin = %plugin.name, "plugin tripped: it fails for most calls from several clients: {reason}");
        }
        Err(reason)
    }

    /// A fresh store for one call: empty WASI, memory cap, deadline.
    fn store(&self, plugin: &LoadedPlugin, binding: &Binding, account: AccountId) -> Store<HostState> {
        let mut store = self.new_store(plugin.name.clone(), plugin.space.clone(), binding, account);
        store.data_mut().own_metrics = Some(plugin.own_metrics.clone());
        store
    }

    fn new_store(&self, name: Arc<str>, space: Arc<str>, binding: &Binding, account: AccountId) -> Store<HostState> {
        let limits = StoreLimitsBuilder::new().memory_size(MAX_MEMORY).instances(4).build();
        let state = HostState {
            table: ResourceTable::new(),
            wasi: None,
            limits,
            plugin: name,
            space_name: space,
            own_metrics: None,
            metric_refused: false,
            config: binding.config.clone(),
            account,
            kv: self.kv.clone(),
            space: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        arm_deadline(&mut store, binding);
        store
    }

    /// One hook call, in a fresh instance or (reuse mode) a warm one. On error, the exchange
    /// comes back if it could be saved.
    async fn call(
        &self,
        plugin: &LoadedPlugin,
        binding: &Binding,
        exchange: Exchange,
        phase: Phase,
    ) -> Result<(Exchange, Decision), Box<CallFailure>> {
        let World::Hooks(pre) = &plugin.world else {
            return Err(Box::new((
                Some(exchange),
                "is a balancer: bind it to a pool (steering: plugin), not to a route".into(),
            )));
        };
        if let Some(reason) = self.tripped(plugin) {
            return Err(Box::new((Some(exchange), reason)));
        }
        let body = exchange.body.clone().unwrap_or_default();
        let limit = match phase {
            Phase::RequestBody => plugin.declared.request_body,
            Phase::ResponseBody => plugin.declared.response_body,
            _ => None,
        };
        if let Some(limit) = limit.filter(|limit| body.len() > *limit) {
            let reason = format!(
                "the body ({} bytes) is over the {limit} bytes this plugin reads",
                body.len()
            );
            return Err(Box::new((Some(exchange), reason)));
        }
        let started = Instant::now();
        let source = exchange.request.client_addr.ip();
        let Warm {
            mut store,
            exports: hooks,
            served,
        } = match warm(binding, Exports::hooks) {
            Some(warm) => warm,
            None => {
                let mut store = self.store(plugin, binding, exchange.request.account);
                match pre.instantiate_async(&mut store).await {
                    Ok(hooks) => Warm {
                        store,
                        exports: hooks,
                        served: 0,
                    },
                    Err(e) => {
                        let reason = self.record(plugin, source, started, Some(&e)).err().unwrap_or_default();
                        return Err(Box::new((Some(exchange), reason)));
                    }
                }
            }
        };
        let Exchange {
            request,
            response,
            body: kept_body,
        } = exchange;
        let table = &mut store.data_mut().table;
        let request_rep = match table.push(request) {
            Ok(handle) => handle.rep(),
            Err(e) => return Err(Box::new((None, format!("resource table: {e}")))),
        };
        let response_rep = match response.map(|r| table.push(r)).transpose() {
            Ok(handle) => handle.map(|h| h.rep()),
            Err(e) => return Err(Box::new((None, format!("resource table: {e}")))),
        };
        let req = || Resource::new_borrow(request_rep);
        let result = match (phase, response_rep) {
            (Phase::RequestHeaders, _) => hooks.call_on_request_headers(&mut store, req()).await.map(Raw::Action),
            (Phase::RequestBody, _) => hooks
                .call_on_request_body(&mut store, req(), &body)
                .await
                .map(Raw::Body),
            (Phase::ResponseHeaders, Some(rep)) => hooks
                .call_on_response_headers(&mut store, req(), Resource::new_borrow(rep))
                .await
                .map(Raw::Action),
            (Phase::ResponseBody, Some(rep)) => hooks
                .call_on_response_body(&mut store, req(), Resource::new_borrow(rep), &body)
                .await
                .map(Raw::Body),
            (Phase::Log(entry), _) => hooks
                .call_on_log(&mut store, req(), entry)
                .await
                .map(|()| Raw::Action(types::Action::Continue)),
            _ => Err(wasmtime::Error::msg("a response hook needs the response")),
        };
        // Take the exchange back whatever happened, so a fail-open binding can still forward it.
        let table = &mut store.data_mut().table;
        let request = table.delete(Resource::<PluginRequest>::new_own(request_rep)).ok();
        let response = response_rep.and_then(|rep| table.delete(Resource::<PluginResponse>::new_own(rep)).ok());
        let back = request.map(|request| Exchange {
            request,
            response,
            body: kept_body,
        });
        let recorded = self.record(plugin, source, started, result.as_ref().err());
        // An instance that failed (trap, deadline, limit) may be in any state: never reused.
        if result.is_ok() {
            self.keep_warm(binding, store, Exports::Hooks(hooks), served);
        }
        let raw = match (result, back) {
            (Ok(raw), Some(back)) => (raw, back),
            (Ok(_), None) => return Err(Box::new((None, "the request resource was lost".into()))),
            (Err(_), back) => return Err(Box::new((back, recorded.err().unwrap_or_default()))),
        };
        let decided = match raw.0 {
            Raw::Action(types::Action::Continue) | Raw::Body(types::BodyAction::Continue) => Ok(Decision::Continue),
            Raw::Action(types::Action::Respond(r)) | Raw::Body(types::BodyAction::Respond(r)) => {
                plugin_response(r).map(Decision::Respond)
            }
            Raw::Body(types::BodyAction::Replace(body)) if body.len() > MAX_HOOK_BODY => {
                Err(format!("a replaced body is over {MAX_HOOK_BODY} bytes"))
            }
            Raw::Body(types::BodyAction::Replace(body)) => Ok(Decision::Replace(Bytes::from(body))),
        };
        match decided {
            Ok(decision) => Ok((raw.1, decision)),
            Err(reason) => Err(Box::new((Some(raw.1), reason))),
        }
    }
}

/// What a call holds while wasm may run: an instance slot, and the epoch ticking.
struct CallSlot<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
    _running: Running,
}

/// A hook's answer as the guest gave it.
enum Raw {
    Action(types::Action),
    Body(types::BodyAction),
}

/// A kept instance of a reuse-mode `binding` with the exports `pick` takes, armed with the
/// binding's deadline.
fn warm<E>(binding: &Binding, pick: impl FnOnce(Exports) -> Option<E>) -> Option<Warm<E>> {
    if binding.reuse == 0 {
        return None;
    }
    let Warm {
        mut store,
        exports,
        served,
    } = binding.warm.take()?;
    arm_deadline(&mut store, binding);
    Some(Warm {
        store,
        exports: pick(exports)?,
        served,
    })
}

/// Give the next call the binding's deadline (1–100 ms, in epoch ticks of 1 ms). The call yields
/// to the runtime at every tick and traps once it has run for that many: ticks that pass while
/// it waits to be polled again do not count, as the deadline is re-armed one tick ahead on each.
fn arm_deadline(store: &mut Store<HostState>, binding: &Binding) {
    let mut ticks_left = binding
        .deadline_ms
        .unwrap_or(DEFAULT_DEADLINE.as_millis() as u64)
        .clamp(1, 100);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        ticks_left -= 1;
        if ticks_left == 0 {
            return Err(wasmtime::Trap::Interrupt.into());
        }
        Ok(wasmtime::UpdateDeadline::Yield(1))
    });
}

fn describe_trap(e: &wasmtime::Error) -> String {
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => "deadline exceeded".into(),
        Some(trap) => format!("trapped: {trap}"),
        None => format!("{e:#}"),
    }
}

fn plugin_response(response: types::Response) -> Result<Response<Full<Bytes>>, String> {
    let status = StatusCode::from_u16(response.status).map_err(|_| format!("invalid status {}", response.status))?;
    if response.body.len() > MAX_RESPONSE_BODY {
        return Err(format!("response body over {MAX_RESPONSE_BODY} bytes"));
    }
    let mut out = Response::new(Full::new(Bytes::from(response.body)));
    *out.status_mut() = status;
    if response.headers.len() > MAX_PLUGIN_HEADERS {
        return Err(format!("more than {MAX_PLUGIN_HEADERS} response headers"));
    }
    for (name, value) in response.headers {
        let (name, value) = header(&name, &value)?;
        out.headers_mut().append(name, value);
    }
    Ok(out)
}

/// Headers that frame the message or route it: the edge checked them before the chain ran (one
/// Host, consistent Content-Length and Transfer-Encoding) or sets them itself, so plugins may
/// not change them (in requests and responses alike).
const PROTECTED_HEADERS: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
];

fn is_protected(name: &str) -> bool {
    PROTECTED_HEADERS.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// Every value of a header.
fn header_values(headers: &HeaderMap, name: &str) -> Vec<Vec<u8>> {
    headers.get_all(name).iter().map(|v| v.as_bytes().to_vec()).collect()
}

fn header_entries(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

/// Set (or with `append`, add) a header a plugin gave, unless it is protected or one too many.
fn edit_header(headers: &mut HeaderMap, name: &str, value: &[u8], append: bool) -> Result<(), String> {
    if is_protected(name) {
        return Err(format!("the {name} header is managed by the edge"));
    }
    let (name, value) = header(name, value)?;
    if headers.len() >= MAX_PLUGIN_HEADERS && (append || !headers.contains_key(&name)) {
        return Err(format!("at most {MAX_PLUGIN_HEADERS} headers"));
    }
    if append {
        headers.append(name, value);
    } else {
        headers.insert(name, value);
    }
    Ok(())
}

fn remove_header(headers: &mut HeaderMap, name: &str, plugin: &str) {
    if is_protected(name) {
        tracing::debug!(plugin, "refused to remove the {name} header");
        return;
    }
    headers.remove(name);
}

/// A header a plugin gave, checked.
fn header(name: &str, value: &[u8]) -> Result<(HeaderName, HeaderValue), String> {
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {name:?}"))?;
    let value = HeaderValue::from_bytes(value).map_err(|_| format!("invalid value for header {name}"))?;
    Ok((name, value))
}

/// The guest sees the request as `types::Request`; the table holds our `PluginRequest` under the
/// same handle number.
fn ours(handle: &Resource<types::Request>) -> Resource<PluginRequest> {
    Resource::new_borrow(handle.rep())
}

impl HostState {
    fn request(&self, handle: &Resource<types::Request>) -> Option<&PluginRequest> {
        self.table.get(&ours(handle)).ok()
    }
}

impl types::HostRequest for HostState {
    fn method(&mut self, req: Resource<types::Request>) -> String {
        self.request(&req).map(|r| r.method.to_string()).unwrap_or_default()
    }

    fn authority(&mut self, req: Resource<types::Request>) -> String {
        self.request(&req).map(|r| r.authority.clone()).unwrap_or_default()
    }

    fn path(&mut self, req: Resource<types::Request>) -> String {
        let Some(r) = self.request(&req) else {
            return String::new();
        };
        r.path_and_query
            .split_once('?')
            .map_or(r.path_and_query.as_str(), |(p, _)| p)
            .to_owned()
    }

    fn query(&mut self, req: Resource<types::Request>) -> Option<String> {
        let r = self.request(&req)?;
        r.path_and_query.split_once('?').map(|(_, q)| q.to_owned())
    }

    fn header(&mut self, req: Resource<types::Request>, name: String) -> Vec<Vec<u8>> {
        self.request(&req)
            .map(|r| header_values(&r.headers, &name))
            .unwrap_or_default()
    }

    fn set_header(&mut self, req: Resource<types::Request>, name: String, value: Vec<u8>) -> Result<(), String> {
        let r = self.table.get_mut(&ours(&req)).map_err(|e| e.to_string())?;
        edit_header(&mut r.headers, &name, &value, false)
    }

    fn append_header(&mut self, req: Resource<types::Request>, name: String, value: Vec<u8>) -> Result<(), String> {
        let r = self.table.get_mut(&ours(&req)).map_err(|e| e.to_string())?;
        edit_header(&mut r.headers, &name, &value, true)
    }

    fn set_path_with_query(&mut self, req: Resource<types::Request>, path_with_query: String) -> Result<(), String> {
        if path_with_query.len() > MAX_PATH {
            return Err(format!("path over {MAX_PATH} bytes"));
        }
        // PathAndQuery stops checking at `#`, so refuse one outright; what goes down the tunnel is
        // the parsed form.
        if !path_with_query.starts_with('/') || path_with_query.contains('#') {
            return Err(format!("{path_with_query:?} must start with / and hold no #fragment"));
        }
        let parsed = http::uri::PathAndQuery::try_from(path_with_query.as_str())
            .map_err(|_| format!("{path_with_query:?} is not a valid path"))?;
        let r = self.table.get_mut(&ours(&req)).map_err(|e| e.to_string())?;
        r.path_and_query = parsed.as_str().to_owned();
        Ok(())
    }

    fn remove_header(&mut self, req: Resource<types::Request>, name: String) {
        let plugin = self.plugin.clone();
        if let Ok(r) = self.table.get_mut(&ours(&req)) {
            remove_header(&mut r.headers, &name, &plugin);
        }
    }

    fn entries(&mut self, req: Resource<types::Request>) -> Vec<(String, Vec<u8>)> {
        self.request(&req)
            .map(|r| header_entries(&r.headers))
            .unwrap_or_default()
    }

    fn client_addr(&mut self, req: Resource<types::Request>) -> String {
        self.request(&req)
            .map(|r| r.client_addr.ip().to_string())
            .unwrap_or_default()
    }

    fn request_id(&mut self, req: Resource<types::Request>) -> String {
        self.request(&req).map(|r| r.request_id.clone()).unwrap_or_default()
    }

    fn route(&mut self, req: Resource<types::Request>) -> String {
        self.request(&req).map(|r| r.route.clone()).unwrap_or_default()
    }

    fn drop(&mut self, _req: Resource<types::Request>) -> wasmtime::Result<()> {
        // Only ever lent to the guest: the host takes it back after the call.
        Ok(())
    }
}

/// The guest's handle of the response head, as our `PluginResponse` (as [`ours`] for requests).
fn ours_response(handle: &Resource<types::ResponseHead>) -> Resource<PluginResponse> {
    Resource::new_borrow(handle.rep())
}

impl types::HostResponseHead for HostState {
    fn status(&mut self, resp: Resource<types::ResponseHead>) -> u16 {
        self.table.get(&ours_response(&resp)).map_or(0, |r| r.status.as_u16())
    }

    fn set_status(&mut self, resp: Resource<types::ResponseHead>, status: u16) -> Result<(), String> {
        // 204 and 304 have no body by definition: the body already framed would be wrong.
        let status = StatusCode::from_u16(status)
            .ok()
            .filter(|s| (200..=599).contains(&s.as_u16()))
            .filter(|s| !matches!(*s, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED))
            .ok_or_else(|| format!("{status} is not a status a plugin may set (200-599, not 204 or 304)"))?;
        let r = self.table.get_mut(&ours_response(&resp)).map_err(|e| e.to_string())?;
        r.status = status;
        Ok(())
    }

    fn header(&mut self, resp: Resource<types::ResponseHead>, name: String) -> Vec<Vec<u8>> {
        let r = self.table.get(&ours_response(&resp));
        r.map(|r| header_values(&r.headers, &name)).unwrap_or_default()
    }

    fn set_header(&mut self, resp: Resource<types::ResponseHead>, name: String, value: Vec<u8>) -> Result<(), String> {
        let r = self.table.get_mut(&ours_response(&resp)).map_err(|e| e.to_string())?;
        edit_header(&mut r.headers, &name, &value, false)
    }

    fn append_header(
        &mut self,
        resp: Resource<types::ResponseHead>,
        name: String,
        value: Vec<u8>,
    ) -> Result<(), String> {
        let r = self.table.get_mut(&ours_response(&resp)).map_err(|e| e.to_string())?;
        edit_header(&mut r.headers, &name, &value, true)
    }

    fn remove_header(&mut self, resp: Resource<types::ResponseHead>, name: String) {
        let plugin = self.plugin.clone();
        if let Ok(r) = self.table.get_mut(&ours_response(&resp)) {
            remove_header(&mut r.headers, &name, &plugin);
        }
    }

    fn entries(&mut self, resp: Resource<types::ResponseHead>) -> Vec<(String, Vec<u8>)> {
        let r = self.table.get(&ours_response(&resp));
        r.map(|r| header_entries(&r.headers)).unwrap_or_default()
    }

    fn drop(&mut self, _resp: Resource<types::ResponseHead>) -> wasmtime::Result<()> {
        // Only ever lent to the guest, like the request.
        Ok(())
    }
}

impl types::Host for HostState {}

impl crypto::Host for HostState {
    fn verify_signature(
        &mut self,
        algorithm: crypto::SignatureAlgorithm,
        key: crypto::PublicKey,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> bool {
        crate::plugins::crypto::verify(algorithm, &key, &message, &signature)
    }
}

impl wit_metrics::Host for HostState {
    fn counter_add(&mut self, name: String, delta: u64) {
        let counted = self.own_metrics.as_ref().is_some_and(|m| m.counter_add(&name, delta));
        self.refused_metric(counted, &name);
    }

    fn histogram_observe(&mut self, name: String, value: f64) {
        let recorded = self.own_metrics.as_ref().is_some_and(|m| m.observe(&name, value));
        self.refused_metric(recorded, &name);
    }
}

impl HostState {
    fn refused_metric(&mut self, ok: bool, name: &str) {
        if !ok && self.own_metrics.is_some() && !self.metric_refused {
            self.metric_refused = true;
            let name: String = name.chars().take(80).collect();
            tracing::warn!(
                plugin = %self.plugin,
                "metric {name:?} ignored: names are letters, digits and _ (at most 64), at most {MAX_OWN_METRICS} per plugin"
            );
        }
    }
}

/// WASI with nothing in it: no files, no environment, no sockets, no name lookups.
fn empty_wasi() -> WasiCtx {
    WasiCtx::builder()
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(empty_wasi),
            table: &mut self.table,
        }
    }
}

impl wit_host::Host for HostState {
    fn log(&mut self, level: wit_host::Level, message: String) {
        let message: String = message.chars().take(4096).collect();
        match level {
            wit_host::Level::Debug => tracing::debug!(plugin = %self.plugin, "{message}"),
            wit_host::Level::Info => tracing::info!(plugin = %self.plugin, "{message}"),
            wit_host::Level::Warn => tracing::warn!(plugin = %self.plugin, "{message}"),
            wit_host::Level::Error => tracing::error!(plugin = %self.plugin, "{message}"),
        }
    }

    fn config(&mut self) -> String {
        self.config.clone()
    }
}

impl HostState {
    /// Run `op` on this plugin's key-value space for the request's account.
    fn kv<R>(&mut self, op: impl FnOnce(&mut Space, Instant) -> R) -> R {
        let space = self
            .space
            .get_or_insert_with(|| self.kv.space(self.account, &self.space_name))
            .clone();
        // A panic while holding the lock cannot leave a space half-updated in a way that
        // matters more than losing it: recover the guard.
        let mut guard = space.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        op(&mut guard, Instant::now())
    }
}

impl wit_kv::Host for HostState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        self.kv(|space, now| space.get(&key, now))
    }

    fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: u32) -> Result<(), String> {
        self.kv(|space, now| space.set(key, value, ttl_ms, now))
    }

    fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: u32,
    ) -> Result<bool, String> {
        self.kv(|space, now| space.compare_and_swap(key, expected.as_deref(), value, ttl_ms, now))
    }

    fn increment(&mut self, key: String, delta: i64, ttl_ms: u32) -> Result<i64, String> {
        self.kv(|space, now| space.increment(key, delta, ttl_ms, now))
    }

    fn delete(&mut self, key: String) {
        self.kv(|space, _| space.delete(&key));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    /// `on-log` calls beyond [`MAX_PENDING_LOGS`] waiting are dropped and counted: a burst of
    /// logged responses cannot queue without bound.
    #[tokio::test]
    async fn on_log_calls_past_the_backlog_are_dropped_and_counted() {
        let host = Arc::new(PluginHost::new().unwrap());
        let request = || PluginRequest {
            method: Method::GET,
            authority: "a.test".into(),
            path_and_query: "/".into(),
            headers: HeaderMap::new(),
            client_addr: ([127, 0, 0, 1], 1).into(),
            request_id: "r".into(),
            route: "a.test".into(),
            account: AccountId(uuid::Uuid::nil()),
        };
        let entry = LogEntry {
            status: 200,
            bytes_sent: 0,
            duration_us: 1,
            completed: true,
        };
        let held: Vec<_> = (0..MAX_PENDING_LOGS)
            .map(|_| host.pending_logs.clone().try_acquire_owned().unwrap())
            .collect();
        host.spawn_log(Arc::from(Vec::new()), request(), entry);
        assert_eq!(host.metrics.logs_dropped(), 1);
        drop(held);
        host.spawn_log(Arc::from(Vec::new()), request(), entry);
        assert_eq!(host.metrics.logs_dropped(), 1, "room again once the backlog drains");
    }
}
