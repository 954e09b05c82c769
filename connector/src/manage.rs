//! The CLI verbs that manage persistent objects through the API: login, tunnel create / list /
//! info / delete / cleanup / route dns / list / delete. (`tunnel run` is in [`crate::cli`].)

use std::path::Path;

use anyhow::{Context, Result};
use burrow_api::{
    Account, ClaimZone, Connection, CreateTunnel, CreatedTunnel, Deleted, Items, Page, PutRoute, Removed, Route,
    Tunnel, Zone, ZoneClaimView, Zones,
};
use comfy_table::{Table, presets::NOTHING};
use http::Method;
use serde::Serialize;
use serde_json::Value;

use crate::api_client::{ApiClient, Login};
use burrow_tunnel::credentials::{Credentials, CredentialsFile};

/// How list-like commands print.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn client() -> Result<ApiClient> {
    ApiClient::new(Login::load()?)
}

/// Names and hostnames go into URL paths; refuse anything that would change the path.
pub(crate) fn path_segment(what: &str, value: &str) -> Result<String> {
    anyhow::ensure!(
        !value.is_empty()
            && value.len() <= 253
            && value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.*".contains(c)),
        "{what} {value:?} may only contain letters, digits, '-', '_', '.' and '*'"
    );
    Ok(value.to_owned())
}

pub fn login(api: String, token: String, api_ca: Option<&Path>) -> Result<()> {
    let api_ca = match api_ca {
        Some(path) => {
            Some(String::from_utf8(burrow_tunnel::tls::read_ca_file(path)?).context("--api-ca is not PEM text")?)
        }
        None => None,
    };
    let login = Login { api, token, api_ca };
    let account: Account = runtime()?.block_on(ApiClient::new(login.clone())?.get("/v1/account"))?;
    let path = login.save()?;
    println!(
        "Logged in to {} as account {} ({})",
        login.api, account.name, account.id
    );
    println!("Saved to {}", path.display());
    Ok(())
}

pub fn create(name: &str) -> Result<()> {
    let body = CreateTunnel { name: name.to_owned() };
    let created: CreatedTunnel = runtime()?.block_on(client()?.send_json(Method::POST, "/v1/tunnels", &body, &[]))?;
    let credentials = created.credentials;
    let path = Credentials::default_path(credentials.tunnel_id);
    credentials.save(&path)?;
    println!("Created tunnel {name} with id {}", credentials.tunnel_id);
    println!("Credentials written to {} (keep it secret)", path.display());
    Ok(())
}

pub fn list(output: Output) -> Result<()> {
    let page: Page<Tunnel> = runtime()?.block_on(client()?.get("/v1/tunnels?limit=1000"))?;
    print_items(output, &page.items, &["ID", "NAME", "CREATED", "CONNECTIONS"], |t| {
        vec![
            t.id.to_string(),
            t.name.clone(),
            created(t.created),
            connection_summary(&t.connections),
        ]
    })
}

pub fn info(tunnel: &str, output: Output) -> Result<()> {
    let path = format!("/v1/tunnels/{}", path_segment("tunnel", tunnel)?);
    let tunnel: Tunnel = runtime()?.block_on(client()?.get(&path))?;
    if !matches!(output, Output::Table) {
        return print_value(output, &tunnel);
    }
    println!(
        "NAME: {}\nID:   {}\nCREATED: {}\n",
        tunnel.name,
        tunnel.id,
        created(tunnel.created)
    );
    if tunnel.connections.is_empty() {
        println!(
            "This tunnel has no active connections: run `burrow tunnel run {}`",
            tunnel.name
        );
        return Ok(());
    }
    print_items(
        output,
        &tunnel.connections,
        &["CONNECTOR ID", "INDEX", "EDGE", "ORIGIN IP", "VERSION", "SINCE"],
        |c| {
            vec![
                c.connector.clone(),
                c.conn_index.to_string(),
                c.edge_node.clone(),
                c.origin_ip.clone(),
                c.version.clone(),
                created(c.since),
            ]
        },
    )
}

pub fn delete(tunnel: &str, force: bool) -> Result<()> {
    let path = format!(
        "/v1/tunnels/{}{}",
        path_segment("tunnel", tunnel)?,
        if force { "?force=true" } else { "" }
    );
    let deleted: Deleted = runtime()?.block_on(client()?.request(Method::DELETE, &path))?;
    println!("Deleted tunnel {tunnel}");
    // Its credentials can serve nothing any more; a stale file could shadow a new tunnel of the
    // same name.
    if let Ok(id) = deleted.deleted.parse() {
        let file = Credentials::default_path(id);
        match std::fs::remove_file(&file) {
            Ok(()) => println!("Removed its credentials file {}", file.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("warning: could not remove {}: {e}", file.display()),
        }
    }
    Ok(())
}

pub fn cleanup(tunnel: &str) -> Result<()> {
    let path = format!("/v1/tunnels/{}/connections", path_segment("tunnel", tunnel)?);
    let cleaned: Removed = runtime()?.block_on(client()?.request(Method::DELETE, &path))?;
    println!("Removed {} connection record(s) of {tunnel}", cleaned.removed);
    Ok(())
}

pub fn route_dns(tunnel: &str, hostname: &str, overwrite: bool) -> Result<()> {
    let path = format!("/v1/routes/{}", path_segment("hostname", hostname)?);
    let body = PutRoute {
        tunnel: Some(tunnel.to_owned()),
        overwrite,
        ..Default::default()
    };
    let _: Route = runtime()?.block_on(client()?.send_json(Method::PUT, &path, &body, &[]))?;
    println!("Added route: {hostname} → tunnel {tunnel}");
    Ok(())
}

/// `burrow tunnel route list`: every hostname the account routes, and where to.
pub fn route_list(output: Output) -> Result<()> {
    let (runtime, client) = (runtime()?, client()?);
    let routes: Items<Route> = runtime.block_on(client.get("/v1/routes"))?;
    if !matches!(output, Output::Table) {
        return print_value(output, &routes);
    }
    if routes.items.is_empty() {
        println!("No routes yet: route a hostname with `burrow tunnel route dns TUNNEL HOSTNAME`");
        return Ok(());
    }
    let tunnels: Page<Tunnel> = runtime.block_on(client.get("/v1/tunnels?limit=1000"))?;
    let target = |r: &Route| match (&r.tunnel, &r.pool) {
        (Some(id), _) => match tunnels.items.iter().find(|t| t.id == *id) {
            Some(t) => format!("tunnel {}", t.name),
            None => format!("tunnel {id}"),
        },
        (None, Some(pool)) => format!("pool {pool}"),
        (None, None) => "?".to_owned(),
    };
    print_items(output, &routes.items, &["HOSTNAME", "TO", "PLUGINS", "CREATED"], |r| {
        vec![
            r.hostname.clone(),
            target(r),
            r.plugins.len().to_string(),
            created(r.created),
        ]
    })
}

/// `burrow tunnel route delete HOSTNAME`.
pub fn route_delete(hostname: &str) -> Result<()> {
    let path = format!("/v1/routes/{}", path_segment("hostname", hostname)?);
    let _: Deleted = runtime()?.block_on(client()?.request(Method::DELETE, &path))?;
    println!("Deleted route {hostname}");
    Ok(())
}

pub fn zones(output: Output) -> Result<()> {
    let zones: Zones = runtime()?.block_on(client()?.get("/v1/zones"))?;
    if !matches!(output, Output::Table) {
        return print_value(output, &zones);
    }
    if zones.items.is_empty() && zones.claims.is_empty() {
        println!("No zones: ask the edge's operator for one, or claim one with `burrow zone add example.com`");
        return Ok(());
    }
    print_items(output, &zones.items, &["ZONE", "SOURCE", "CREATED"], |z| {
        vec![z.zone.clone(), api_name(&z.source), created(z.created)]
    })?;
    for claim in &zones.claims {
        println!(
            "pending: {} — publish TXT {} = {:?}, then `burrow zone verify {0}`",
            claim.zone, claim.txt_name, claim.txt_value
        );
    }
    Ok(())
}

pub fn zone_add(zone: &str) -> Result<()> {
    let body = ClaimZone { zone: zone.to_owned() };
    let claim: ZoneClaimView = runtime()?.block_on(client()?.send_json(Method::POST, "/v1/zones", &body, &[]))?;
    println!("Claimed {}. Prove it is yours with this DNS record:", claim.zone);
    println!("  {}  TXT  \"{}\"", claim.txt_name, claim.txt_value);
    println!("then run `burrow zone verify {}`.", claim.zone);
    Ok(())
}

pub fn zone_verify(zone: &str) -> Result<()> {
    let path = format!("/v1/zones/{}/verify", path_segment("zone", zone)?);
    let zone: Zone = runtime()?.block_on(client()?.request(Method::POST, &path))?;
    println!(
        "Zone {} is yours: route its hostnames with `burrow tunnel route dns`",
        zone.zone
    );
    Ok(())
}

pub fn zone_delete(zone: &str, force: bool) -> Result<()> {
    let path = format!(
        "/v1/zones/{}{}",
        path_segment("zone", zone)?,
        if force { "?force=true" } else { "" }
    );
    let _: Deleted = runtime()?.block_on(client()?.request(Method::DELETE, &path))?;
    println!("Removed zone {zone}");
    Ok(())
}

/// What the API says of a tunnel name, when logged in.
pub enum Resolved {
    /// Not logged in, or the API cannot be reached (the error): fall back to local files.
    Unknown(Option<anyhow::Error>),
    Id(burrow_protocol::TunnelId),
    /// The account has no tunnel of that name.
    NotFound,
}

/// The UUID of a tunnel by name, from the API (for `tunnel run NAME`: the API knows which tunnel
/// the name means now, a credentials file may be left from a deleted one).
pub fn resolve_tunnel_id(tunnel: &str) -> Result<Resolved> {
    let Ok(login) = Login::load() else {
        return Ok(Resolved::Unknown(None));
    };
    let path = format!("/v1/tunnels/{}", path_segment("tunnel", tunnel)?);
    match runtime()?.block_on(ApiClient::new(login)?.get::<Tunnel>(&path)) {
        Ok(tunnel) => Ok(Resolved::Id(tunnel.id)),
        Err(e) if crate::api_client::is_not_found(&e) => Ok(Resolved::NotFound),
        Err(e) => Ok(Resolved::Unknown(Some(e))),
    }
}

/// How the API spells `value` (an enum such as a zone's source or a pool's steering), for tables.
pub(crate) fn api_name(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(name)) => name,
        _ => String::new(),
    }
}

/// Unix seconds as RFC 3339 (UTC).
fn created(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string()
}

/// `2xedge-a, 1xedge-b`, like cloudflared's CONNECTIONS column.
fn connection_summary(connections: &[Connection]) -> String {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for c in connections {
        *counts.entry(&c.edge_node).or_default() += 1;
    }
    counts
        .iter()
        .map(|(edge, n)| format!("{n}x{edge}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn print_value(output: Output, value: &impl Serialize) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => print!("{}", serde_yaml_ng::to_string(value)?),
        Output::Table => println!("{}", serde_json::to_string(value)?),
    }
    Ok(())
}

pub(crate) fn print_items<T: Serialize>(
    output: Output,
    items: &[T],
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> Result<()> {
    if !matches!(output, Output::Table) {
        return print_value(output, &items);
    }
    let mut table = Table::new();
    table.load_preset(NOTHING).set_header(header.to_vec());
    for item in items {
        table.add_row(row(item));
    }
    println!("{table}");
    Ok(())
}
