//! The `burrow pool …` verbs and `burrow tunnel route lb`: load-balanced pools of tunnels,
//! managed through `/v1/pools`. Every change reads the pool, edits its spec and writes it back
//! with `If-Match`, so two operators editing one pool never silently undo each other.

use std::convert::Infallible;

use anyhow::{Context, Result};
use burrow_api::pools::{HashKey, Monitor, MonitorType, PoolOrigin};
use burrow_api::{Deleted, Items, PluginBinding, PoolSpec, PoolView, PutRoute, Route};
use clap::{Args, Subcommand};
use http::Method;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api_client::{ApiClient, Login, is_conflict, is_not_found};
use crate::manage::{Output, api_name, path_segment, print_items, print_value, runtime};

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
            let mut spec = PoolSpec::default();
            for origin in &origins {
                let (tunnel, weight) = match origin.split_once('=') {
                    Some((t, w)) => (
                        t,
                        w.parse::<u32>().with_context(|| format!("--origin {origin}: weight"))?,
                    ),
                    None => (origin.as_str(), 1),
                };
                push_origin(&mut spec, tunnel, weight, true);
            }
            settings.apply(&mut spec)?;
            rt.block_on(create(&api, &name, &spec))?;
            println!("Created pool {name} with {} origin(s)", origins.len());
            Ok(())
        }
        PoolCommand::Set { name, settings } => rt.block_on(edit(&api, &name, |spec| settings.apply(spec))),
        PoolCommand::List { output } => {
            let pools: Items<PoolView> = rt.block_on(api.get("/v1/pools"))?;
            print_items(
                output,
                &pools.items,
                &["NAME", "STEERING", "ORIGINS", "HEALTHY", "FALLBACK"],
                |p| {
                    let healthy = p
                        .origins
                        .iter()
                        .filter(|o| o.health.iter().all(|h| h.healthy == Some(true)))
                        .count();
                    vec![
                        p.name.clone(),
                        steering(&p.spec),
                        p.origins.len().to_string(),
                        format!("{healthy}/{}", p.origins.len()),
                        p.spec.fallback.clone().unwrap_or_default(),
                    ]
                },
            )
        }
        PoolCommand::Show { name, output } => {
            let pool: PoolView = rt.block_on(api.get(&pool_path(&name)?))?;
            show(&pool, output)
        }
        PoolCommand::Delete { name } => {
            let _: Deleted = rt.block_on(api.request(Method::DELETE, &pool_path(&name)?))?;
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
        match api.get::<PoolView>(&pool_path(pool)?).await {
            Ok(view) => {
                if find_origin(&view, tunnel).is_none() {
                    edit(&api, pool, |spec| {
                        push_origin(spec, tunnel, 1, true);
                        Ok(())
                    })
                    .await?;
                }
            }
            Err(e) if is_not_found(&e) => {
                let mut spec = PoolSpec::default();
                push_origin(&mut spec, tunnel, 1, true);
                create(&api, pool, &spec).await?;
                println!("Created pool {pool}");
            }
            Err(e) => return Err(e),
        }
        let route = format!("/v1/routes/{}", path_segment("hostname", hostname)?);
        let body = PutRoute {
            pool: Some(pool.to_owned()),
            overwrite,
            ..Default::default()
        };
        let _: Route = api.send_json(Method::PUT, &route, &body, &[]).await?;
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
        } => {
            edit(api, &pool, |spec| {
                push_origin(spec, &tunnel, weight, !disabled);
                Ok(())
            })
            .await
        }
        OriginCommand::Remove { pool, tunnel } => {
            let id = origin_id(api, &pool, &tunnel).await?;
            edit(api, &pool, |spec| {
                spec.origins.retain(|o| o.tunnel != id);
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
            let id = origin_id(api, &pool, &tunnel).await?;
            edit(api, &pool, |spec| {
                let origin = spec
                    .origins
                    .iter_mut()
                    .find(|o| o.tunnel == id)
                    .context("the origin was removed concurrently")?;
                if let Some(weight) = weight {
                    origin.weight = weight;
                }
                if let Some(enabled) = enabled {
                    origin.enabled = enabled;
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
                spec.monitor = None;
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
            let kind: Option<MonitorType> = kind.map(|k| parse_name("--type", &k)).transpose()?;
            edit(api, &pool, |spec| {
                let monitor = spec.monitor.get_or_insert_with(Monitor::default);
                given(&mut monitor.kind, &kind);
                given(&mut monitor.method, &method);
                given(&mut monitor.path, &path);
                given(&mut monitor.expected_codes, &expected_codes);
                if let Some(body) = &expected_body {
                    monitor.expected_body = Some(body.clone());
                }
                if let Some(host) = &host {
                    monitor.host = Some(host.clone());
                }
                given(&mut monitor.interval_secs, &interval);
                given(&mut monitor.timeout_secs, &timeout);
                given(&mut monitor.healthy_threshold, &healthy_threshold);
                given(&mut monitor.unhealthy_threshold, &unhealthy_threshold);
                Ok(())
            })
            .await
        }
    }
}

/// Set `field` to `value` when the flag was given.
fn given<T: Clone>(field: &mut T, value: &Option<T>) {
    if let Some(value) = value {
        field.clone_from(value);
    }
}

impl Settings {
    fn apply(&self, spec: &mut PoolSpec<String>) -> Result<()> {
        let changes_steering = self.steering.is_some();
        if let Some(steering) = &self.steering {
            spec.steering = parse_name("--steering", steering)?;
        }
        // A new steering policy drops settings that only applied to the old one.
        match &self.hash_on {
            Some(key) => spec.hash_on = Some(HashKey::try_from(key.clone()).map_err(anyhow::Error::msg)?),
            None if changes_steering => spec.hash_on = None,
            None => {}
        }
        match &self.balancer {
            Some(reference) => {
                let (plugin, version) = crate::plugins::plugin_ref(reference)?;
                spec.balancer = Some(PluginBinding {
                    plugin,
                    version,
                    reuse: self.balancer_reuse.unwrap_or_default(),
                    ..Default::default()
                });
            }
            None if changes_steering => spec.balancer = None,
            None => {}
        }
        if let Some(fallback) = &self.fallback {
            spec.fallback = Some(fallback.clone());
        } else if self.no_fallback {
            spec.fallback = None;
        }
        if let Some(ttl) = self.affinity_ttl {
            spec.affinity_ttl_secs = Some(ttl);
        } else if self.no_affinity {
            spec.affinity_ttl_secs = None;
        }
        Ok(())
    }
}

/// Write a new pool (refused if one of that name exists).
async fn create(api: &ApiClient, pool: &str, spec: &PoolSpec<String>) -> Result<()> {
    let if_none_match = [("if-none-match", "*".to_owned())];
    let _: PoolView = api
        .send_json(Method::PUT, &pool_path(pool)?, spec, &if_none_match)
        .await?;
    Ok(())
}

/// Read the pool, change its spec, write it back if nobody changed it meanwhile (retrying a few
/// times when somebody did).
async fn edit(api: &ApiClient, pool: &str, change: impl Fn(&mut PoolSpec<String>) -> Result<()>) -> Result<()> {
    let path = pool_path(pool)?;
    for _ in 0..3 {
        let view: PoolView = api.get(&path).await?;
        let revision = view.revision.context("the API answered without a revision")?;
        // The API takes an origin's tunnel by name or UUID: the UUIDs it answered name the same
        // tunnels, even ones renamed meanwhile.
        let mut spec = view.spec.resolve(|id| Ok::<_, Infallible>(id.to_string()))?;
        change(&mut spec)?;
        let if_match = [("if-match", format!("\"{revision}\""))];
        match api.send_json::<_, PoolView>(Method::PUT, &path, &spec, &if_match).await {
            Ok(_) => {
                println!("Updated pool {pool}");
                return Ok(());
            }
            Err(e) if is_conflict(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    anyhow::bail!("pool {pool} keeps changing under us; try again")
}

fn pool_path(name: &str) -> Result<String> {
    Ok(format!("/v1/pools/{}", path_segment("pool", name)?))
}

/// A flag's value that the API spells as an enum (`round-robin`, `https`).
fn parse_name<T: DeserializeOwned>(flag: &str, value: &str) -> Result<T> {
    serde_json::from_value(Value::String(value.to_owned())).with_context(|| format!("{flag} {value}"))
}

fn push_origin(spec: &mut PoolSpec<String>, tunnel: &str, weight: u32, enabled: bool) {
    spec.origins.push(PoolOrigin {
        tunnel: tunnel.to_owned(),
        weight,
        enabled,
    });
}

/// The UUID of the pool origin named `tunnel` (by name or UUID), as [`edit`] spells it.
fn find_origin(pool: &PoolView, tunnel: &str) -> Option<String> {
    pool.origins
        .iter()
        .map(|o| (o.name.as_deref(), o.tunnel.to_string()))
        .find(|(name, id)| *name == Some(tunnel) || id == tunnel)
        .map(|(_, id)| id)
}

/// [`find_origin`] in the pool as it is now.
async fn origin_id(api: &ApiClient, pool: &str, tunnel: &str) -> Result<String> {
    let view: PoolView = api.get(&pool_path(pool)?).await?;
    find_origin(&view, tunnel).with_context(|| format!("{tunnel} is not an origin of pool {pool}"))
}

fn steering<T>(spec: &PoolSpec<T>) -> String {
    let steering = api_name(&spec.steering);
    match &spec.hash_on {
        Some(key) => format!("{steering} ({})", api_name(key)),
        None => steering,
    }
}

fn show(pool: &PoolView, output: Output) -> Result<()> {
    if !matches!(output, Output::Table) {
        return print_value(output, pool);
    }
    let spec = &pool.spec;
    let affinity = match spec.affinity_ttl_secs {
        Some(ttl) => format!("cookie, {ttl}s"),
        None => "off".into(),
    };
    let fallback = spec.fallback.as_deref().unwrap_or("none");
    println!("POOL:      {}", pool.name);
    println!("STEERING:  {}", steering(spec));
    println!("FALLBACK:  {fallback}");
    println!("AFFINITY:  {affinity}");
    let monitor = match &spec.monitor {
        Some(m) => describe_monitor(m),
        None => "none (passive health only)".into(),
    };
    println!("MONITOR:   {monitor}\n");
    let mut rows = Vec::new();
    for origin in &pool.origins {
        for health in &origin.health {
            let state = match (health.healthy, &health.reason) {
                (Some(true), _) => "healthy".to_owned(),
                (Some(false), Some(reason)) => format!("unhealthy: {reason}"),
                (_, Some(reason)) if !reason.is_empty() => reason.clone(),
                _ => "unknown".to_owned(),
            };
            rows.push(vec![
                origin.name.clone().unwrap_or_default(),
                origin.tunnel.to_string(),
                origin.weight.to_string(),
                origin.enabled.to_string(),
                health.edge.clone(),
                state,
            ]);
        }
    }
    print_items(
        output,
        &rows,
        &["TUNNEL", "ID", "WEIGHT", "ENABLED", "EDGE", "HEALTH"],
        Vec::clone,
    )
}

fn describe_monitor(m: &Monitor) -> String {
    let mut line = format!(
        "{} {} {} every {}s, expect {} (timeout {}s, {} up / {} down)",
        api_name(&m.kind),
        m.method,
        m.path,
        m.interval_secs,
        m.expected_codes,
        m.timeout_secs,
        m.healthy_threshold,
        m.unhealthy_threshold,
    );
    if let Some(body) = &m.expected_body {
        line.push_str(&format!(", body contains {body:?}"));
    }
    line
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use burrow_api::OriginView;
    use burrow_api::pools::Steering;
    use burrow_protocol::TunnelId;

    use super::*;

    #[test]
    fn settings_edit_the_typed_spec() {
        let mut spec: PoolSpec<String> = PoolSpec::default();
        let hashed = Settings {
            steering: Some("hash".into()),
            hash_on: Some("cookie:sid".into()),
            fallback: Some("spare".into()),
            ..Default::default()
        };
        hashed.apply(&mut spec).unwrap();
        assert_eq!(steering(&spec), "hash (cookie:sid)");
        assert_eq!(spec.fallback.as_deref(), Some("spare"));
        // A new steering drops what only applied to the old one; unset flags keep the rest.
        let round_robin = Settings {
            steering: Some("round-robin".into()),
            ..Default::default()
        };
        round_robin.apply(&mut spec).unwrap();
        assert_eq!((spec.steering, &spec.hash_on), (Steering::RoundRobin, &None));
        assert_eq!(spec.fallback.as_deref(), Some("spare"));
        let no_fallback = Settings {
            no_fallback: true,
            ..Default::default()
        };
        no_fallback.apply(&mut spec).unwrap();
        assert_eq!(spec.fallback, None);
        let bogus = Settings {
            steering: Some("fastest".into()),
            ..Default::default()
        };
        let error = format!("{:#}", bogus.apply(&mut spec).unwrap_err());
        assert!(
            error.contains("--steering fastest") && error.contains("round-robin"),
            "{error}"
        );
    }

    #[test]
    fn origins_are_found_by_name_or_uuid() {
        let id = TunnelId::new_random();
        let pool = PoolView {
            name: "web".into(),
            created: 0,
            spec: PoolSpec::default(),
            origins: vec![OriginView {
                tunnel: id,
                name: Some("east".into()),
                weight: 1,
                enabled: true,
                health: Vec::new(),
            }],
            revision: Some(7),
        };
        assert_eq!(find_origin(&pool, "east"), Some(id.to_string()));
        assert_eq!(find_origin(&pool, &id.to_string()), Some(id.to_string()));
        assert_eq!(find_origin(&pool, "west"), None);
    }

    #[test]
    fn a_default_monitor_is_described_with_its_defaults() {
        assert_eq!(
            describe_monitor(&Monitor::default()),
            "http GET / every 15s, expect 2xx (timeout 5s, 2 up / 2 down)"
        );
    }
}
