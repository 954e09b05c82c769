use burrow_protocol::{Credentials, TunnelId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A tunnel as its owner sees it (never its secret), with its live connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tunnel {
    pub id: TunnelId,
    pub name: String,
    pub created: u64,
    #[serde(default)]
    pub connections: Vec<Connection>,
}

/// A live connection as recorded by the edge that holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Connection {
    pub connection_id: Uuid,
    pub tunnel: TunnelId,
    pub connector: String,
    pub conn_index: u8,
    pub edge_node: String,
    pub origin_ip: String,
    pub version: String,
    pub since: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTunnel {
    pub name: String,
}

/// A new tunnel and the credentials that serve it: shown once, the secret is kept only hashed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedTunnel {
    pub tunnel: Tunnel,
    pub credentials: Credentials,
}
