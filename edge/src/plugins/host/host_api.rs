//! What plugins import from the edge (`wit/plugin.wit`): the request and response handles,
//! host logging and config, metrics, crypto, kv; and the headers they may not touch.

use super::*;

pub(super) struct HostState {
    pub(super) table: ResourceTable,
    /// WASI with nothing in it: no files, no environment, no sockets. Rust guests built for
    /// wasm32-wasip2 import WASI for their standard library (panics, clocks, randomness).
    /// Built on first use: most hook calls never touch WASI, and building it (random generators,
    /// clocks, stdio) is a measurable part of a fresh instance's cost.
    pub(super) wasi: Option<WasiCtx>,
    pub(super) limits: StoreLimits,
    pub(super) plugin: Arc<str>,
    pub(super) space_name: Arc<str>,
    pub(super) own_metrics: Option<Arc<OwnMetrics>>,
    /// A refused metric name was logged (once per instance).
    pub(super) metric_refused: bool,
    pub(super) config: String,
    pub(super) account: AccountId,
    pub(super) kv: Arc<KvStores>,
    /// This plugin's space for `account`, looked up on first use.
    pub(super) space: Option<Arc<std::sync::Mutex<Space>>>,
}

/// Headers that frame the message or route it: the edge checked them before the chain ran (one
/// Host, consistent Content-Length and Transfer-Encoding) or sets them itself, so plugins may
/// not change them (in requests and responses alike).
pub(super) const PROTECTED_HEADERS: [&str; 9] = [
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

pub(super) fn is_protected(name: &str) -> bool {
    PROTECTED_HEADERS.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// Every value of a header.
pub(super) fn header_values(headers: &HeaderMap, name: &str) -> Vec<Vec<u8>> {
    headers.get_all(name).iter().map(|v| v.as_bytes().to_vec()).collect()
}

pub(super) fn header_entries(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

/// Set (or with `append`, add) a header a plugin gave, unless it is protected or one too many.
pub(super) fn edit_header(headers: &mut HeaderMap, name: &str, value: &[u8], append: bool) -> Result<(), String> {
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

pub(super) fn remove_header(headers: &mut HeaderMap, name: &str, plugin: &str) {
    if is_protected(name) {
        tracing::debug!(plugin, "refused to remove the {name} header");
        return;
    }
    headers.remove(name);
}

/// A header a plugin gave, checked.
pub(super) fn header(name: &str, value: &[u8]) -> Result<(HeaderName, HeaderValue), String> {
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {name:?}"))?;
    let value = HeaderValue::from_bytes(value).map_err(|_| format!("invalid value for header {name}"))?;
    Ok((name, value))
}

/// The guest sees the request as `types::Request`; the table holds our `PluginRequest` under the
/// same handle number.
pub(super) fn ours(handle: &Resource<types::Request>) -> Resource<PluginRequest> {
    Resource::new_borrow(handle.rep())
}

impl HostState {
    pub(super) fn request(&self, handle: &Resource<types::Request>) -> Option<&PluginRequest> {
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
pub(super) fn ours_response(handle: &Resource<types::ResponseHead>) -> Resource<PluginResponse> {
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
    pub(super) fn refused_metric(&mut self, ok: bool, name: &str) {
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
pub(super) fn empty_wasi() -> WasiCtx {
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
    pub(super) fn kv<R>(&mut self, op: impl FnOnce(&mut Space, Instant) -> R) -> R {
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
