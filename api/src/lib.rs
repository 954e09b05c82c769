//! The `/v1` API's contract: the body of every request and answer, defined once, used by the
//! edge's handlers (`burrow-edge`) and by its clients (the `burrow` CLI). A renamed field is a
//! compile error on both sides, not a `?` in a table.
//!
//! | method | path | request → answer |
//! |---|---|---|
//! | GET | /v1/account | → [`Account`] |
//! | GET, POST | /v1/tunnels | `?limit=&after=` → [`Page<Tunnel>`]; [`CreateTunnel`] → [`CreatedTunnel`] (credentials shown once) |
//! | GET, DELETE | /v1/tunnels/{name or id} | → [`Tunnel`]; `?force=true` → [`Deleted`] |
//! | DELETE | /v1/tunnels/{ref}/connections | → [`Removed`] (stale connection records) |
//! | GET | /v1/routes | → [`Items<Route>`] |
//! | GET, PUT, DELETE | /v1/routes/{hostname} | → [`RouteAt`]; [`PutRoute`] → [`Route`]; → [`Deleted`] |
//! | PUT | /v1/routes/{hostname}/plugins | [`PutPlugins`] (`If-Match: "REV"`) → [`Route`] |
//! | GET | /v1/plugins | → [`Items<PluginInfo>`] |
//! | PUT | /v1/plugins/{name} | the `.wasm` → [`PluginVersion`] |
//! | DELETE | /v1/plugins/{name}[/{version}] | → [`DeletedVersions`] |
//! | GET | /v1/pools | → [`Items<PoolView>`] |
//! | GET, PUT, DELETE | /v1/pools/{name} | → [`PoolView`]; [`PoolSpec<String>`] (`If-Match`, `If-None-Match: *`) → [`PoolView`]; → [`Deleted`] |
//! | GET, POST | /v1/zones | → [`Zones`]; [`ClaimZone`] → [`ZoneClaimView`] |
//! | POST | /v1/zones/{zone}/verify | → [`Zone`] |
//! | DELETE | /v1/zones/{zone} | `?force=true` → [`Deleted`] |
//!
//! Errors are [`ErrorBody`] with a status that says whose fault it is.

mod accounts;
mod common;
pub mod hostnames;
pub mod plugins;
pub mod pools;
mod routes;
mod tunnels;
mod zones;

pub use accounts::Account;
pub use common::{Deleted, ErrorBody, ErrorDetail, Items, Page, Removed};
pub use plugins::{DeletedVersions, PluginBinding, PluginInfo, PluginKind, PluginVersion};
pub use pools::{OriginHealthView, OriginView, PoolSpec, PoolView};
pub use routes::{PutPlugins, PutRoute, Route, RouteAt};
pub use tunnels::{Connection, CreateTunnel, CreatedTunnel, Tunnel};
pub use zones::{ClaimZone, Zone, ZoneClaimView, ZoneSource, Zones};
