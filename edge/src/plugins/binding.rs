//! A plugin bound to a route (or to a pool as its balancer), as the store and the tunnels file
//! hold it.

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
    /// Idle instances of this binding (reuse mode). Owned by the binding, so never shared across
    /// routes, accounts or configs.
    #[serde(skip)]
    pub warm: crate::plugins::host::WarmInstances,
    /// The uploaded version's compiled plugin, attached when the table is built.
    #[serde(skip)]
    pub resolved: crate::plugins::host::ResolvedPlugin,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
