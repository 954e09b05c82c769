//! Control-stream messages. Rare and extensible, so they travel as JSON inside a
//! [`Frame::Control`](crate::Frame::Control) frame (size-limited like any head).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::{AccountId, ConnIndex, ConnectorId, TunnelId, TunnelSecret};

/// One message on the control stream, in either direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    /// connector → edge, first message on a new connection.
    Register(Register),
    /// edge → connector: the connection now serves the tunnel.
    Registered(Registered),
    /// edge → connector: registration refused; the edge closes the connection after sending it.
    Rejected(Rejected),
    /// connector → edge: stop sending new requests here; in-flight ones finish (graceful drain).
    Unregister,
    /// edge → connector: this edge is shutting down; reconnect elsewhere, in-flight ones finish.
    Drain,
}

/// Credentials and identity of one tunnel connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    pub protocol: u32,
    pub account: AccountId,
    pub tunnel_id: TunnelId,
    pub secret: TunnelSecret,
    pub conn_index: ConnIndex,
    pub connector_id: ConnectorId,
    /// Connector software version, for `tunnel info` and support.
    pub version: String,
    pub os: String,
    pub arch: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    pub connection_id: Uuid,
    /// Name of the edge node that accepted the connection.
    pub edge_node: String,
    /// Operator-chosen location label of that node (e.g. `fra1`).
    pub location: String,
    /// Other tunnel addresses the connector may also use.
    pub edges: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub code: RejectCode,
    /// Human-readable reason, safe to show to the user (never contains the secret).
    pub message: String,
    /// When set, retrying sooner than this is pointless.
    pub retry_after_ms: Option<u64>,
}

/// Why a registration was refused. Decides whether the connector retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// Unknown tunnel or wrong secret. Retrying only helps if the edge's records are stale.
    Unauthorized,
    /// The store has this tunnel but the edge's routing table does not hold it yet (its config
    /// is behind): retry shortly. Never sent for a wrong secret.
    Pending,
    /// The edge does not speak this protocol version; upgrade one side.
    UnsupportedVersion,
    /// Too many connections for this tunnel or edge; retry later.
    TooManyConnections,
    /// The edge is draining; use another edge.
    Draining,
    /// The registration did not parse or arrived too late.
    Malformed,
    /// Too many registrations from this address; retry after the given delay.
    RateLimited,
}

impl RejectCode {
    /// Whether an immediate retry against the same edge can succeed.
    pub fn is_retryable(self) -> bool {
        !matches!(self, RejectCode::UnsupportedVersion | RejectCode::Malformed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn register_serializes_with_tag_and_masks_secret_in_debug() {
        let msg = ControlMessage::Register(Register {
            protocol: 1,
            account: AccountId(Uuid::nil()),
            tunnel_id: TunnelId(Uuid::nil()),
            secret: TunnelSecret([7; 32]),
            conn_index: 2,
            connector_id: ConnectorId(Uuid::nil()),
            version: "0.1.0".into(),
            os: "linux".into(),
            arch: "x86_64".into(),
        });
        let json = serde_json::to_string(&msg).unwrap();
        assert!(json.starts_with(r#"{"type":"register""#), "{json}");
        assert_eq!(serde_json::from_str::<ControlMessage>(&json).unwrap(), msg);
        assert!(!format!("{msg:?}").contains("BwcH"), "secret leaked into Debug");
    }
}
