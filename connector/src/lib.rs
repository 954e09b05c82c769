//! `burrow`, the connector: runs next to an origin with no public IP, dials out to the edges over
//! QUIC and serves the requests they send back down the tunnel.
//!
//! # Layout — in the order a request meets it
//!
//! - [`tunnel_client`]: HA connections to the edges: register, accept request streams, reconnect.
//! - [`origin`]: one request stream: match an ingress rule, call the origin, relay the answer.
//! - [`ingress`]: cloudflared-compatible ingress rules (hostname/path → service).
//! - [`config_file`], [`credentials`]: what `burrow tunnel run` reads.
//! - [`tls`]: TLS towards the edge and towards origins; [`threads`]: serving threads.
//! - [`status`]: `/ready` and `/metrics`.
//! - [`cli`]: the command line; [`manage`], [`pools`] and [`api_client`]: the verbs that use the
//!   control-plane API.

pub mod api_client;
pub mod cli;
pub mod config_file;
pub mod credentials;
pub mod ingress;
pub mod manage;
pub mod origin;
pub mod plugins;
pub mod pools;
pub mod status;
pub mod threads;
pub mod tls;
pub mod tunnel_client;
