//! The `burrow pool …` verbs and `burrow tunnel route lb`: load-balanced pools of tunnels,
//! managed through `/v1/pools`. Every change reads the pool, edits its spec and writes it back
//! with `If-Match`, so two operators editing one pool never silently undo each other.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use http::Method;
use serde_json::{Map, Value, json};

use crate::api_client::{ApiClient, Login};
use crate::manage::{Output, path_segment, print_items, print_value, runtime, text};

#[derive(Subcommand)]
pub enum PoolCommand {
    /// Create a pool (empty, or with --origin TUNNEL[=WEIGHT] repeated).
    Create {
        name: String,
        /// An origin tunnel (name or UUID), optionally with a weight: web-eu=2.
        #[arg(long = "origin", value_name = "TUNNEL[=WEIGHT]")]
        origins: Vec<String>,
        #[command(flatten)]
        settings: Settings,
    },
    /// Change a pool's steering, fallback or affinity.
    Set {
        name: String,
        #[command(flatten)]
        settings: Settings,
    },
    /// List your pools.
    List {
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Show a pool and each origin's health as each edge sees it.
    Show {
        name: String,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Delete a pool (refused while a hostname routes to it or a pool falls back to it).
    Delete { name: String },
    /// Add, remove or change the pool's origin tunnels.
    #[command(subcommand)]
    Origin(OriginCommand),
    /// Configure the active health check sent through each tunnel.
    #[command(subcommand)]
    Monitor(MonitorCommand),
}

#[derive(Args, Default)]
pub struct Settings {
    /// random | round-robin | least-outstanding | hash | plugin.
    #[arg(long)]
    steering: Option<String>,
    /// For hash steering: client-ip, header:NAME or cookie:NAME.
    #[arg(long)]
    hash_on: Option<String>,
    /// For plugin steering: the balancer plugin, NAME or NAME@VERSION [default: the latest
    /// uploaded version, else the operator's plugin of that name].
    #[arg(long)]
    balancer: Option<String>,
    /// Keep the balancer's instances for up to N requests each instead of a fresh one per
    /// request (faster; its memory then carries over between requests).
    #[arg(long, value_name = "N", requires = "balancer")]
    balancer_reuse: Option<u32>,
    /// Pool that serves when this one has no healthy origin.
    #[arg(long, conflicts_with = "no_fallback")]
    fallback: Option<String>,
    #[arg(long)]
    no_fallback: bool,
    /// Pin each client to one origin with a cookie for this many seconds.
    #[arg(long, value_name = "SECS", conflicts_with = "no_affinity")]
    affinity_ttl: Option<u64>,
    #[arg(long)]
    no_affinity: bool,
}

#[derive(Subcommand)]
pub enum OriginCommand {
    /// Add TUNNEL (name or UUID) to POOL.
    Add {
        pool: String,
        tunnel: String,
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Add it disabled (no traffic until enabled).
        #[arg(long)]
        disabled: bool,
    },
    /// Remove TUNNEL from POOL.
    Remove { pool: String, tunnel: String },
    /// Change an origin's weight or turn it on or off.
    Set {
        pool: String,
        tunnel: String,
        #[arg(long)]
        weight: Option<u32>,
        #[arg(long)]
        enabled: Option<bool>,
    },
}

#[derive(Subcommand)]
pub enum MonitorCommand {
    /// Set the health check (unset flags keep their current or default value).
    Set {
        pool: String,
        /// http or https (the scheme the connector's ingress rules see).
        #[arg(long = "type")]
        kind: Option<String>,
        #[arg(long)]
        method: Option<String>,
        #[arg(long)]
        path: Option<String>,
        /// Healthy status codes: 200, 200-299, 2xx, comma-separated.
        #[arg(long)]
        expected_codes: Option<String>,
        /// The body must contain this text.
        #[arg(long)]
        expected_body: Option<String>,
        /// Host header of the probe [default: a hostname routed to the pool].
        #[arg(long)]
        host: Option<String>,
        #[arg(long, value_name = "SECS")]
        interval: Option<u64>,
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        #[arg(long)]
        healthy_threshold: Option<u32>,
        #[arg(long)]
        unhealthy_threshold: Option<u32>,
    },
    /// Remove the health check (passive health still applies).
    Remove { pool: String },
}

pub fn run(command: PoolCommand) -> Result<()> {
    let api = ApiClient::new(Login::load()?)?;
    let rt = runtime()?;
    match command {
        PoolCommand::Create {
            name,
            origins,
            settings,
        } => {
            let mut spec = json!({ "origins": [] });
            for origin in &origins {
                let (tunnel, weight) = match origin.split_once('=') {
                    Some((t, w)) => (
                        t,
                        w.parse::<u32>().with_context(|| format!("--origin {origin}: weight"))?,
                    ),
                    None => (origin.as_str(), 1),
                };
                push_origin(&mut spec, tunnel, weight, true)?;
            }
            settings.apply(&mut spec)?;
            let path = pool_path(&name)?;
            rt.block_on(api.call_with(Method::PUT, &path, Some(spec), &[("if-none-match", "*".into())]))?;
            println!("Created pool {name} with {} origin(s)", origins.len());
            Ok(())
        }
        PoolCommand::Set { name, settings } => rt.block_on(edit(&api, &name, |spec| settings.apply(spec))),
        PoolCommand::List { output } => {
            let body = rt.block_on(api.call(Method::GET, "/v1/pools", None))?;
            let items = body["items"].as_array().cloned().unwrap_or_default();
            print_items(
                output,
                &items,
                &["NAME", "STEERING", "ORIGINS", "HEALTHY", "FALLBACK"],
                |p| {
                    let origins = p["origins"].as_array().cloned().unwrap_or_default();
                    let healthy = origins
                        .iter()
                        .filter(|o| {
                            o["health"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .all(|h| h["healthy"] == true)
                        })
                        .count();
                    vec![
                        text(&p["name"]),
                        steering(&p["spec"]),
                        origins.len().to_string(),
                        format!("{healthy}/{}", origins.len()),
                        text(&p["spec"]["fallback"]),
                    ]
                },
            )
        }
        PoolCommand::Show { name, output } => {
            let body = rt.block_on(api.call(Method::GET, &pool_path(&name)?, None))?;
            show(&body, output)
        }
        PoolCommand::Delete { name } => {
            rt.block_on(api.call(Method::DELETE, &pool_path(&name)?, None))?;
            println!("Deleted pool {name}");
            Ok(())
        }
        PoolCommand::Origin(command) => rt.block_on(origin(&api, command)),
        PoolCommand::Monitor(command) => rt.block_on(monitor(&api, command)),
    }
}

/// `burrow tunnel route lb TUNNEL HOSTNAME POOL`: add the tunnel to the pool (creating the pool
/// if needed) and route the hostname to the pool.
pub fn route_lb(tunnel: &str, hostname: &str, pool: &str, overwrite: bool) -> Result<()> {
    let api = ApiClient::new(Login::load()?)?;
    runtime()?.block_on(async {
        let path = pool_path(pool)?;
        match api.call(Method::GET, &path, None).await {
            Ok(body) => {
                if find_origin(&body, tunnel).is_none() {
                    edit(&api, pool, |spec| push_origin(spec, tunnel, 1, true)).await?;
                }
            }
            Err(e) if e.to_string().contains("not found") => {
                let mut spec = json!({ "origins": [] });
                push_origin(&mut spec, tunnel, 1, true)?;
                api.call_with(Method::PUT, &path, Some(spec), &[("if-none-match", "*".into())])
                    .await?;
                println!("Created pool {pool}");
            }
            Err(e) => return Err(e),
        }
        let route = format!("/v1/routes/{}", path_segment("hostname", hostname)?);
        let body = json!({ "pool": pool, "overwrite": overwrite });
        api.call(Method::PUT, &route, Some(body)).await?;
        println!("Added route: {hostname} → pool {pool} (origin tunnel {tunnel})");
        Ok(())
    })
}

async fn origin(api: &ApiClient, command: OriginCommand) -> Result<()> {
    match command {
        OriginCommand::Add {
            pool,
            tunnel,
            weight,
            disabled,
        } => edit(api, &pool, |spec| push_origin(spec, &tunnel, weight, !disabled)).await,
        OriginCommand::Remove { pool, tunnel } => {
            let body = api.call(Method::GET, &pool_path(&pool)?, None).await?;
            let id =
                find_origin(&body, &tunnel).with_context(|| format!("{tunnel} is not an origin of pool {pool}"))?;
            edit(api, &pool, |spec| {
                origins_mut(spec)?.retain(|o| o["tunnel"] != id.as_str());
                Ok(())
            })
            .await
        }
        OriginCommand::Set {
            pool,
            tunnel,
            weight,
            enabled,
        } => {
            let body = api.call(Method::GET, &pool_path(&pool)?, None).await?;
            let id =
                find_origin(&body, &tunnel).with_context(|| format!("{tunnel} is not an origin of pool {pool}"))?;
            edit(api, &pool, |spec| {
                let origin = origins_mut(spec)?
                    .iter_mut()
                    .find(|o| o["tunnel"] == id.as_str())
                    .context("the origin was removed concurrently")?;
                if let Some(weight) = weight {
                    origin["weight"] = json!(weight);
                }
                if let Some(enabled) = enabled {
                    origin["enabled"] = json!(enabled);
                }
                Ok(())
            })
            .await
        }
    }
}

async fn monitor(api: &ApiClient, command: MonitorCommand) -> Result<()> {
    match command {
        MonitorCommand::Remove { pool } => {
            edit(api, &pool, |spec| {
                if let Some(map) = spec.as_object_mut() {
                    map.remove("monitor");
                }
                Ok(())
            })
            .await
        }
        MonitorCommand::Set {
            pool,
            kind,
            method,
            path,
            expected_codes,
            expected_body,
            host,
            interval,
            timeout,
            healthy_threshold,
            unhealthy_threshold,
        } => {
            let fields = [
                ("type", kind.map(Value::from)),
                ("method", method.map(Value::from)),
                ("path", path.map(Value::from)),
                ("expected-codes", expected_codes.map(Value::from)),
                ("expected-body", expected_body.map(Value::from)),
                ("host", host.map(Value::from)),
                ("interval-secs", interval.map(Value::from)),
                ("timeout-secs", timeout.map(Value::from)),
                ("healthy-threshold", healthy_threshold.map(Value::from)),
                ("unhealthy-threshold", unhealthy_threshold.map(Value::from)),
            ];
            edit(api, &pool, |spec| {
                let monitor = spec
                    .as_object_mut()
                    .context("the pool spec is not an object")?
                    .entry("monitor")
                    .or_insert_with(|| json!({}));
                for (key, value) in &fields {
                    if let Some(value) = value {
                        monitor[*key] = value.clone();
                    }
                }
                Ok(())
            })
            .await
        }
    }
}

impl Settings {
    fn apply(&self, spec: &mut Value) -> Result<()> {
        let Some(map) = spec.as_object_mut() else { return Ok(()) };
        let mut set = |key: &str, value: Option<Value>, clear: bool| {
            if let Some(value) = value {
                map.insert(key.into(), value);
            } else if clear {
                map.remove(key);
            }
        };
        let changes_steering = self.steering.is_some();
        set("steering", self.steering.clone().map(Value::from), false);
        // A new steering policy drops settings that only applied to the old one.
        set("hash-on", self.hash_on.clone().map(Value::from), changes_steering);
        let balancer = match &self.balancer {
            Some(reference) => {
                let (plugin, version) = crate::plugins::plugin_ref(reference)?;
                let mut binding = json!({ "plugin": plugin, "version": version });
                if let Some(reuse) = self.balancer_reuse {
                    binding["reuse"] = json!(reuse);
                }
                Some(binding)
            }
            None => None,
        };
        set("balancer", balancer, changes_steering);
        set("fallback", self.fallback.clone().map(Value::from), self.no_fallback);
        set(
            "affinity-ttl-secs",
            self.affinity_ttl.map(Value::from),
            self.no_affinity,
        );
        Ok(())
    }
}

/// Read the pool, change its spec, write it back if nobody changed it meanwhile (retrying a few
/// times when somebody did).
async fn edit(api: &ApiClient, pool: &str, change: impl Fn(&mut Value) -> Result<()>) -> Result<()> {
    let path = pool_path(pool)?;
    for _ in 0..3 {
        let body = api.call(Method::GET, &path, None).await?;
        let mut spec = body["spec"].clone();
        change(&mut spec)?;
        let revision = format!("\"{}\"", text(&body["revision"]));
        match api
            .call_with(Method::PUT, &path, Some(spec), &[("if-match", revision)])
            .await
        {
            Ok(_) => {
                println!("Updated pool {pool}");
                return Ok(());
            }
            Err(e) if e.to_string().contains("changed concurrently") => continue,
            Err(e) => return Err(e),
        }
    }
    anyhow::bail!("pool {pool} keeps changing under us; try again")
}

fn pool_path(name: &str) -> Result<String> {
    Ok(format!("/v1/pools/{}", path_segment("pool", name)?))
}

fn origins_mut(spec: &mut Value) -> Result<&mut Vec<Value>> {
    spec.as_object_mut()
        .context("the pool spec is not an object")?
        .entry("origins")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .context("the pool's origins are not a list")
}

fn push_origin(spec: &mut Value, tunnel: &str, weight: u32, enabled: bool) -> Result<()> {
    origins_mut(spec)?.push(json!({ "tunnel": tunnel, "weight": weight, "enabled": enabled }));
    Ok(())
}

/// The UUID of the pool origin named `tunnel` (by name or UUID), from a `GET /v1/pools/NAME`.
fn find_origin(body: &Value, tunnel: &str) -> Option<String> {
    body["origins"]
        .as_array()?
        .iter()
        .find(|o| o["name"] == tunnel || o["tunnel"] == tunnel)
        .map(|o| text(&o["tunnel"]))
}

fn steering(spec: &Value) -> String {
    match (&spec["steering"], &spec["hash-on"]) {
        (Value::Null, _) => "random".into(),
        (s, Value::Null) => text(s),
        (s, on) => format!("{} ({})", text(s), text(on)),
    }
}

fn show(body: &Value, output: Output) -> Result<()> {
    if !matches!(output, Output::Table) {
        return print_value(output, body);
    }
    let spec = &body["spec"];
    let affinity = match spec["affinity-ttl-secs"].as_u64() {
        Some(ttl) => format!("cookie, {ttl}s"),
        None => "off".into(),
    };
    let fallback = spec["fallback"].as_str().unwrap_or("none");
    println!("POOL:      {}", text(&body["name"]));
    println!("STEERING:  {}", steering(spec));
    println!("FALLBACK:  {fallback}");
    println!("AFFINITY:  {affinity}");
    let monitor = match spec["monitor"].as_object() {
        Some(m) => describe_monitor(m),
        None => "none (passive health only)".into(),
    };
    println!("MONITOR:   {monitor}\n");
    let mut rows = Vec::new();
    for origin in body["origins"].as_array().into_iter().flatten() {
        for health in origin["health"].as_array().into_iter().flatten() {
            let state = match (&health["healthy"], health["reason"].as_str()) {
                (Value::Bool(true), _) => "healthy".to_owned(),
                (Value::Bool(false), Some(reason)) => format!("unhealthy: {reason}"),
                (_, Some(reason)) if !reason.is_empty() => reason.to_owned(),
                _ => "unknown".to_owned(),
            };
            rows.push(json!({
                "name": origin["name"], "tunnel": origin["tunnel"], "weight": origin["weight"],
                "enabled": origin["enabled"], "edge": health["edge"], "state": state,
            }));
        }
    }
    print_items(
        output,
        &rows,
        &["TUNNEL", "ID", "WEIGHT", "ENABLED", "EDGE", "HEALTH"],
        |r| {
            ["name", "tunnel", "weight", "enabled", "edge", "state"]
                .iter()
                .map(|k| text(&r[*k]))
                .collect()
        },
    )
}

fn describe_monitor(m: &Map<String, Value>) -> String {
    let get = |k: &str, default: &str| m.get(k).map_or_else(|| default.to_owned(), text);
    let mut line = format!(
        "{} {} {} every {}s, expect {} (timeout {}s, {} up / {} down)",
        get("type", "http"),
        get("method", "GET"),
        get("path", "/"),
        get("interval-secs", "15"),
        get("expected-codes", "2xx"),
        get("timeout-secs", "5"),
        get("healthy-threshold", "2"),
        get("unhealthy-threshold", "2"),
    );
    if let Some(body) = m.get("expected-body") {
        line.push_str(&format!(", body contains {body}"));
    }
    line
}
