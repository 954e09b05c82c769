//! The `burrow-edge` command line: run an edge, add tunnels to its file, or try it all at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use burrow_protocol::{AccountId, TunnelId, TunnelSecret};
use burrow_shared::files::burrow_home;
use burrow_tunnel::credentials::{Credentials, CredentialsFile};
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::control::api::ApiListener;
use crate::control::config_sync;
use crate::control::remote_sync::{self, Remote};
use crate::control::resources::{ControlPlane, RouteTo};
use crate::control::store::sqlite::SqliteStore;
use crate::control::tunnels_file::{RouteEntry, TunnelEntry, TunnelsFile, encode_hex};
use crate::control::zones::ZoneSource;
use crate::dataplane::shards;
use crate::dataplane::tls::TlsIdentity;
use crate::plugins::host::PluginHost;
use crate::route_table::{RouteTable, hash_secret};
use crate::{ConnectionTimeouts, EdgeConfig, EdgeState, Listeners};

mod dev;
mod manage;
mod run;
mod store;

use dev::{DevArgs, dev};
use manage::{
    AccountCommand, NodeTokenCommand, TokenCommand, TunnelCommand, ZoneCommand, add_tunnel, create_node_token,
    manage_accounts, manage_tokens, manage_zones,
};
use run::{RunArgs, run};
use store::{StoreArgs, StoreOpen};

#[derive(Parser)]
#[command(
    name = "burrow-edge",
    version,
    about = "Burrow edge node: public HTTP in, named tunnels out"
)]
struct Cli {
    #[command(flatten)]
    log: burrow_shared::logging::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an edge node.
    Run(Box<RunArgs>),
    /// Manage the tunnels of a tunnels file (the file provider).
    #[command(subcommand)]
    Tunnel(TunnelCommand),
    /// Manage accounts in the edge's store.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Manage accounts' API tokens in the edge's store.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage which account may route which hostnames.
    #[command(subcommand)]
    Zone(ZoneCommand),
    /// Manage tokens of edge-only nodes.
    #[command(subcommand)]
    NodeToken(NodeTokenCommand),
    /// Try Burrow on this machine: an edge, a tunnel and a connector in one process.
    Dev(DevArgs),
}

/// Entry point of the `burrow-edge` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    let result = match cli.command {
        Command::Run(args) => runtime().and_then(|rt| rt.block_on(run(*args))),
        Command::Tunnel(TunnelCommand::Add(args)) => add_tunnel(args),
        Command::NodeToken(NodeTokenCommand::Create { name, store }) => {
            runtime().and_then(|rt| rt.block_on(create_node_token(&name, &store)))
        }
        Command::Account(command) => runtime().and_then(|rt| rt.block_on(manage_accounts(command))),
        Command::Token(command) => runtime().and_then(|rt| rt.block_on(manage_tokens(command))),
        Command::Zone(command) => runtime().and_then(|rt| rt.block_on(manage_zones(command))),
        Command::Dev(args) => runtime().and_then(|rt| rt.block_on(dev(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The main thread's runtime: control work (API, config follow, health checks); every traffic
/// shard gets a thread of its own from `run`.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn data_dir(explicit: Option<PathBuf>) -> PathBuf {
    explicit.unwrap_or_else(|| burrow_home().join("edge"))
}

/// Names the self-signed certificate is valid for: loopback plus whatever the node is called.
fn self_signed_names(extra: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    for name in extra {
        let host = burrow_shared::host_port::unbracket(burrow_shared::host_port::split(name).0);
        if !host.is_empty() && !names.iter().any(|n| n == host) {
            names.push(host.to_owned());
        }
    }
    names
}

/// Unix seconds as RFC 3339 (UTC).
fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// A TCP listener for `flag`, unless it is "off".
async fn bind_optional(addr: &str, flag: &str) -> Result<Option<TcpListener>> {
    let Some(addr) = parse_optional(addr, flag)? else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {flag} {addr} (is another edge running?)"))?;
    Ok(Some(listener))
}

fn parse_optional(addr: &str, flag: &str) -> Result<Option<SocketAddr>> {
    if addr == "off" {
        return Ok(None);
    }
    let addr = addr
        .parse()
        .with_context(|| format!("{flag} {addr:?}: expected IP:PORT or off"))?;
    Ok(Some(addr))
}

/// A duration flag in humantime syntax ("30s", "5m", "1h"), at most 30 days so that no deadline
/// computed from it can overflow the clock.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    const MAX: Duration = Duration::from_secs(30 * 24 * 3600);
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration > MAX {
        return Err(format!("{text} is over the 30 days this accepts"));
    }
    Ok(duration)
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "edge".to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn timeouts_parse_humantime_and_are_capped() {
        assert_eq!(parse_timeout("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_timeout("30days"), Ok(Duration::from_secs(30 * 24 * 3600)));
        let over = parse_timeout("31days").unwrap_err();
        assert!(over.contains("over the 30 days"), "{over}");
        assert!(parse_timeout("soon").is_err());
    }
}
