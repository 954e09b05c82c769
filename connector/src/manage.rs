//! The CLI verbs that manage persistent objects through the API: login, tunnel create / list /
//! info / delete / cleanup / route dns. (`tunnel run` is in [`crate::cli`].)

use anyhow::{Context, Result};
use comfy_table::{Table, presets::NOTHING};
use http::Method;
use serde_json::{Value, json};

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

pub fn login(api: String, token: String) -> Result<()> {
    let login = Login { api, token };
    let account = runtime()?.block_on(ApiClient::new(login.clone())?.call(Method::GET, "/v1/account", None))?;
    let path = login.save()?;
    println!(
        "Logged in to {} as account {} ({})",
        login.api,
        account["name"].as_str().unwrap_or("?"),
        account["id"].as_str().unwrap_or("?")
    );
    println!("Saved to {}", path.display());
    Ok(())
}

pub fn create(name: &str) -> Result<()> {
    let body = runtime()?.block_on(client()?.call(Method::POST, "/v1/tunnels", Some(json!({ "name": name }))))?;
    let credentials: Credentials =
        serde_json::from_value(body["credentials"].clone()).context("the API answered without credentials")?;
    let path = Credentials::default_path(credentials.tunnel_id);
    credentials.save(&path)?;
    println!("Created tunnel {name} with id {}", credentials.tunnel_id);
    println!("Credentials written to {} (keep it secret)", path.display());
    Ok(())
}

pub fn list(output: Output) -> Result<()> {
    let body = runtime()?.block_on(client()?.call(Method::GET, "/v1/tunnels?limit=1000", None))?;
    let items = body["items"].as_array().cloned().unwrap_or_default();
    print_items(output, &items, &["ID", "NAME", "CREATED", "CONNECTIONS"], |t| {
        vec![
            text(&t["id"]),
            text(&t["name"]),
            created(&t["created"]),
            connection_summary(&t["connections"]),
        ]
    })
}

pub fn info(tunnel: &str, output: Output) -> Result<()> {
    let path = format!("/v1/tunnels/{}", path_segment("tunnel", tunnel)?);
    let body = runtime()?.block_on(client()?.call(Method::GET, &path, None))?;
    if !matches!(output, Output::Table) {
        return print_value(output, &body);
    }
    println!(
        "NAME: {}\nID:   {}\nCREATED: {}\n",
        text(&body["name"]),
        text(&body["id"]),
        created(&body["created"])
    );
    let connections = body["connections"].as_array().cloned().unwrap_or_default();
    if connections.is_empty() {
        println!(
            "This tunnel has no active connections: run `burrow tunnel run {}`",
            text(&body["name"])
        );
        return Ok(());
    }
    print_items(
        output,
        &connections,
        &["CONNECTOR ID", "INDEX", "EDGE", "ORIGIN IP", "VERSION", "SINCE"],
        |c| {
            vec![
                text(&c["connector"]),
                text(&c["conn_index"]),
                text(&c["edge_node"]),
                text(&c["origin_ip"]),
                text(&c["version"]),
                created(&c["since"]),
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
    let body = runtime()?.block_on(client()?.call(Method::DELETE, &path, None))?;
    println!("Deleted tunnel {tunnel}");
    // Its credentials can serve nothing any more; a stale file could shadow a new tunnel of the
    // same name.
    if let Some(id) = body["deleted"].as_str().and_then(|id| id.parse().ok()) {
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
    let body = runtime()?.block_on(client()?.call(Method::DELETE, &path, None))?;
    println!("Removed {} connection record(s) of {tunnel}", text(&body["removed"]));
    Ok(())
}

pub fn route_dns(tunnel: &str, hostname: &str, overwrite: bool) -> Result<()> {
    let path = format!("/v1/routes/{}", path_segment("hostname", hostname)?);
    let body = json!({ "tunnel": tunnel, "overwrite": overwrite });
    runtime()?.block_on(client()?.call(Method::PUT, &path, Some(body)))?;
    println!("Added route: {hostname} → tunnel {tunnel}");
    Ok(())
}

pub fn zones(output: Output) -> Result<()> {
    let body = runtime()?.block_on(client()?.call(Method::GET, "/v1/zones", None))?;
    if !matches!(output, Output::Table) {
        return print_value(output, &body);
    }
    let items = body["items"].as_array().cloned().unwrap_or_default();
    let claims = body["claims"].as_array().cloned().unwrap_or_default();
    if items.is_empty() && claims.is_empty() {
        println!("No zones: ask the edge's operator for one, or claim one with `burrow zone add example.com`");
        return Ok(());
    }
    print_items(output, &items, &["ZONE", "SOURCE", "CREATED"], |z| {
        vec![text(&z["zone"]), text(&z["source"]), created(&z["created"])]
    })?;
    for claim in &claims {
        println!(
            "pending: {} — publish TXT {} = {:?}, then `burrow zone verify {0}`",
            text(&claim["zone"]),
            text(&claim["txt_name"]),
            text(&claim["txt_value"])
        );
    }
    Ok(())
}

pub fn zone_add(zone: &str) -> Result<()> {
    let body = json!({ "zone": zone });
    let claim = runtime()?.block_on(client()?.call(Method::POST, "/v1/zones", Some(body)))?;
    println!(
        "Claimed {}. Prove it is yours with this DNS record:",
        text(&claim["zone"])
    );
    println!("  {}  TXT  \"{}\"", text(&claim["txt_name"]), text(&claim["txt_value"]));
    println!("then run `burrow zone verify {}`.", text(&claim["zone"]));
    Ok(())
}

pub fn zone_verify(zone: &str) -> Result<()> {
    let path = format!("/v1/zones/{}/verify", path_segment("zone", zone)?);
    let zone = runtime()?.block_on(client()?.call(Method::POST, &path, None))?;
    println!(
        "Zone {} is yours: route its hostnames with `burrow tunnel route dns`",
        text(&zone["zone"])
    );
    Ok(())
}

pub fn zone_delete(zone: &str, force: bool) -> Result<()> {
    let path = format!(
        "/v1/zones/{}{}",
        path_segment("zone", zone)?,
        if force { "?force=true" } else { "" }
    );
    runtime()?.block_on(client()?.call(Method::DELETE, &path, None))?;
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
    match runtime()?.block_on(ApiClient::new(login)?.call(Method::GET, &path, None)) {
        Ok(body) => Ok(body["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .map_or(Resolved::Unknown(None), Resolved::Id)),
        Err(e) if crate::api_client::is_not_found(&e) => Ok(Resolved::NotFound),
        Err(e) => Ok(Resolved::Unknown(Some(e))),
    }
}

pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Unix seconds as RFC 3339 (UTC).
fn created(v: &Value) -> String {
    v.as_u64()
        .map(|secs| {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string()
        })
        .unwrap_or_default()
}

/// `2xedge-a, 1xedge-b`, like cloudflared's CONNECTIONS column.
fn connection_summary(v: &Value) -> String {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for c in v.as_array().into_iter().flatten() {
        *counts.entry(text(&c["edge_node"])).or_default() += 1;
    }
    counts
        .iter()
        .map(|(edge, n)| format!("{n}x{edge}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn print_value(output: Output, value: &Value) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => print!("{}", serde_yaml_ng::to_string(value)?),
        Output::Table => println!("{value}"),
    }
    Ok(())
}

pub(crate) fn print_items(
    output: Output,
    items: &[Value],
    header: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) -> Result<()> {
    if !matches!(output, Output::Table) {
        return print_value(output, &Value::Array(items.to_vec()));
    }
    let mut table = Table::new();
    table.load_preset(NOTHING).set_header(header.to_vec());
    for item in items {
        table.add_row(row(item));
    }
    println!("{table}");
    Ok(())
}
