//! The connector's side of a tunnel: what `burrow tunnel run` (and `burrow-edge dev`) run.
//!
//! # Layout — in the order a request meets it
//!
//! - [`tunnel_client`]: HA connections to the edges: register, accept request streams, reconnect.
//! - [`origin`]: one request stream: match an ingress rule, call the origin, relay the answer.
//! - [`ingress`]: cloudflared-compatible ingress rules (hostname/path → service).
//! - [`credentials`]: the file that proves a connector may serve a tunnel.
//! - [`tls`]: TLS towards the edge (QUIC) and towards origins.

pub mod credentials;
pub mod edge_list;
pub mod ingress;
pub mod origin;
pub mod tls;
pub mod tunnel_client;
