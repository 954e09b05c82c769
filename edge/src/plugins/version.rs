//! What an uploaded plugin version is: its kind, number and content hash. The control plane
//! stores them (its plugin catalog); the host loads them.

use sha2::{Digest, Sha256};

pub use burrow_api::plugins::{PluginKind, PluginVersion};

/// Hex SHA-256 of a component, as [`PluginVersion::sha256`] holds it.
pub fn sha256_hex(wasm: &[u8]) -> String {
    hex::encode(Sha256::digest(wasm))
}
