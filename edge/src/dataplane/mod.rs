//! The data plane: everything a visitor's request touches, in the order it does.
//!
//! - [`shards`]: one thread per core, each with its own listeners and QUIC endpoint on shared ports.
//! - [`listener`]: public HTTP/1.1 + HTTP/2 listener (cleartext and TLS), one task per connection.
//! - [`request_checks`]: refuse ambiguous request heads (Host, framing, target, method) up front.
//! - [`proxy`]: per request, in phases: resolve the route → request hooks → steer → dispatch over a
//!   tunnel stream → response hooks → log.
//! - [`respond`]: the one place errors become HTTP answers.
//! - [`registry`]: live tunnel connections per tunnel, and whether each still answers.
//! - [`tunnel_server`]: the QUIC listener where connectors register.
//! - [`peers`]: the link to the other edges of a cluster, for tunnels connected elsewhere.
//! - [`tls`]: the edge's certificate for HTTPS and QUIC.

pub mod listener;
pub mod peers;
pub mod proxy;
pub mod registry;
pub mod request_checks;
pub mod respond;
pub mod shards;
pub mod tls;
pub mod tunnel_server;
