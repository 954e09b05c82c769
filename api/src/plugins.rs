//! Plugins: a binding of one to a route or pool, and the uploaded versions an account has.

use burrow_protocol::AccountId;
use serde::{Deserialize, Serialize};

/// Plugins one route may bind.
pub const MAX_PLUGINS_PER_ROUTE: usize = 16;
/// Bytes of one binding's configuration.
pub const MAX_PLUGIN_CONFIG: usize = 64 * 1024;

/// A plugin bound to a route: which plugin, its configuration, and what a failure does.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PluginBinding {
    pub plugin: String,
    /// The uploaded version this binding runs (pinned when bound); `None`: a plugin the
    /// operator loads with `burrow-edge run --plugin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Handed to the plugin as-is (usually JSON).
    #[serde(default)]
    pub config: String,
    /// On a trap or timeout, forward the request anyway instead of failing it.
    #[serde(default)]
    pub fail_open: bool,
    /// Deadline per hook call in milliseconds (default 5, at most 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Serve up to this many requests with one instance, one request at a time (0, the
    /// default: a fresh instance per request). The plugin's memory then carries over between
    /// this route's requests; an instance that fails is never reused.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reuse: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Which world a component implements: request hooks (bound to routes) or `select-origin`
/// (bound to pools).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    Hooks,
    Balancer,
}

/// One uploaded version of a plugin (the component itself is stored apart, in chunks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginVersion {
    pub account: AccountId,
    pub name: String,
    pub version: u32,
    /// Hex SHA-256 of the component.
    pub sha256: String,
    pub size: usize,
    pub kind: PluginKind,
    pub created: u64,
}

impl PluginVersion {
    /// Whether `binding` runs this version.
    pub fn is_bound_by(&self, binding: &PluginBinding) -> bool {
        binding.plugin == self.name && binding.version == Some(self.version)
    }
}

/// An uploaded version as `GET /v1/plugins` lists it: with what binds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginInfo {
    #[serde(flatten)]
    pub version: PluginVersion,
    /// `route HOST` and `pool NAME` entries.
    pub bound: Vec<String>,
}

/// The versions a delete removed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeletedVersions {
    pub deleted: Vec<PluginVersion>,
}
