//! Running a chain: the hooks of a phase in order, on-log in the background, a balancer's pick;
//! each call in a fresh (or warm) store with its deadline, its memory cap and the breaker.

use super::host_api::header;
use super::reuse::warm;
use super::*;

impl PluginHost {
    /// Wait for an instance slot of the pooling allocator; held until dropped. Wasm runs only
    /// under a slot, so the slot also keeps the epoch ticking.
    pub(super) async fn slot(&self) -> Option<CallSlot<'_>> {
        // The semaphore is never closed, so this always holds a permit.
        let permit = self.slots.acquire().await.ok()?;
        Some(CallSlot {
            _permit: permit,
            _running: self.ticker.running(),
        })
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
    pub(super) fn plugin_for<'a>(&'a self, binding: &'a Binding) -> Result<&'a LoadedPlugin, String> {
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

    /// `Some(reason)` when the plugin is tripped and this call should not run it.
    pub(super) fn tripped(&self, plugin: &LoadedPlugin) -> Option<String> {
        let Err(reason) = plugin.breaker.admit(Instant::now()) else {
            return None;
        };
        plugin.metrics.record(CallResult::Tripped, None);
        Some(reason)
    }

    /// Count a call for the client at `source` that started at `started`, in the metrics and the
    /// plugin's breaker; a failure becomes its reason.
    pub(super) fn record(
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
    pub(super) fn store(&self, plugin: &LoadedPlugin, binding: &Binding, account: AccountId) -> Store<HostState> {
        let mut store = self.new_store(plugin.name.clone(), plugin.space.clone(), binding, account);
        store.data_mut().own_metrics = Some(plugin.own_metrics.clone());
        store
    }

    pub(super) fn new_store(
        &self,
        name: Arc<str>,
        space: Arc<str>,
        binding: &Binding,
        account: AccountId,
    ) -> Store<HostState> {
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
    pub(super) async fn call(
        &self,
        plugin: &LoadedPlugin,
        binding: &Binding,
        exchange: Exchange,
        phase: Phase,
    ) -> Result<(Exchange, Decision), Box<CallFailure>> {
        let body = exchange.body.clone().unwrap_or_default();
        let pre = match self.may_call(plugin, phase, body.len()) {
            Ok(pre) => pre,
            Err(reason) => return Err(Box::new((Some(exchange), reason))),
        };
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
        match decide(raw.0) {
            Ok(decision) => Ok((raw.1, decision)),
            Err(reason) => Err(Box::new((Some(raw.1), reason))),
        }
    }

    /// The hooks of `plugin`, or why they cannot run now: a balancer bound to a route, a
    /// tripped breaker, or a body over what the plugin declared it reads.
    fn may_call<'p>(
        &self,
        plugin: &'p LoadedPlugin,
        phase: Phase,
        body_len: usize,
    ) -> Result<&'p bindings::PluginPre<HostState>, String> {
        let World::Hooks(pre) = &plugin.world else {
            return Err("is a balancer: bind it to a pool (steering: plugin), not to a route".into());
        };
        if let Some(reason) = self.tripped(plugin) {
            return Err(reason);
        }
        let limit = match phase {
            Phase::RequestBody => plugin.declared.request_body,
            Phase::ResponseBody => plugin.declared.response_body,
            _ => None,
        };
        match limit.filter(|limit| body_len > *limit) {
            Some(limit) => Err(format!(
                "the body ({body_len} bytes) is over the {limit} bytes this plugin reads"
            )),
            None => Ok(pre),
        }
    }
}

/// What a hook's answer means for the exchange.
fn decide(raw: Raw) -> Result<Decision, String> {
    match raw {
        Raw::Action(types::Action::Continue) | Raw::Body(types::BodyAction::Continue) => Ok(Decision::Continue),
        Raw::Action(types::Action::Respond(r)) | Raw::Body(types::BodyAction::Respond(r)) => {
            plugin_response(r).map(Decision::Respond)
        }
        Raw::Body(types::BodyAction::Replace(body)) if body.len() > MAX_HOOK_BODY => {
            Err(format!("a replaced body is over {MAX_HOOK_BODY} bytes"))
        }
        Raw::Body(types::BodyAction::Replace(body)) => Ok(Decision::Replace(Bytes::from(body))),
    }
}

/// What a call holds while wasm may run: an instance slot, and the epoch ticking.
pub(super) struct CallSlot<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
    _running: Running,
}

/// A hook's answer as the guest gave it.
pub(super) enum Raw {
    Action(types::Action),
    Body(types::BodyAction),
}

/// Give the next call the binding's deadline (1–100 ms, in epoch ticks of 1 ms). The call yields
/// to the runtime at every tick and traps once it has run for that many: ticks that pass while
/// it waits to be polled again do not count, as the deadline is re-armed one tick ahead on each.
pub(super) fn arm_deadline(store: &mut Store<HostState>, binding: &Binding) {
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

pub(super) fn describe_trap(e: &wasmtime::Error) -> String {
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => "deadline exceeded".into(),
        Some(trap) => format!("trapped: {trap}"),
        None => format!("{e:#}"),
    }
}

pub(super) fn plugin_response(response: types::Response) -> Result<Response<Full<Bytes>>, String> {
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
