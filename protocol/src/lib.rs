//! The tunnel wire protocol spoken between `burrow-edge` and the connector `burrow`.
//!
//! # Layout
//!
//! - [`ids`]: the shared vocabulary (`TunnelId`, `ConnectorId`, `ConnIndex`, `TunnelSecret`, …).
//! - [`credentials`]: what a connector presents to serve a tunnel.
//! - [`control`]: the control stream — `Register` → `Registered` | `Rejected`, `Unregister`, `Drain`.
//! - [`head`]: request and response heads carried at the start of every request stream.
//! - [`frame`]: framing and the codec (limits built in, never panics on any input).
//! - [`body`]: HTTP bodies over tunnel streams (both directions, trailers included).
//! - [`headers`]: HTTP header rules both ends apply (hop-by-hop stripping, Burrow's own headers).
//!
//! # Streams
//!
//! The connector dials the edge over QUIC (ALPN [`ALPN`]) and opens one bidirectional *control
//! stream* per connection. The edge opens one bidirectional *request stream* per public request:
//!
//! ```text
//! edge → connector:  RequestHead, Data*, [Trailers], FIN
//! connector → edge:  (ResponseHead, Data*, [Trailers] | Error), FIN
//! ```
//!
//! For `websocket` and `tcp` requests, once a `101`/`200` response head has crossed, the stream
//! carries raw bytes both ways (no frames).
//!
//! The codec does no IO. [`body`] adapts it to any `AsyncRead`/`AsyncWrite` so both ends share
//! one body relay, and [`frame::read_frame`] adds a deadline around a framed reader.

pub mod body;
pub mod control;
pub mod credentials;
pub mod frame;
pub mod head;
pub mod headers;
pub mod ids;

pub use control::{ControlMessage, Register, Registered, RejectCode, Rejected};
pub use credentials::Credentials;
pub use frame::{Frame, FrameError, Limits, TunnelCodec};
pub use head::{FLAG_HEALTH_CHECK, RequestHead, RequestKind, ResponseHead, Scheme, StreamError, StreamErrorCode};
pub use ids::{AccountId, ConnIndex, ConnectorId, TunnelId, TunnelSecret};

/// ALPN protocol id for the tunnel transport. The trailing number is the protocol version.
pub const ALPN: &[u8] = b"burrow/1";

/// Protocol version carried in `Register`; the edge rejects versions it does not speak.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default UDP port of the tunnel listener.
pub const DEFAULT_TUNNEL_PORT: u16 = 7844;

/// QUIC application error codes used when closing connections or resetting streams.
pub mod error_code {
    /// Orderly close (connector unregistered, edge drained).
    pub const NO_ERROR: u32 = 0;
    /// The peer sent something that does not parse or breaks the stream rules.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// The request was abandoned (client went away, origin failed mid-body).
    pub const REQUEST_CANCELLED: u32 = 2;
    /// Registration failed or did not happen in time.
    pub const REGISTRATION_FAILED: u32 = 3;
    /// The edge is shutting down.
    pub const EDGE_SHUTDOWN: u32 = 4;
    /// The tunnel was deleted or its credentials revoked.
    pub const TUNNEL_REVOKED: u32 = 5;
    /// The edge heard nothing from the connector for too long and gave the connection up.
    pub const CONNECTION_DEAD: u32 = 6;
}
