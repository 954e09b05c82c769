//! `burrow-plugin`: write Burrow edge plugins in Rust.
//!
//! A plugin implements [`Plugin`] (every hook has a default) or [`Balancer`], and exports itself
//! with [`export_plugin!`] or [`export_balancer!`]. `cargo build --release --target
//! wasm32-wasip2` then produces the component the edge loads.
//!
//! ```ignore
//! use burrow_plugin::{Action, Plugin, Request};
//!
//! struct AddHeader;
//!
//! impl Plugin for AddHeader {
//!     fn on_request_headers(req: &Request) -> Action {
//!         let _ = req.set_header("x-served-by", b"burrow");
//!         Action::Continue
//!     }
//! }
//!
//! burrow_plugin::export_plugin!(AddHeader);
//! ```

use std::any::Any;
use std::cell::RefCell;
use std::rc::Rc;

/// Bindings of the `plugin` world (request hooks), generated from `wit/plugin.wit`.
pub mod hooks {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "plugin",
        pub_export_macro: true,
        default_bindings_module: "burrow_plugin::hooks",
    });
}

/// Bindings of the `balancer` world (`select-origin`), sharing the types of [`hooks`].
pub mod balancer {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "balancer",
        with: {
            "burrow:plugin/types@0.2.0": crate::hooks::burrow::plugin::types,
            "burrow:plugin/host@0.2.0": crate::hooks::burrow::plugin::host,
            "burrow:plugin/kv@0.2.0": crate::hooks::burrow::plugin::kv,
            "burrow:plugin/metrics@0.2.0": crate::hooks::burrow::plugin::metrics,
            "burrow:plugin/crypto@0.2.0": crate::hooks::burrow::plugin::crypto,
        },
        pub_export_macro: true,
        default_bindings_module: "burrow_plugin::balancer",
    });
}

/// Public-key signature checks (RSA, ECDSA, Ed25519) done natively by the edge: far faster than
/// the same in wasm.
pub use hooks::burrow::plugin::crypto;
pub use hooks::burrow::plugin::host::Level;
/// The key-value store shared by every call of this plugin for the route's account on this edge
/// (see `interface kv` in wit/plugin.wit for its limits).
pub use hooks::burrow::plugin::kv;
/// Counters and histograms of this plugin, on the edge's `/metrics` (see `interface metrics` in
/// wit/plugin.wit for the naming rules).
pub use hooks::burrow::plugin::metrics;
pub use hooks::burrow::plugin::types::{
    Action, BodyAction, Candidate, HookSet, Hooks, LogEntry, Request, Response, ResponseHead,
};

/// Request and response hooks. Each has a default that lets the request through unchanged; the
/// edge calls a hook beyond [`Plugin::on_request_headers`] only if [`Plugin::hooks`] lists it.
pub trait Plugin {
    /// Which hooks this plugin implements beyond `on_request_headers`, and the largest bodies
    /// (at most 4 MiB) the edge should buffer for the body hooks. Default: none.
    fn hooks() -> Hooks {
        Hooks {
            hooks: HookSet::empty(),
            max_request_body: 0,
            max_response_body: 0,
        }
    }

    /// After the route is found, before anything goes down the tunnel: check the request,
    /// change its headers, or answer it with [`respond`].
    fn on_request_headers(_req: &Request) -> Action {
        Action::Continue
    }

    /// With `HookSet::REQUEST_BODY`: the whole request body, after `on_request_headers` of the
    /// chain. Keep it, replace it, or answer.
    fn on_request_body(_req: &Request, _body: Vec<u8>) -> BodyAction {
        BodyAction::Continue
    }

    /// With `HookSet::RESPONSE_HEADERS`: the origin's response head. Change its status or
    /// headers, or answer with another response ([`respond`]).
    fn on_response_headers(_req: &Request, _resp: &ResponseHead) -> Action {
        Action::Continue
    }

    /// With `HookSet::RESPONSE_BODY`: the whole response body. Keep it, replace it, or answer.
    fn on_response_body(_req: &Request, _resp: &ResponseHead, _body: Vec<u8>) -> BodyAction {
        BodyAction::Continue
    }

    /// With `HookSet::LOG`: after the visitor got the response (or it was cut short). Runs
    /// beside the request, not in its way; what it does cannot change the response.
    fn on_log(_req: &Request, _entry: LogEntry) {}
}

/// A pool's origin picker.
pub trait Balancer {
    /// The `index` of the candidate that should serve `req`, or `None` to let the edge choose
    /// (weighted random among healthy origins).
    fn select_origin(req: &Request, candidates: Vec<Candidate>) -> Option<u32>;
}

impl<T: Plugin> hooks::Guest for T {
    fn hooks() -> Hooks {
        T::hooks()
    }

    fn on_request_headers(req: &Request) -> Action {
        T::on_request_headers(req)
    }

    fn on_request_body(req: &Request, body: Vec<u8>) -> BodyAction {
        T::on_request_body(req, body)
    }

    fn on_response_headers(req: &Request, resp: &ResponseHead) -> Action {
        T::on_response_headers(req, resp)
    }

    fn on_response_body(req: &Request, resp: &ResponseHead, body: Vec<u8>) -> BodyAction {
        T::on_response_body(req, resp, body)
    }

    fn on_log(req: &Request, entry: LogEntry) {
        T::on_log(req, entry)
    }
}

impl<T: Balancer> balancer::Guest for T {
    fn select_origin(req: &Request, candidates: Vec<Candidate>) -> Option<u32> {
        T::select_origin(req, candidates)
    }
}

/// Export a [`Plugin`] as the component's request hooks.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ident) => {
        $crate::hooks::export!($plugin with_types_in $crate::hooks);
    };
}

/// Export a [`Balancer`] as the component's `select-origin`.
#[macro_export]
macro_rules! export_balancer {
    ($balancer:ident) => {
        $crate::balancer::export!($balancer with_types_in $crate::balancer);
    };
}

/// The binding's configuration, parsed as JSON. An empty configuration parses as `{}`.
pub fn config<T: serde::de::DeserializeOwned>() -> Result<T, String> {
    let text = hooks::burrow::plugin::host::config();
    let text = if text.trim().is_empty() { "{}" } else { text.as_str() };
    serde_json::from_str(text).map_err(|e| format!("bad config: {e}"))
}

/// [`config`], with a bad configuration logged as an error and given as `None` (for hooks that
/// have a safe default, like a balancer letting the edge choose).
pub fn config_or_log<T: serde::de::DeserializeOwned>() -> Option<T> {
    config().map_err(|e| log(Level::Error, &e)).ok()
}

/// The binding's configuration turned into `T` by `build`, kept for the next call while the
/// configuration text stays the same. Each request runs in a fresh instance by default, so this
/// saves work (keys decoded, patterns compiled) only for bindings in reuse mode.
pub fn cached_config<T: 'static>(build: impl FnOnce(&str) -> Result<T, String>) -> Result<Rc<T>, String> {
    thread_local! {
        static CACHE: RefCell<Option<(String, Rc<dyn Any>)>> = const { RefCell::new(None) };
    }
    let text = hooks::burrow::plugin::host::config();
    let hit = CACHE.with_borrow(|cache| {
        let (cached_text, value) = cache.as_ref()?;
        (*cached_text == text).then(|| value.clone().downcast::<T>().ok())?
    });
    if let Some(value) = hit {
        return Ok(value);
    }
    let value = Rc::new(build(&text)?);
    CACHE.set(Some((text, value.clone())));
    Ok(value)
}

/// Write to the edge's log, tagged with the plugin's name.
pub fn log(level: Level, message: &str) {
    hooks::burrow::plugin::host::log(level, message);
}

/// Answer the visitor now with `status` and a plain-text body; the origin never sees the request.
pub fn respond(status: u16, message: &str) -> Action {
    respond_with(
        status,
        vec![("content-type".into(), b"text/plain; charset=utf-8".to_vec())],
        message,
    )
}

/// Like [`respond`], with headers of your own (add a `content-type`).
pub fn respond_with(status: u16, headers: Vec<(String, Vec<u8>)>, message: &str) -> Action {
    Action::Respond(Response {
        status,
        headers,
        body: format!("{message}\n").into_bytes(),
    })
}

/// A header hook's answer as a body hook's: `respond(…).into()` in `on-request-body`.
impl From<Action> for BodyAction {
    fn from(action: Action) -> Self {
        match action {
            Action::Continue => BodyAction::Continue,
            Action::Respond(response) => BodyAction::Respond(response),
        }
    }
}

impl Request {
    /// The first value of a header, if it is valid UTF-8.
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name)
            .into_iter()
            .next()
            .and_then(|v| String::from_utf8(v).ok())
    }

    /// The value of a cookie sent with the request.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.header("cookie").iter().find_map(|line| {
            let line = std::str::from_utf8(line).ok()?;
            line.split(';').find_map(|pair| {
                let (key, value) = pair.trim().split_once('=')?;
                (key == name).then(|| value.to_owned())
            })
        })
    }

    /// A query parameter's value, as sent (not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.query()?;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then(|| value.to_owned())
        })
    }
}
