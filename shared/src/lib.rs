//! Small pieces both binaries use, each in a module named for what it is. Nothing here knows
//! about tunnels, routes or requests.
//!
//! - [`files`]: where Burrow keeps its files, and writing private ones atomically.
//! - [`threads`]: serving threads with a runtime each; the first error stops the rest.
//! - [`logging`]: the logging flags of both command lines.
//! - [`signals`]: SIGINT and SIGTERM.
//! - [`backoff`]: the one retry policy every reconnect loop uses.
//! - [`host_port`]: `host:port` strings, read the one way (an [`http::uri::Authority`]).

pub mod backoff;
pub mod files;
pub mod host_port;
pub mod logging;
pub mod signals;
pub mod threads;
