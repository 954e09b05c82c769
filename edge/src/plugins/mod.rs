//! WebAssembly plugins (wasmtime components against `wit/plugin.wit`): the host that runs them
//! per request, and what it gives them.
//!
//! - [`binding`]: a plugin bound to a route or pool; [`version`]: an uploaded version.
//! - [`host`]: compile, link, instantiate per request (or reuse), call the hooks, enforce limits.
//! - [`breaker`]: stop running a plugin that fails for everyone.
//! - [`kv`], [`crypto`]: the key-value store and signature checks plugins import.
//! - [`ticker`]: the epoch clock behind every call's deadline.

pub mod binding;
pub mod breaker;
pub mod crypto;
pub mod host;
pub mod kv;
pub mod ticker;
pub mod version;
