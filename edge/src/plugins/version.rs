//! What an uploaded plugin version is: its kind, number and content hash. The control plane
//! stores them (its plugin catalog); the host loads them.

use burrow_protocol::AccountId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::plugins::binding::PluginBinding;

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

/// Hex SHA-256 of a component, as [`PluginVersion::sha256`] holds it.
pub fn sha256_hex(wasm: &[u8]) -> String {
    hex::encode(Sha256::digest(wasm))
}
