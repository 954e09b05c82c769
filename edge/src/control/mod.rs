//! The control plane: persistent objects in a store, the API that changes them, and how an edge
//! follows them. Runs off the traffic threads.
//!
//! - [`store`]: the key-value store with revisions, watches and leases (SQLite embedded, or etcd).
//! - [`resources`]: accounts, tokens, tunnels, routes, pools, connection records; [`zones`]: who
//!   routes which hostnames; [`plugin_catalog`]: uploaded plugin versions.
//! - [`api`]: the `/v1` REST API tenants use.
//! - [`config_sync`]: watch the store → build the route table off the hot path → swap it in;
//!   [`remote_sync`]: the same for edge-only nodes following another node's API;
//!   [`tunnels_file`]: the file provider (no store).
//! - [`connection_records`]: this edge's tunnel connections in the store, under its lease.
//! - [`health_monitor`]: the pools' monitors, and this edge's view of their health.
//! - [`cluster`]: edges on one etcd: the inter-edge link's certificates, node records, who holds
//!   which tunnel.

pub mod api;
pub mod cluster;
pub mod config_sync;
pub mod connection_records;
pub mod health_monitor;
pub mod plugin_catalog;
pub mod remote_sync;
pub mod resources;
pub mod store;
pub mod tunnels_file;
pub mod zones;
