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

mod artifacts;
mod chain;
mod host_api;
mod reuse;

pub use artifacts::{MAX_UPLOADS_WAITING, UploadBusy, UploadTurn};
use host_api::HostState;
pub use reuse::WarmInstances;
use reuse::{Exports, Warm};

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
    /// Compiling takes a core for up to seconds: one at a time for route tables...
    compiles: tokio::sync::Semaphore,
    /// ...and, apart from those (an account uploading in a loop never delays a route change),
    /// one at a time for uploads: one per account, [`MAX_UPLOADS_WAITING`] in all.
    upload_turn: tokio::sync::Semaphore,
    uploading: std::sync::Mutex<std::collections::HashSet<AccountId>>,
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
            upload_turn: tokio::sync::Semaphore::new(1),
            uploading: Default::default(),
            buffered: Arc::default(),
            ticker,
            slots: Arc::new(tokio::sync::Semaphore::new(slots as usize)),
            pending_logs: Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_LOGS)),
            warm_idle: Arc::new(AtomicUsize::new(0)),
            kv: Default::default(),
            metrics: Default::default(),
        })
    }

    /// Keep compiled uploaded plugins in `dir`, so a restart does not compile them again.
    pub fn set_cache_dir(&mut self, dir: PathBuf) {
        self.cache_dir = Some(dir);
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

    /// Whether `name` is an operator plugin and a balancer (`Some(true)`) or request hooks
    /// (`Some(false)`).
    pub fn is_balancer(&self, name: &str) -> Option<bool> {
        self.plugins.get(name).map(|p| p.kind() == PluginKind::Balancer)
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
