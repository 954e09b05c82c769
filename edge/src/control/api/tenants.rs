//! The tenants' API: one handler per resource and method. Bodies and answers are
//! `burrow_api`'s types (see that crate for the table of endpoints).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use burrow_api::{
    Account, ClaimZone, CreateTunnel, CreatedTunnel, Deleted, DeletedVersions, Items, OriginHealthView, OriginView,
    Page, PluginInfo, PluginKind, PluginVersion, PoolView, PutPlugins, PutRoute, Removed, Route, RouteAt, Tunnel, Zone,
    ZoneClaimView, Zones,
};
use burrow_protocol::{AccountId, Credentials};
use http::{HeaderMap, StatusCode, header};
use serde::Deserialize;

use super::body::{JsonBody, read};
use super::{ApiError, Tenant, control};
use crate::EdgeState;
use crate::control::health_monitor::{HealthReport, origin_report};
use crate::control::plugin_catalog::MAX_PLUGIN_SIZE;
use crate::control::resources::{ControlPlane, CpError, PoolDoc, RouteTo};
use crate::plugins::binding::PluginBinding;
use crate::plugins::host::{MAX_REUSE, UploadBusy};
use crate::pools::pool::PoolSpec;

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// A node whose last health report is older than this is shown as stale.
const STALE_HEALTH: Duration = Duration::from_secs(180);

type Api<T> = Result<Json<T>, ApiError>;
type Created<T> = Result<(StatusCode, Json<T>), ApiError>;
type S = State<Arc<EdgeState>>;

pub fn routes() -> Router<Arc<EdgeState>> {
    Router::new()
        .route("/v1/account", get(account))
        .route("/v1/tunnels", get(list_tunnels).post(create_tunnel))
        .route("/v1/tunnels/{reference}", get(tunnel).delete(delete_tunnel))
        .route("/v1/tunnels/{reference}/connections", delete(cleanup_connections))
        .route("/v1/routes", get(list_routes))
        .route("/v1/routes/{hostname}", get(route).put(put_route).delete(delete_route))
        .route("/v1/routes/{hostname}/plugins", put(put_route_plugins))
        .route("/v1/plugins", get(list_plugins))
        .route("/v1/plugins/{name}", put(upload_plugin).delete(delete_plugin))
        .route("/v1/plugins/{name}/{version}", delete(delete_plugin_version))
        .route("/v1/pools", get(list_pools))
        .route("/v1/pools/{name}", get(pool).put(put_pool).delete(delete_pool))
        .route("/v1/zones", get(zones).post(claim_zone))
        .route("/v1/zones/{zone}/verify", post(verify_zone))
        .route("/v1/zones/{zone}", delete(delete_zone))
}

/// The control plane and the caller's account, for a tenant handler.
struct Ctx<'a> {
    state: &'a EdgeState,
    cp: &'a ControlPlane,
    account: AccountId,
}

impl<'a> Ctx<'a> {
    fn new(state: &'a EdgeState, Tenant(account): Tenant) -> Result<Self, ApiError> {
        Ok(Self {
            state,
            cp: control(state)?,
            account,
        })
    }
}

/// Query parameters, as an [`ApiError`] when they do not parse.
struct Params<T>(T);

impl<T: for<'de> Deserialize<'de> + Send, St: Send + Sync> FromRequestParts<St> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &St) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(query)
            .map(Params)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", format!("query string: {e}")))
    }
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    after: Option<String>,
}

#[derive(Deserialize)]
struct ForceQuery {
    #[serde(default)]
    force: bool,
}

// --- account -------------------------------------------------------------------------------

async fn account(State(state): S, Extension(tenant): Extension<Tenant>) -> Api<Account> {
    let ctx = Ctx::new(&state, tenant)?;
    Ok(Json(ctx.cp.account(ctx.account).await?))
}

// --- tunnels -------------------------------------------------------------------------------

/// A tunnel as its owner sees it: no secret hash, its live connections.
async fn tunnel_view(cp: &ControlPlane, t: &crate::control::resources::Tunnel) -> Result<Tunnel, ApiError> {
    Ok(Tunnel {
        id: t.id,
        name: t.name.clone(),
        created: t.created,
        connections: cp.connections(t.id).await?,
    })
}

async fn list_tunnels(
    State(state): S,
    Extension(tenant): Extension<Tenant>,
    Params(query): Params<ListQuery>,
) -> Api<Page<Tunnel>> {
    let ctx = Ctx::new(&state, tenant)?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let tunnels = ctx.cp.list_tunnels(ctx.account, query.after.as_deref(), limit).await?;
    let mut items = Vec::with_capacity(tunnels.len());
    for t in &tunnels {
        items.push(tunnel_view(ctx.cp, t).await?);
    }
    let next = (tunnels.len() == limit)
        .then(|| tunnels.last().map(|t| t.id.to_string()))
        .flatten();
    Ok(Json(Page { items, next }))
}

async fn create_tunnel(
    State(state): S,
    Extension(tenant): Extension<Tenant>,
    JsonBody(body): JsonBody<CreateTunnel>,
) -> Created<CreatedTunnel> {
    let ctx = Ctx::new(&state, tenant)?;
    let (tunnel, secret) = ctx.cp.create_tunnel(ctx.account, &body.name).await?;
    tracing::info!(account = %ctx.account, tunnel = %tunnel.id, name = %tunnel.name, "tunnel created");
    let credentials = Credentials {
        account: ctx.account,
        tunnel_id: tunnel.id,
        tunnel_name: tunnel.name.clone(),
        secret,
        edges: state.tunnel_addrs(),
        edge_ca: state.config.tls.self_signed_pem.clone(),
    };
    let tunnel = Tunnel {
        id: tunnel.id,
        name: tunnel.name,
        created: tunnel.created,
        connections: Vec::new(),
    };
    Ok((StatusCode::CREATED, Json(CreatedTunnel { tunnel, credentials })))
}

async fn tunnel(State(state): S, Extension(tenant): Extension<Tenant>, Path(reference): Path<String>) -> Api<Tunnel> {
    let ctx = Ctx::new(&state, tenant)?;
    let tunnel = ctx.cp.find_tunnel(ctx.account, &reference).await?;
    Ok(Json(tunnel_view(ctx.cp, &tunnel).await?))
}

async fn delete_tunnel(
    State(state): S,
    Extension(tenant): Extension<Tenant>,
    Path(reference): Path<String>,
    Params(query): Params<ForceQuery>,
) -> Api<Deleted> {
    let ctx = Ctx::new(&state, tenant)?;
    let tunnel = ctx.cp.delete_tunnel(ctx.account, &reference, query.force).await?;
    tracing::info!(account = %ctx.account, tunnel = %tunnel.id, force = query.force, "tunnel deleted");
    Ok(Json(Deleted {
        deleted: tunnel.id.to_string(),
    }))
}

async fn cleanup_connections(
    State(state): S,
    Extension(tenant): Extension<Tenant>,
    Path(reference): Path<String>,
) -> Api<Removed> {
    let ctx = Ctx::new(&state, tenant)?;
    let live = |c: &burrow_api::Connection| state.registry.holds(c.tunnel, c.connection_id);
    let removed = ctx.cp.cleanup_connections(ctx.account, &reference, live).await?;
    Ok(Json(Removed { removed }))
}

// --- routes --------------------------------------------------------------------------------

async fn list_routes(State(state): S, Extension(tenant): Extension<Tenant>) -> Api<Items<Route>> {
    let ctx = Ctx::new(&state, tenant)?;
    Ok(Json(Items {
        items: ctx.cp.list_routes(ctx.account).await?,
    }))
}

async fn route(State(state): S, Extension(tenant): Extension<Tenant>, Path(hostname): Path<String>) -> Api<RouteAt> {
    let ctx = Ctx::new(&state, tenant)?;
    let (route, revision) = ctx.cp.route_doc(ctx.account, &hostname).await?;
    Ok(Json(RouteAt { route, revision }))
}

async fn put_route(
    State(state): S,
    Extension(tenant): Extension<Tenant>,
    Path(hostname): Path<String>,
    JsonBody(mut body): JsonBody<PutRoute>,
) -> Api<Route> {
    let ctx = Ctx::new(&state, tenant)?;
    let to = match (&body.tunnel, &body.pool) {
        (Some(tunnel), None) => RouteTo::Tunnel(tunnel),
        (None, Some(pool)) => RouteTo::Pool(pool),
        _ => {
            return Err(ApiError::invalid(
                "tunnel",
                "set exactly one of \"tunnel\" and \"pool\"",
            ));
        }
    };
    for binding in body.plugins.iter_mut().flatten() {
        check_plugin(&ctx, binding, false).await?;
    }
    let route = ctx
        .cp
        .route(ctx.account, &hostname, to, body.overwrite, body.plugins.clone())
        .await?;
    tracing::info!(account = %ctx.account, hostname = %route.hostname, tunnel = ?route.tunnel, pool = ?route.pool, "route set");
    Ok(Json(route))
}

async fn put_route_plugins(
    State(state): S,
    Extension(tenant): Extension<Tenant>,
    Path(hostname): Path<String>,
    headers: HeaderMap,
    JsonBody(mut body): JsonBody<PutPlugins>,
) -> Api<Route> {
    let ctx = Ctx::new(&state, tenant)?;
    let expect = precondition(&headers)?;
    for binding in &mut body.plugins {
        check_plugin(&ctx, binding, false).await?;
    }
    let route = ctx
        .cp
        .set_route_plugins(ctx.account, &hostname, body.plugins, expect)
        .await?;
    tracing::info!(account = %ctx.account, hostname = %route.hostname, plugins = route.plugins.len(), "route plugins set");
    Ok(Json(route))
}

async fn delete_route(
    State(state): S,
    Extension(tenant): Extension<Tenant>,
    Path(hostname): Path<String>,
) -> Api<Deleted> {
    let ctx = Ctx::new(&state, tenant)?;
    ctx.cp.delete_route(ctx.account, &hostname).await?;
    tracing::info!(account = %ctx.account, %hostname, "route deleted");
    Ok(Json(Deleted { deleted: hostname }))
}

// --- plugins -------------------------------------------------------------------------------

async fn list_plugins(State(state): S, Extension(tenant): Extension<Tenant>) -> Api<Items<PluginInfo>> {
    let ctx = Ctx::new(&state, tenant)?;
    let versions = ctx.cp.plugin_versions(ctx.account, None).await?;
    let routes = ctx.cp.list_routes(ctx.account).await?;
    let pools = ctx.cp.list_pools(ctx.account).await?;
    let items = versions
        .into_iter()
        .map(|version| {
            let mut bound: Vec<String> = routes
                .iter()
                .filter(|r| r.plugins.iter().any(|b| version.is_bound_by(b)))
                .map(|r| format!("route {}", r.hostname))
                .collect();
            bound.extend(
                pools
                    .iter()
                    .filter(|p| p.spec.balancer.as_ref().is_some_and(|b| version.is_bound_by(b)))
                    .map(|p| format!("pool {}", p.name)),
            );
            PluginInfo { version, bound }
        })
        .collect();
    Ok(Json(Items { items }))
}

async fn upload_plugin(
    State(state): S,
    Extension(tenant): Extension<Tenant>,
    Path(name): Path<String>,
    req: Request,
) -> Created<PluginVersion> {
    let ctx = Ctx::new(&state, tenant)?;
    crate::control::resources::validate_name("name", &name)?;
    let wasm = read(req, MAX_PLUGIN_SIZE, Duration::from_secs(120)).await?;
    check_component_header(&wasm)?;
    let host = state.config.plugins.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_plugin_host",
            "this edge runs no plugin host; upload to an edge that serves the store",
        )
    })?;
    if host.is_balancer(&name).is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("this edge provides a plugin named {name:?} to every account; upload yours under another name"),
        ));
    }
    // Limits first, and the same bytes again are the version they already are: only then spend
    // a core compiling.
    let sha256 = crate::plugins::version::sha256_hex(&wasm);
    if let Some(existing) = ctx.cp.check_upload(ctx.account, &name, &sha256).await? {
        return Ok((StatusCode::OK, Json(existing)));
    }
    let turn = host.queue_upload(ctx.account).map_err(|busy| {
        let error = match busy {
            UploadBusy::Account => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "upload_in_progress",
                "another upload of this account is being compiled; send this one when it has finished",
            ),
            UploadBusy::Edge => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "this edge is compiling many uploads; retry in a few seconds",
            ),
        };
        error.retry_after(Duration::from_secs(2))
    })?;
    let wasm: Arc<[u8]> = wasm.to_vec().into();
    let kind = host
        .check_upload(&turn, &name, wasm.clone())
        .await
        .map_err(|e| ApiError {
            field: Some("wasm"),
            ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_plugin", format!("{e:#}"))
        })?;
    let (version, created) = ctx.cp.put_plugin(ctx.account, &name, &wasm, kind).await?;
    tracing::info!(account = %ctx.account, plugin = %name, version = version.version, sha256 = %version.sha256, created, "plugin uploaded");
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(version)))
}

async fn delete_plugin(
    State(state): S,
    Extension(tenant): Extension<Tenant>,
    Path(name): Path<String>,
) -> Api<DeletedVersions> {
    let ctx = Ctx::new(&state, tenant)?;
    let deleted = ctx.cp.delete_plugin(ctx.account, &name, None).await?;
    tracing::info!(account = %ctx.account, plugin = %name, versions = deleted.len(), "plugin deleted");
    Ok(Json(DeletedVersions { deleted }))
}

async fn delete_plugin_version(
    State(state): S,
    Extension(tenant): Extension<Tenant>,
    Path((name, version)): Path<(String, String)>,
) -> Api<DeletedVersions> {
    let ctx = Ctx::new(&state, tenant)?;
    let version = version.parse::<u32>().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no version {version:?} of plugin {name:?}"),
        )
    })?;
    let deleted = ctx.cp.delete_plugin(ctx.account, &name, Some(version)).await?;
    tracing::info!(account = %ctx.account, plugin = %name, version, "plugin version deleted");
    Ok(Json(DeletedVersions { deleted }))
}

/// Refuse what is plainly not a component before compiling anything.
fn check_component_header(wasm: &[u8]) -> Result<(), ApiError> {
    let invalid = |message: &str| ApiError {
        field: Some("wasm"),
        ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_plugin", message)
    };
    match wasm.get(..8) {
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => Ok(()),
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Err(invalid(
            "this is a core WebAssembly module, not a component: build the plugin with \
             `cargo build --release --target wasm32-wasip2`",
        )),
        _ => Err(invalid(
            "not a WebAssembly component (the file does not start with \\0asm)",
        )),
    }
}

/// A binding must name a plugin the account uploaded (its version is pinned here: the latest
/// unless given) or one loaded on this edge by the operator, of the right kind: a binding that
/// could not run is refused here instead of failing requests later.
async fn check_plugin(ctx: &Ctx<'_>, binding: &mut PluginBinding, balancer: bool) -> Result<(), ApiError> {
    let invalid = |message: String| ApiError::invalid("plugins", message);
    let name = binding.plugin.clone();
    if binding.reuse > MAX_REUSE {
        return Err(invalid(format!("reuse is at most {MAX_REUSE} requests per instance")));
    }
    let kind = match ctx.cp.plugin_version(ctx.account, &name, binding.version).await {
        Ok(uploaded) => {
            binding.version = Some(uploaded.version);
            Some(uploaded.kind == PluginKind::Balancer)
        }
        Err(CpError::NotFound(_)) if binding.version.is_none() => ctx
            .state
            .config
            .plugins
            .as_ref()
            .and_then(|host| host.is_balancer(&name)),
        Err(CpError::NotFound(what)) => {
            return Err(invalid(format!("{what} does not exist; see `burrow plugin list`")));
        }
        Err(e) => return Err(e.into()),
    };
    match (kind, balancer) {
        (None, _) => Err(invalid(format!(
            "plugin {name:?} does not exist: upload it with `burrow plugin upload {name} FILE.wasm`"
        ))),
        (Some(true), false) => Err(invalid(format!(
            "plugin {name:?} is a balancer: bind it to a pool (steering: plugin), not to a route"
        ))),
        (Some(false), true) => Err(invalid(format!(
            "plugin {name:?} has request hooks, not select-origin: it cannot balance a pool"
        ))),
        _ => Ok(()),
    }
}

/// `If-None-Match: *` → must not exist (`Some(0)`); `If-Match: "REV"` → unchanged since REV.
fn precondition(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    if headers.get(header::IF_NONE_MATCH).is_some_and(|v| v == "*") {
        return Ok(Some(0));
    }
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().trim_matches('"').parse::<u64>().ok())
        .filter(|&rev| rev > 0)
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_precondition",
                "If-Match must be a revision like \"42\"",
            )
        })
}

// --- pools ---------------------------------------------------------------------------------

async fn list_pools(State(state): S, Extension(tenant): Extension<Tenant>) -> Api<Items<PoolView>> {
    let ctx = Ctx::new(&state, tenant)?;
    let pools = ctx.cp.list_pools(ctx.account).await?;
    let reports = ctx.cp.node_health().await?;
    Ok(Json(Items {
        items: pools.iter().map(|p| pool_view(&state, p, None, &reports)).collect(),
    }))
}

async fn pool(State(state): S, Extension(tenant): Extension<Tenant>, Path(name): Path<String>) -> Api<PoolView> {
    let ctx = Ctx::new(&state, tenant)?;
    let (pool, revision) = ctx.cp.pool(ctx.account, &name).await?;
    let reports = ctx.cp.node_health().await?;
    Ok(Json(pool_view(&state, &pool, Some(revision), &reports)))
}

async fn put_pool(
    State(state): S,
    Extension(tenant): Extension<Tenant>,
    Path(name): Path<String>,
    headers: HeaderMap,
    JsonBody(mut spec): JsonBody<PoolSpec<String>>,
) -> Api<PoolView> {
    let ctx = Ctx::new(&state, tenant)?;
    let expect = precondition(&headers)?;
    if let Some(balancer) = &mut spec.balancer {
        check_plugin(&ctx, balancer, true).await?;
    }
    let pool = ctx.cp.put_pool(ctx.account, &name, spec, expect).await?;
    tracing::info!(account = %ctx.account, pool = %name, origins = pool.spec.origins.len(), "pool set");
    Ok(Json(pool_view(&state, &pool, None, &[])))
}

async fn delete_pool(State(state): S, Extension(tenant): Extension<Tenant>, Path(name): Path<String>) -> Api<Deleted> {
    let ctx = Ctx::new(&state, tenant)?;
    ctx.cp.delete_pool(ctx.account, &name).await?;
    tracing::info!(account = %ctx.account, pool = %name, "pool deleted");
    Ok(Json(Deleted { deleted: name }))
}

/// A pool with each origin's tunnel name and its health as each edge sees it: this edge's live
/// view, then the last report of every other edge.
fn pool_view(state: &EdgeState, pool: &PoolDoc, revision: Option<u64>, reports: &[HealthReport]) -> PoolView {
    let table = state.routes.load();
    let live = table.pool(pool.account, &pool.name).map(|(_, p)| p);
    let now = crate::control::resources::now();
    let this_edge = &state.config.node_name;
    let origins = pool
        .spec
        .origins
        .iter()
        .map(|o| {
            let here = live
                .and_then(|p| {
                    let i = p.spec.origins.iter().position(|x| x.tunnel == o.tunnel)?;
                    Some(origin_report(state, p, i))
                })
                .map_or_else(
                    || health_view(this_edge, None, Some("not applied on this edge yet".into())),
                    |r| health_view(this_edge, Some(r.healthy), r.reason),
                );
            let mut health = vec![here];
            for report in reports.iter().filter(|r| &r.node != this_edge) {
                let seen = report
                    .pools
                    .iter()
                    .find(|p| p.account == pool.account && p.pool == pool.name)
                    .and_then(|p| p.origins.iter().find(|x| x.tunnel == o.tunnel));
                let age = now.saturating_sub(report.updated);
                health.push(match seen {
                    _ if age > STALE_HEALTH.as_secs() => {
                        health_view(&report.node, None, Some(format!("stale: last report {age}s ago")))
                    }
                    Some(r) => health_view(&report.node, Some(r.healthy), r.reason.clone()),
                    None => health_view(&report.node, None, Some("not applied on this edge yet".into())),
                });
            }
            OriginView {
                tunnel: o.tunnel,
                name: table.tunnel(&o.tunnel).map(|t| t.name.clone()),
                weight: o.weight,
                enabled: o.enabled,
                health,
            }
        })
        .collect();
    PoolView {
        name: pool.name.clone(),
        created: pool.created,
        spec: pool.spec.clone(),
        origins,
        revision,
    }
}

fn health_view(edge: &str, healthy: Option<bool>, reason: Option<String>) -> OriginHealthView {
    OriginHealthView {
        edge: edge.to_owned(),
        healthy,
        reason,
    }
}

// --- zones ---------------------------------------------------------------------------------

async fn zones(State(state): S, Extension(tenant): Extension<Tenant>) -> Api<Zones> {
    let ctx = Ctx::new(&state, tenant)?;
    let items = ctx.cp.list_zones(Some(ctx.account)).await?;
    let claims = ctx
        .cp
        .zone_claims(ctx.account)
        .await?
        .iter()
        .map(|c| ZoneClaimView {
            zone: c.zone.clone(),
            txt_name: c.record_name(),
            txt_value: c.record_value(),
        })
        .collect();
    Ok(Json(Zones { items, claims }))
}

async fn claim_zone(
    State(state): S,
    Extension(tenant): Extension<Tenant>,
    JsonBody(body): JsonBody<ClaimZone>,
) -> Created<ZoneClaimView> {
    let ctx = Ctx::new(&state, tenant)?;
    if !state.config.self_service_zones {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "zones are assigned by this edge's operator: ask them to run \
                 `burrow-edge zone add --account {} {}`",
                ctx.account, body.zone
            ),
        ));
    }
    let claim = ctx.cp.claim_zone(ctx.account, &body.zone).await?;
    tracing::info!(account = %ctx.account, zone = %claim.zone, "zone claimed; waiting for its TXT record");
    let view = ZoneClaimView {
        zone: claim.zone.clone(),
        txt_name: claim.record_name(),
        txt_value: claim.record_value(),
    };
    Ok((StatusCode::ACCEPTED, Json(view)))
}

async fn verify_zone(State(state): S, Extension(tenant): Extension<Tenant>, Path(zone): Path<String>) -> Api<Zone> {
    let ctx = Ctx::new(&state, tenant)?;
    let zone = ctx.cp.verify_zone(ctx.account, &zone, state.config.dns_server).await?;
    tracing::info!(account = %ctx.account, zone = %zone.zone, "zone verified by its TXT record");
    Ok(Json(zone))
}

async fn delete_zone(
    State(state): S,
    Extension(tenant): Extension<Tenant>,
    Path(zone): Path<String>,
    Params(query): Params<ForceQuery>,
) -> Api<Deleted> {
    let ctx = Ctx::new(&state, tenant)?;
    let zone = ctx.cp.remove_zone(Some(ctx.account), &zone, query.force).await?;
    tracing::info!(account = %ctx.account, zone = %zone.zone, force = query.force, "zone removed");
    Ok(Json(Deleted { deleted: zone.zone }))
}
