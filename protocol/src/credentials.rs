//! Tunnel credentials: what a connector presents to prove it may serve a tunnel. The API hands
//! them out when a tunnel is created; the connector keeps them in a file (or a token).

use serde::{Deserialize, Serialize};

use crate::ids::{AccountId, TunnelId, TunnelSecret};

/// Longest token accepted ([`Credentials::from_token`]): credentials are small.
pub const MAX_TOKEN_LEN: usize = 512 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub account: AccountId,
    pub tunnel_id: TunnelId,
    /// For messages only; the UUID is what identifies the tunnel.
    #[serde(default)]
    pub tunnel_name: String,
    pub secret: TunnelSecret,
    /// Tunnel addresses (`host:port`) of the edges to dial.
    #[serde(default)]
    pub edges: Vec<String>,
    /// PEM certificate to trust for the edge instead of the public web PKI (self-signed edges).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_ca: Option<String>,
}

impl Credentials {
    /// The credentials as one string (base64url of the JSON), for environments where a file is
    /// awkward. As secret as the file.
    pub fn to_token(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn from_token(token: &str) -> Result<Self, String> {
        use base64::Engine as _;
        if token.len() > MAX_TOKEN_LEN {
            return Err("the tunnel token is too long".into());
        }
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|_| "the tunnel token is not valid base64url; copy it again from `burrow tunnel token`")?;
        serde_json::from_slice(&json).map_err(|_| "the tunnel token does not hold tunnel credentials".into())
    }
}
