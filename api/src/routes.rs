use burrow_protocol::{AccountId, TunnelId};
use serde::{Deserialize, Serialize};

use crate::plugins::PluginBinding;

/// A hostname routed to a tunnel or a pool of the account, with the plugins run for it. The
/// store keeps routes in this shape too.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Route {
    pub hostname: String,
    pub account: AccountId,
    /// The route's target: a tunnel, or a pool of tunnels (exactly one is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    pub created: u64,
    /// Plugins run for this hostname, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginBinding>,
}

/// A route, and the revision it was last written at (for `If-Match`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteAt {
    #[serde(flatten)]
    pub route: Route,
    pub revision: u64,
}

/// `PUT /v1/routes/{hostname}`: exactly one of `tunnel` (name or id) and `pool`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Move a hostname the account already routes elsewhere.
    #[serde(default)]
    pub overwrite: bool,
    /// Absent: keep the route's current chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugins: Option<Vec<PluginBinding>>,
}

/// `PUT /v1/routes/{hostname}/plugins`: the whole chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutPlugins {
    pub plugins: Vec<PluginBinding>,
}
