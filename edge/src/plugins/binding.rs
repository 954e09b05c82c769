//! A plugin bound to a route (or to a pool as its balancer): the binding as the API and the
//! store hold it ([`PluginBinding`]), and as a route table runs it ([`Binding`]).

pub use burrow_api::plugins::{MAX_PLUGIN_CONFIG, MAX_PLUGINS_PER_ROUTE, PluginBinding};

/// A binding in a route table: its spec, the uploaded version it resolved to when the table was
/// built, and its idle instances (reuse mode), which are never shared across routes, accounts
/// or configs. Reads as its spec.
#[derive(Debug, Default)]
pub struct Binding {
    pub spec: PluginBinding,
    pub warm: crate::plugins::host::WarmInstances,
    pub resolved: crate::plugins::host::ResolvedPlugin,
}

impl Binding {
    /// A binding not resolved to an uploaded version (an operator's plugin, or none loaded).
    pub fn new(spec: PluginBinding) -> Self {
        Self {
            spec,
            warm: Default::default(),
            resolved: Default::default(),
        }
    }
}

/// A copy runs the same plugin version, with no idle instances of its own yet.
impl Clone for Binding {
    fn clone(&self) -> Self {
        Self {
            spec: self.spec.clone(),
            warm: Default::default(),
            resolved: self.resolved.clone(),
        }
    }
}

/// Bindings are equal when their specs are (what a route or pool asks for).
impl PartialEq for Binding {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}

impl Eq for Binding {}

impl std::ops::Deref for Binding {
    type Target = PluginBinding;

    fn deref(&self) -> &PluginBinding {
        &self.spec
    }
}
