//! `burrow plugin …` (upload, list, delete WebAssembly plugins) and `burrow route plugin …`
//! (bind them to a hostname's chain), through `/v1/plugins` and `/v1/routes/{hostname}/plugins`.
//! A chain edit reads the route and writes it back with `If-Match`, so two edits never silently
//! undo each other.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burrow_api::{
    DeletedVersions, Items, PluginBinding, PluginInfo, PluginKind, PluginVersion, PutPlugins, Route, RouteAt,
};
use clap::Subcommand;
use http::Method;
use serde::Serialize;

use crate::api_client::{ApiClient, Login, is_conflict};
use crate::manage::{Output, api_name, path_segment, print_items, runtime};

/// Largest component the API accepts (checked here too, to fail before sending).
const MAX_PLUGIN_SIZE: u64 = 8 * 1024 * 1024;
/// Largest config file for a binding.
const MAX_CONFIG_SIZE: u64 = 64 * 1024;

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Upload a component (`cargo build --release --target wasm32-wasip2`) as the next version
    /// of NAME; prints its version and sha256. Routes keep their version until rebound.
    Upload { name: String, file: PathBuf },
    /// List your plugins: every version, its kind and what is bound to it.
    List {
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Delete a plugin (every version) or one version, NAME@VERSION. Refused while bound.
    Delete {
        #[arg(value_name = "NAME[@VERSION]")]
        plugin: String,
    },
}

#[derive(Subcommand)]
pub enum RouteCommand {
    /// Work with a hostname's plugin chain.
    #[command(subcommand)]
    Plugin(RoutePluginCommand),
}

#[derive(Subcommand)]
pub enum RoutePluginCommand {
    /// Append PLUGIN (latest version, or PLUGIN@VERSION) to HOSTNAME's chain. A plugin already
    /// in the chain moves to that version in place and keeps its settings except those given
    /// here (this is how a route moves to a new version).
    Add {
        hostname: String,
        #[arg(value_name = "PLUGIN[@VERSION]")]
        plugin: String,
        /// File holding the plugin's configuration (usually JSON), handed to it as-is.
        #[arg(long)]
        config: Option<PathBuf>,
        /// On a trap or timeout, forward the request anyway instead of failing it [default: false].
        #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
        fail_open: Option<bool>,
        /// Deadline per hook call in milliseconds [default: 5; at most 100].
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100))]
        deadline_ms: Option<u64>,
        /// Serve up to N requests with one instance, one at a time [default: 0, a fresh instance
        /// per request].
        #[arg(long, value_name = "N")]
        reuse: Option<u32>,
    },
    /// Show HOSTNAME's plugin chain, in the order it runs.
    List {
        hostname: String,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Remove PLUGIN from HOSTNAME's chain.
    Remove { hostname: String, plugin: String },
}

/// `name` or `name@version`.
pub fn plugin_ref(reference: &str) -> Result<(String, Option<u32>)> {
    let (name, version) = match reference.split_once('@') {
        Some((name, version)) => {
            let version = version
                .parse::<u32>()
                .with_context(|| format!("{reference:?}: the version after @ must be a number"))?;
            (name, Some(version))
        }
        None => (reference, None),
    };
    Ok((path_segment("plugin", name)?, version))
}

pub fn run(command: PluginCommand) -> Result<()> {
    let api = ApiClient::new(Login::load()?)?;
    let rt = runtime()?;
    match command {
        PluginCommand::Upload { name, file } => {
            let name = path_segment("plugin", &name)?;
            let wasm = read_limited(&file, MAX_PLUGIN_SIZE, "a plugin")?;
            let path = format!("/v1/plugins/{name}");
            let v: PluginVersion = rt.block_on(api.upload(&path, wasm.into(), "application/wasm"))?;
            println!(
                "Uploaded {name}@{} ({}, {} bytes, sha256 {})",
                v.version,
                api_name(&v.kind),
                v.size,
                v.sha256
            );
            let version = v.version;
            match v.kind {
                PluginKind::Balancer => {
                    println!("Bind it to a pool: burrow pool set POOL --steering plugin --balancer {name}@{version}")
                }
                PluginKind::Hooks => {
                    println!("Bind it to a hostname: burrow route plugin add HOSTNAME {name}@{version} --config FILE")
                }
            }
            Ok(())
        }
        PluginCommand::List { output } => {
            let plugins: Items<PluginInfo> = rt.block_on(api.get("/v1/plugins"))?;
            print_items(
                output,
                &plugins.items,
                &["NAME", "VERSION", "KIND", "SIZE", "SHA256", "BOUND TO"],
                |p| {
                    let v = &p.version;
                    vec![
                        v.name.clone(),
                        v.version.to_string(),
                        api_name(&v.kind),
                        v.size.to_string(),
                        v.sha256.chars().take(12).collect(),
                        p.bound.join(", "),
                    ]
                },
            )
        }
        PluginCommand::Delete { plugin } => {
            let (name, version) = plugin_ref(&plugin)?;
            let path = match version {
                Some(v) => format!("/v1/plugins/{name}/{v}"),
                None => format!("/v1/plugins/{name}"),
            };
            let deleted: DeletedVersions = rt.block_on(api.request(Method::DELETE, &path))?;
            let versions: Vec<String> = deleted.deleted.iter().map(|v| v.version.to_string()).collect();
            println!("Deleted {name} version(s) {}", versions.join(", "));
            Ok(())
        }
    }
}

/// A binding as `route plugin list` shows it: with its place in the chain.
#[derive(Serialize)]
struct ChainEntry {
    position: usize,
    #[serde(flatten)]
    binding: PluginBinding,
}

pub fn run_route(command: RouteCommand) -> Result<()> {
    let RouteCommand::Plugin(command) = command;
    let api = ApiClient::new(Login::load()?)?;
    let rt = runtime()?;
    match command {
        RoutePluginCommand::Add {
            hostname,
            plugin,
            config,
            fail_open,
            deadline_ms,
            reuse,
        } => {
            let (name, version) = plugin_ref(&plugin)?;
            let config = match &config {
                Some(path) => Some(
                    String::from_utf8(read_limited(path, MAX_CONFIG_SIZE, "a plugin config")?)
                        .with_context(|| format!("{} is not UTF-8 text", path.display()))?,
                ),
                None => None,
            };
            // What this command sets; everything else of an existing binding stays.
            let set = |binding: &mut PluginBinding| {
                binding.plugin.clone_from(&name);
                // No version: the API pins the latest.
                binding.version = version;
                if let Some(config) = &config {
                    binding.config.clone_from(config);
                }
                if let Some(fail_open) = fail_open {
                    binding.fail_open = fail_open;
                }
                if deadline_ms.is_some() {
                    binding.deadline_ms = deadline_ms;
                }
                if let Some(reuse) = reuse {
                    binding.reuse = reuse;
                }
            };
            let route = rt.block_on(edit_chain(&api, &hostname, |chain| {
                match chain.iter_mut().find(|b| b.plugin == name) {
                    Some(existing) => set(existing),
                    None => {
                        let mut binding = PluginBinding::default();
                        set(&mut binding);
                        chain.push(binding);
                    }
                }
                Ok(())
            }))?;
            let bound = route
                .plugins
                .iter()
                .find(|b| b.plugin == name)
                .map(binding_name)
                .unwrap_or_default();
            println!("{hostname} now runs {bound} (chain: {})", chain_summary(&route));
            Ok(())
        }
        RoutePluginCommand::List { hostname, output } => {
            let path = format!("/v1/routes/{}", path_segment("hostname", &hostname)?);
            let route: RouteAt = rt.block_on(api.get(&path))?;
            let chain: Vec<ChainEntry> = (1..)
                .zip(route.route.plugins)
                .map(|(position, binding)| ChainEntry { position, binding })
                .collect();
            print_items(
                output,
                &chain,
                &["#", "PLUGIN", "VERSION", "FAIL-OPEN", "DEADLINE-MS", "REUSE", "CONFIG"],
                |entry| {
                    let b = &entry.binding;
                    let config = if b.config.len() > 40 {
                        format!("{}…", &b.config[..b.config.floor_char_boundary(40)])
                    } else {
                        b.config.clone()
                    };
                    vec![
                        entry.position.to_string(),
                        b.plugin.clone(),
                        b.version.map_or_else(|| "operator".into(), |v| v.to_string()),
                        b.fail_open.to_string(),
                        b.deadline_ms.map_or_else(|| "5".into(), |v| v.to_string()),
                        b.reuse.to_string(),
                        config,
                    ]
                },
            )
        }
        RoutePluginCommand::Remove { hostname, plugin } => {
            let (name, _) = plugin_ref(&plugin)?;
            let route = rt.block_on(edit_chain(&api, &hostname, |chain| {
                let before = chain.len();
                chain.retain(|b| b.plugin != name);
                anyhow::ensure!(chain.len() < before, "{hostname} does not run plugin {name:?}");
                Ok(())
            }))?;
            println!("Removed {name} from {hostname} (chain: {})", chain_summary(&route));
            Ok(())
        }
    }
}

/// Read the route, change its chain, write it back unless the route changed meanwhile (then
/// read it again, a few times).
async fn edit_chain(
    api: &ApiClient,
    hostname: &str,
    edit: impl Fn(&mut Vec<PluginBinding>) -> Result<()>,
) -> Result<Route> {
    let path = format!("/v1/routes/{}", path_segment("hostname", hostname)?);
    let mut attempt = 0;
    loop {
        let RouteAt { route, revision } = api.get(&path).await?;
        let mut plugins = route.plugins;
        edit(&mut plugins)?;
        let if_match = [("if-match", format!("\"{revision}\""))];
        let body = PutPlugins { plugins };
        match api
            .send_json(Method::PUT, &format!("{path}/plugins"), &body, &if_match)
            .await
        {
            Err(e) if attempt < 3 && is_conflict(&e) => attempt += 1,
            result => return result,
        }
    }
}

/// `auth@2`, or `auth` for an operator's plugin.
fn binding_name(binding: &PluginBinding) -> String {
    match binding.version {
        Some(v) => format!("{}@{v}", binding.plugin),
        None => binding.plugin.clone(),
    }
}

/// `auth@2 → rewrite@1`, or `(none)`.
fn chain_summary(route: &Route) -> String {
    if route.plugins.is_empty() {
        return "(none)".into();
    }
    route.plugins.iter().map(binding_name).collect::<Vec<_>>().join(" → ")
}

fn read_limited(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    anyhow::ensure!(
        size <= limit,
        "{} is {size} bytes; {what} is at most {limit}",
        path.display()
    );
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}
