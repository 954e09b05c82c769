//! `burrow`, the connector's command line: runs next to an origin with no public IP and serves a
//! tunnel (`tunnel run`, with [`burrow_tunnel`]), and manages tunnels, routes, pools, plugins and
//! zones through the control-plane API.
//!
//! # Layout
//!
//! - [`cli`]: the command line; [`config_file`]: what `burrow tunnel run` reads.
//! - [`status`]: `/ready` and `/metrics` of a running connector.
//! - [`manage`], [`pools`], [`plugins`]: the verbs that use the API, through [`api_client`].

pub mod api_client;
pub mod cli;
pub mod config_file;
pub mod manage;
pub mod plugins;
pub mod pools;
pub mod status;
