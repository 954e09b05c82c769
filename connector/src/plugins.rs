//! `burrow plugin …` (upload, list, delete WebAssembly plugins) and `burrow route plugin …`
//! (bind them to a hostname's chain), through `/v1/plugins` and `/v1/routes/{hostname}/plugins`.
//! A chain edit reads the route and writes it back with `If-Match`, so two edits never silently
//! undo each other.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use http::Method;
use serde_json::{Value, json};

use crate::api_client::{ApiClient, Login};
use crate::manage::{Output, path_segment, print_items, runtime, text};

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
            let v = rt.block_on(api.send(Method::PUT, &path, wasm.into(), "application/wasm", &[]))?;
            println!(
                "Uploaded {name}@{} ({}, {} bytes, sha256 {})",
                text(&v["version"]),
                text(&v["kind"]),
                text(&v["size"]),
                text(&v["sha256"])
            );
            let version = text(&v["version"]);
            match v["kind"].as_str() {
                Some("balancer") => {
                    println!("Bind it to a pool: burrow pool set POOL --steering plugin --balancer {name}@{version}")
                }
                _ => println!("Bind it to a hostname: burrow route plugin add HOSTNAME {name}@{version} --config FILE"),
            }
            Ok(())
        }
        PluginCommand::List { output } => {
            let body = rt.block_on(api.call(Method::GET, "/v1/plugins", None))?;
            let items = body["items"].as_array().cloned().unwrap_or_default();
            print_items(
                output,
                &items,
                &["NAME", "VERSION", "KIND", "SIZE", "SHA256", "BOUND TO"],
                |p| {
                    let bound: Vec<String> = p["bound"].as_array().into_iter().flatten().map(text).collect();
                    vec![
                        text(&p["name"]),
                        text(&p["version"]),
                        text(&p["kind"]),
                        text(&p["size"]),
                        text(&p["sha256"]).chars().take(12).collect(),
                        bound.join(", "),
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
            let body = rt.block_on(api.call(Method::DELETE, &path, None))?;
            let versions: Vec<String> = body["deleted"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| text(&v["version"]))
                .collect();
            println!("Deleted {name} version(s) {}", versions.join(", "));
            Ok(())
        }
    }
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
            let set = |binding: &mut Value| {
                binding["plugin"] = json!(name);
                match version {
                    Some(v) => binding["version"] = json!(v),
                    // No version: the API pins the latest.
                    None => drop(binding.as_object_mut().and_then(|b| b.remove("version"))),
                }
                let given = [
                    ("config", config.clone().map(Value::from)),
                    ("fail-open", fail_open.map(Value::from)),
                    ("deadline-ms", deadline_ms.map(Value::from)),
                    ("reuse", reuse.map(Value::from)),
                ];
                for (key, value) in given {
                    if let Some(value) = value {
                        binding[key] = value;
                    }
                }
            };
            let route = rt.block_on(edit_chain(&api, &hostname, |chain| {
                match chain.iter_mut().find(|b| b["plugin"] == json!(name)) {
                    Some(existing) => set(existing),
                    None => {
                        let mut binding = json!({});
                        set(&mut binding);
                        chain.push(binding);
                    }
                }
                Ok(())
            }))?;
            let bound = route["plugins"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|b| b["plugin"] == json!(name))
                .map(|b| {
                    b["version"]
                        .as_u64()
                        .map_or_else(|| name.clone(), |v| format!("{name}@{v}"))
                })
                .unwrap_or_default();
            println!("{hostname} now runs {bound} (chain: {})", chain_summary(&route));
            Ok(())
        }
        RoutePluginCommand::List { hostname, output } => {
            let path = format!("/v1/routes/{}", path_segment("hostname", &hostname)?);
            let route = rt.block_on(api.call(Method::GET, &path, None))?;
            let chain: Vec<Value> = route["plugins"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
                .map(|(i, b)| {
                    let mut b = b.clone();
                    b["position"] = json!(i + 1);
                    b
                })
                .collect();
            print_items(
                output,
                &chain,
                &["#", "PLUGIN", "VERSION", "FAIL-OPEN", "DEADLINE-MS", "REUSE", "CONFIG"],
                {
                    |b| {
                        let config = text(&b["config"]);
                        vec![
                            text(&b["position"]),
                            text(&b["plugin"]),
                            b["version"]
                                .as_u64()
                                .map_or_else(|| "operator".into(), |v| v.to_string()),
                            text(&b["fail-open"]),
                            b["deadline-ms"].as_u64().map_or_else(|| "5".into(), |v| v.to_string()),
                            b["reuse"].as_u64().unwrap_or(0).to_string(),
                            if config.len() > 40 {
                                format!("{}…", &config[..config.floor_char_boundary(40)])
                            } else {
                                config
                            },
                        ]
                    }
                },
            )
        }
        RoutePluginCommand::Remove { hostname, plugin } => {
            let (name, _) = plugin_ref(&plugin)?;
            let route = rt.block_on(edit_chain(&api, &hostname, |chain| {
                let before = chain.len();
                chain.retain(|b| b["plugin"] != json!(name));
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
async fn edit_chain(api: &ApiClient, hostname: &str, edit: impl Fn(&mut Vec<Value>) -> Result<()>) -> Result<Value> {
    let path = format!("/v1/routes/{}", path_segment("hostname", hostname)?);
    let mut attempt = 0;
    loop {
        let route = api.call(Method::GET, &path, None).await?;
        let revision = route["revision"]
            .as_u64()
            .context("the API answered without a revision")?;
        let mut chain = route["plugins"].as_array().cloned().unwrap_or_default();
        edit(&mut chain)?;
        let if_match = [("if-match", format!("\"{revision}\""))];
        let body = Some(json!({ "plugins": chain }));
        match api
            .call_with(Method::PUT, &format!("{path}/plugins"), body, &if_match)
            .await
        {
            Err(e) if attempt < 3 && e.to_string().contains("changed") => attempt += 1,
            result => return result,
        }
    }
}

/// `auth@2 → rewrite@1`, or `(none)`.
fn chain_summary(route: &Value) -> String {
    let names: Vec<String> = route["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| match b["version"].as_u64() {
            Some(v) => format!("{}@{v}", text(&b["plugin"])),
            None => text(&b["plugin"]),
        })
        .collect();
    if names.is_empty() {
        "(none)".into()
    } else {
        names.join(" → ")
    }
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
