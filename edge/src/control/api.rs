//! The control-plane REST API under `/v1`, served on the admin listener.
//!
//! Bearer tokens identify the account; another account's objects are "not found", never
//! "forbidden" (no existence oracle). Errors are JSON `{"error": {"code", "message", "field"?}}`.
//!
//! | method | path | does |
//! |---|---|---|
//! | GET | /v1/account | the caller's account |
//! | GET, POST | /v1/tunnels | list (`?limit=&after=`), create `{"name"}` → credentials, shown once |
//! | GET, DELETE | /v1/tunnels/{name or id} | one tunnel with its connections; delete (`?force=true`) |
//! | DELETE | /v1/tunnels/{ref}/connections | drop stale connection records |
//! | GET | /v1/routes | the caller's hostname routes |
//! | GET, PUT, DELETE | /v1/routes/{hostname} | one route with its revision; route `{"tunnel" or "pool", "overwrite", "plugins"}`; unroute |
//! | PUT | /v1/routes/{hostname}/plugins | replace the route's plugin chain `{"plugins"}` (`If-Match: "REV"`) |
//! | GET | /v1/plugins | the caller's uploaded plugin versions, with what binds each |
//! | PUT | /v1/plugins/{name} | upload a component (body: the `.wasm`) as the next version |
//! | DELETE | /v1/plugins/{name}[/{version}] | delete every version, or one (refused while bound) |
//! | GET | /v1/plugin-wasm/{account}/{name}/{version} | node token: a plugin version's component, for edge-only nodes |
//! | GET, POST | /v1/zones | the caller's zones and pending claims; claim a zone `{"zone"}` (with `--self-service-zones`) → the TXT record to publish |
//! | POST | /v1/zones/{zone}/verify | prove a claim by its TXT record: the zone becomes the caller's |
//! | DELETE | /v1/zones/{zone} | give a zone up (`?force=true` deletes its routes with it) |
//! | GET | /v1/pools | the caller's pools |
//! | GET, PUT, DELETE | /v1/pools/{name} | one pool with each origin's health on this edge; create or replace (body: the pool spec; `If-Match: "REV"`, or `If-None-Match: *` to only create); delete |
//! | GET | /v1/watch | node token: NDJSON stream of routing snapshots, for edge-only nodes |
//! | PUT | /v1/health/{node} | node token: that node's view of every pool origin (for `pool show`) |

use std::convert::Infallible;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::EdgeState;
use crate::control::health_monitor::{HealthReport, origin_report};
use crate::control::plugin_catalog::MAX_PLUGIN_SIZE;
use crate::control::resources::{ControlPlane, CpError, PoolDoc, RouteTo, Tunnel};
use crate::plugins::binding::PluginBinding;
use crate::plugins::host::MAX_REUSE;
use crate::plugins::version::PluginKind;
use burrow_protocol::AccountId;

/// API request bodies are small JSON documents.
pub const MAX_BODY: usize = 64 * 1024;
/// Health reports of edge-only nodes list every pool origin.
const MAX_HEALTH_BODY: usize = 8 * 1024 * 1024;
/// A node whose last health report is older than this is shown as stale.
const STALE_HEALTH: Duration = Duration::from_secs(180);
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// Why a request failed, as the client sees it.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }
}

impl From<CpError> for ApiError {
    fn from(e: CpError) -> Self {
        match e {
            CpError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            CpError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            CpError::Forbidden(_) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string()),
            CpError::Unavailable(_) => ApiError::new(StatusCode::BAD_GATEWAY, "unavailable", e.to_string()),
            CpError::Invalid { field, reason } => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "invalid",
                message: format!("{field}: {reason}"),
                field: Some(field),
            },
            CpError::Store(_) | CpError::Corrupt { .. } => {
                tracing::error!("control plane: {e}");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the store failed; retry later",
                )
            }
        }
    }
}

type ApiResult = Result<(StatusCode, Value), ApiError>;

/// Body of API responses: a JSON document, or the `/v1/watch` stream.
pub type ApiBody = UnsyncBoxBody<Bytes, Infallible>;

/// Edge-only nodes reconnect when the watch stream is silent for longer than this.
pub const WATCH_HEARTBEAT: Duration = Duration::from_secs(15);

/// Serve one `/v1/...` request from `peer`.
pub async fn handle(state: &EdgeState, req: Request<Incoming>, peer: IpAddr) -> Response<ApiBody> {
    let client = client_address(&state.config.trusted_proxies, peer, req.headers());
    let token_id = bearer(&req)
        .and_then(crate::control::resources::token_id)
        .map(str::to_owned);
    // Someone is guessing this token's secret: it waits out a cool-down, checked or not.
    if let Some(wait) = state.auth_failures.cooling(token_id.as_deref()) {
        return too_many_failures(wait);
    }
    let response = serve(state, req).await;
    if response.status() == StatusCode::UNAUTHORIZED
        && let Some(wait) = state.auth_failures.failed(client, token_id.as_deref())
    {
        tracing::warn!(%client, "too many failed API authentications");
        return too_many_failures(wait);
    }
    response
}

fn too_many_failures(wait: Duration) -> Response<ApiBody> {
    let message = format!("too many failed authentications; retry in {}s", wait.as_secs() + 1);
    let mut response = error_response(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message));
    if let Ok(value) = http::HeaderValue::from_str(&(wait.as_secs() + 1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// The client a request is from: the peer, unless the peer is a trusted proxy, then the
/// nearest address in `X-Forwarded-For` that is not one (what a proxy in front of the API saw).
pub fn client_address(trusted: &[ipnet::IpNet], peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    forwarded
        .iter()
        .rev()
        .take(16)
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

async fn serve(state: &EdgeState, req: Request<Incoming>) -> Response<ApiBody> {
    if let (Some(cp), "/v1/watch") = (&state.control, req.uri().path()) {
        return match watch(cp, &req).await {
            Ok(response) => response,
            Err(e) => error_response(e),
        };
    }
    if let (Some(cp), Some(rest), &Method::GET) = (
        &state.control,
        req.uri().path().strip_prefix("/v1/plugin-wasm/"),
        req.method(),
    ) {
        let rest = rest.to_owned();
        return match plugin_wasm(cp, &rest, &req).await {
            Ok(wasm) => {
                let mut response = Response::new(Full::new(Bytes::from(wasm)).boxed_unsync());
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/wasm"));
                response
            }
            Err(e) => error_response(e),
        };
    }
    if let (Some(cp), Some(node), &Method::PUT) = (
        &state.control,
        req.uri().path().strip_prefix("/v1/health/"),
        req.method(),
    ) {
        let node = node.to_owned();
        return match put_health(cp, &node, req).await {
            Ok(()) => json_response(StatusCode::OK, &json!({ "node": node })),
            Err(e) => error_response(e),
        };
    }
    let result = match &state.control {
        Some(cp) => route(state, cp, req).await,
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_control_plane",
            "this edge serves a tunnels file, not the API; run it without --tunnels to use the store",
        )),
    };
    match result {
        Ok((status, body)) => json_response(status, &body),
        Err(e) => error_response(e),
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<ApiBody> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed_unsync());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

fn error_response(e: ApiError) -> Response<ApiBody> {
    let mut error = json!({ "code": e.code, "message": e.message });
    if let Some(field) = e.field {
        error["field"] = json!(field);
    }
    json_response(e.status, &json!({ "error": error }))
}

/// `GET /v1/watch` (node token): newline-delimited JSON snapshots of the routing config — the
/// current one at once, then one after every change — with an empty line as heartbeat.
async fn watch(cp: &ControlPlane, req: &Request<Incoming>) -> Result<Response<ApiBody>, ApiError> {
    let denied = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
    let token = bearer(req).ok_or_else(|| denied("a node token is required"))?;
    if cp.authenticate_node(token).await?.is_none() {
        return Err(denied("invalid node token"));
    }
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    // Ends when the client goes away (the receiver is dropped with the response body).
    tokio::spawn(crate::control::config_sync::snapshots(
        cp.clone(),
        tx,
        CancellationToken::new(),
    ));
    let heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + WATCH_HEARTBEAT, WATCH_HEARTBEAT);
    let lines = futures_util::stream::unfold((rx, heartbeat), |(mut rx, mut heartbeat)| async move {
        let line = tokio::select! {
            snapshot = rx.recv() => {
                let mut line = serde_json::to_vec(&snapshot?).unwrap_or_default();
                line.push(b'\n');
                Bytes::from(line)
            }
            _ = heartbeat.tick() => Bytes::from_static(b"\n"),
        };
        Some((Ok::<_, Infallible>(Frame::data(line)), (rx, heartbeat)))
    });
    let mut response = Response::new(StreamBody::new(lines).boxed_unsync());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

/// `PUT /v1/health/{node}` (node token): store an edge-only node's pool-health view.
async fn put_health(cp: &ControlPlane, node: &str, req: Request<Incoming>) -> Result<(), ApiError> {
    let denied = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
    let token = bearer(&req).ok_or_else(|| denied("a node token is required"))?;
    let Some(token_node) = cp.authenticate_node(token).await? else {
        return Err(denied("invalid node token"));
    };
    // A node reports for itself only: one leaked token cannot overwrite every node's view.
    if token_node != node {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this node token was created for node {token_node:?}, which is the only node it can report for; \
                 run that node with --node-name {token_node} or create a token named {node:?}"
            ),
        ));
    }
    let report: HealthReport = json_body_limited(req, MAX_HEALTH_BODY).await?;
    if report.node != node {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "the report's node does not match the path",
        ));
    }
    cp.put_node_health(&report, None).await?;
    Ok(())
}

/// `GET /v1/plugin-wasm/{account}/{name}/{version}` (node token): the component of a plugin
/// version, for an edge-only node loading what its snapshot binds.
async fn plugin_wasm(cp: &ControlPlane, rest: &str, req: &Request<Incoming>) -> Result<Vec<u8>, ApiError> {
    let denied = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
    let token = bearer(req).ok_or_else(|| denied("a node token is required"))?;
    if cp.authenticate_node(token).await?.is_none() {
        return Err(denied("invalid node token"));
    }
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such plugin version");
    let [account, name, version] = rest.split('/').collect::<Vec<_>>()[..] else {
        return Err(not_found());
    };
    let account = account.parse::<uuid::Uuid>().map_err(|_| not_found())?;
    let version = version.parse::<u32>().map_err(|_| not_found())?;
    let doc = cp.plugin_version(AccountId(account), name, Some(version)).await?;
    Ok(cp.plugin_wasm(&doc).await?)
}

fn bearer(req: &Request<Incoming>) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::trim)
}

async fn route(state: &EdgeState, cp: &ControlPlane, req: Request<Incoming>) -> ApiResult {
    let account = authenticate(cp, &req).await?;
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let result = dispatch(state, cp, account, req).await;
    // The audit trail: who changed what, and whether it took.
    if method != Method::GET {
        let status = result.as_ref().map_or_else(|e| e.status, |(s, _)| *s);
        tracing::info!(target: "audit", %account, %method, %path, status = status.as_u16(), "api call");
    }
    result
}

async fn dispatch(state: &EdgeState, cp: &ControlPlane, account: AccountId, req: Request<Incoming>) -> ApiResult {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(2).collect();
    let method = req.method().clone();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["account"]) => {
            let a = cp.account(account).await?;
            Ok((
                StatusCode::OK,
                json!({ "id": a.id, "name": a.name, "created": a.created }),
            ))
        }
        (&Method::GET, ["tunnels"]) => {
            let limit = param(&query, "limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(DEFAULT_PAGE)
                .clamp(1, MAX_PAGE);
            let tunnels = cp.list_tunnels(account, param(&query, "after"), limit).await?;
            let mut items = Vec::with_capacity(tunnels.len());
            for t in &tunnels {
                items.push(tunnel_json(cp, t).await?);
            }
            let next = (tunnels.len() == limit)
                .then(|| tunnels.last().map(|t| t.id.to_string()))
                .flatten();
            Ok((StatusCode::OK, json!({ "items": items, "next": next })))
        }
        (&Method::POST, ["tunnels"]) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Create {
                name: String,
            }
            let body: Create = json_body(req).await?;
            let (tunnel, secret) = cp.create_tunnel(account, &body.name).await?;
            tracing::info!(%account, tunnel = %tunnel.id, name = %tunnel.name, "tunnel created");
            let credentials = json!({
                "account": account,
                "tunnel_id": tunnel.id,
                "tunnel_name": tunnel.name,
                "secret": secret,
                "edges": state.config.advertised_edges,
                "edge_ca": state.config.tls.self_signed_pem,
            });
            Ok((
                StatusCode::CREATED,
                json!({ "tunnel": public_tunnel(&tunnel), "credentials": credentials }),
            ))
        }
        (&Method::GET, ["tunnels", reference]) => {
            let tunnel = cp.find_tunnel(account, reference).await?;
            let connections = cp.connections(tunnel.id).await?;
            let mut body = public_tunnel(&tunnel);
            body["connections"] = json!(connections);
            Ok((StatusCode::OK, body))
        }
        (&Method::DELETE, ["tunnels", reference]) => {
            let force = param(&query, "force") == Some("true");
            let tunnel = cp.delete_tunnel(account, reference, force).await?;
            tracing::info!(%account, tunnel = %tunnel.id, force, "tunnel deleted");
            Ok((StatusCode::OK, json!({ "deleted": tunnel.id })))
        }
        (&Method::DELETE, ["tunnels", reference, "connections"]) => {
            let live = |c: &crate::control::resources::Connection| state.registry.holds(c.tunnel, c.connection_id);
            let removed = cp.cleanup_connections(account, reference, live).await?;
            Ok((StatusCode::OK, json!({ "removed": removed })))
        }
        (&Method::GET, ["routes"]) => {
            let routes = cp.list_routes(account).await?;
            Ok((StatusCode::OK, json!({ "items": routes })))
        }
        (&Method::PUT, ["routes", hostname]) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Put {
                #[serde(default)]
                tunnel: Option<String>,
                #[serde(default)]
                pool: Option<String>,
                #[serde(default)]
                overwrite: bool,
                /// Absent: keep the route's current chain.
                #[serde(default)]
                plugins: Option<Vec<PluginBinding>>,
            }
            let hostname = (*hostname).to_owned();
            let mut body: Put = json_body(req).await?;
            let to = match (&body.tunnel, &body.pool) {
                (Some(tunnel), None) => RouteTo::Tunnel(tunnel),
                (None, Some(pool)) => RouteTo::Pool(pool),
                _ => {
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid",
                        "set exactly one of \"tunnel\" and \"pool\"",
                    ));
                }
            };
            for binding in body.plugins.iter_mut().flatten() {
                check_plugin(state, cp, account, binding, false).await?;
            }
            let route = cp.route(account, &hostname, to, body.overwrite, body.plugins).await?;
            tracing::info!(%account, hostname = %route.hostname, tunnel = ?route.tunnel, pool = ?route.pool, "route set");
            Ok((StatusCode::OK, json!(route)))
        }
        (&Method::GET, ["routes", hostname]) => {
            let (route, revision) = cp.route_doc(account, hostname).await?;
            let mut body = json!(route);
            body["revision"] = json!(revision);
            Ok((StatusCode::OK, body))
        }
        (&Method::PUT, ["routes", hostname, "plugins"]) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Chain {
                plugins: Vec<PluginBinding>,
            }
            let hostname = (*hostname).to_owned();
            let expect = precondition(&req)?;
            let mut body: Chain = json_body(req).await?;
            for binding in &mut body.plugins {
                check_plugin(state, cp, account, binding, false).await?;
            }
            let route = cp.set_route_plugins(account, &hostname, body.plugins, expect).await?;
            tracing::info!(%account, hostname = %route.hostname, plugins = route.plugins.len(), "route plugins set");
            Ok((StatusCode::OK, json!(route)))
        }
        (&Method::GET, ["plugins"]) => {
            let versions = cp.plugin_versions(account, None).await?;
            let routes = cp.list_routes(account).await?;
            let pools = cp.list_pools(account).await?;
            let items: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let mut bound: Vec<String> = routes
                        .iter()
                        .filter(|r| r.plugins.iter().any(|b| v.is_bound_by(b)))
                        .map(|r| format!("route {}", r.hostname))
                        .collect();
                    bound.extend(
                        pools
                            .iter()
                            .filter(|p| p.spec.balancer.as_ref().is_some_and(|b| v.is_bound_by(b)))
                            .map(|p| format!("pool {}", p.name)),
                    );
                    let mut item = json!(v);
                    item["bound"] = json!(bound);
                    item
                })
                .collect();
            Ok((StatusCode::OK, json!({ "items": items })))
        }
        (&Method::PUT, ["plugins", name]) => {
            let name = (*name).to_owned();
            crate::control::resources::validate_name("name", &name)?;
            let wasm = raw_body(req, MAX_PLUGIN_SIZE, Duration::from_secs(120)).await?;
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
                    format!(
                        "this edge provides a plugin named {name:?} to every account; upload yours under another name"
                    ),
                ));
            }
            // Limits first, and the same bytes again are the version they already are: only
            // then spend a core compiling.
            if let Some(existing) = cp
                .check_upload(account, &name, &crate::plugins::version::sha256_hex(&wasm))
                .await?
            {
                return Ok((StatusCode::OK, json!(existing)));
            }
            let wasm: std::sync::Arc<[u8]> = wasm.to_vec().into();
            let kind = host.check_upload(&name, wasm.clone()).await.map_err(|e| ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "invalid_plugin",
                message: format!("{e:#}"),
                field: Some("wasm"),
            })?;
            let (version, created) = cp.put_plugin(account, &name, &wasm, kind).await?;
            tracing::info!(%account, plugin = %name, version = version.version, sha256 = %version.sha256, created, "plugin uploaded");
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            Ok((status, json!(version)))
        }
        (&Method::DELETE, ["plugins", name]) => {
            let deleted = cp.delete_plugin(account, name, None).await?;
            tracing::info!(%account, plugin = %name, versions = deleted.len(), "plugin deleted");
            Ok((StatusCode::OK, json!({ "deleted": deleted })))
        }
        (&Method::DELETE, ["plugins", name, version]) => {
            let version = version.parse::<u32>().map_err(|_| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no version {version:?} of plugin {name:?}"),
                )
            })?;
            let deleted = cp.delete_plugin(account, name, Some(version)).await?;
            tracing::info!(%account, plugin = %name, version, "plugin version deleted");
            Ok((StatusCode::OK, json!({ "deleted": deleted })))
        }
        (&Method::DELETE, ["routes", hostname]) => {
            cp.delete_route(account, hostname).await?;
            tracing::info!(%account, %hostname, "route deleted");
            Ok((StatusCode::OK, json!({ "deleted": hostname })))
        }
        (&Method::GET, ["zones"]) => {
            let zones = cp.list_zones(Some(account)).await?;
            let claims: Vec<Value> = cp
                .zone_claims(account)
                .await?
                .iter()
                .map(|c| json!({ "zone": c.zone, "txt_name": c.record_name(), "txt_value": c.record_value() }))
                .collect();
            Ok((StatusCode::OK, json!({ "items": zones, "claims": claims })))
        }
        (&Method::POST, ["zones"]) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Claim {
                zone: String,
            }
            let body: Claim = json_body(req).await?;
            if !state.config.self_service_zones {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!(
                        "zones are assigned by this edge's operator: ask them to run \
                         `burrow-edge zone add --account {account} {}`",
                        body.zone
                    ),
                ));
            }
            let claim = cp.claim_zone(account, &body.zone).await?;
            tracing::info!(%account, zone = %claim.zone, "zone claimed; waiting for its TXT record");
            let answer = json!({
                "zone": claim.zone,
                "status": "pending",
                "txt_name": claim.record_name(),
                "txt_value": claim.record_value(),
            });
            Ok((StatusCode::ACCEPTED, answer))
        }
        (&Method::POST, ["zones", zone, "verify"]) => {
            let zone = cp.verify_zone(account, zone, state.config.dns_server).await?;
            tracing::info!(%account, zone = %zone.zone, "zone verified by its TXT record");
            Ok((StatusCode::OK, json!(zone)))
        }
        (&Method::DELETE, ["zones", zone]) => {
            let force = param(&query, "force") == Some("true");
            let zone = cp.remove_zone(Some(account), zone, force).await?;
            tracing::info!(%account, zone = %zone.zone, force, "zone removed");
            Ok((StatusCode::OK, json!({ "deleted": zone.zone })))
        }
        (&Method::GET, ["pools"]) => {
            let pools = cp.list_pools(account).await?;
            let reports = cp.node_health().await?;
            let items: Vec<Value> = pools.iter().map(|p| pool_json(state, p, None, &reports)).collect();
            Ok((StatusCode::OK, json!({ "items": items })))
        }
        (&Method::GET, ["pools", name]) => {
            let (pool, revision) = cp.pool(account, name).await?;
            let reports = cp.node_health().await?;
            Ok((StatusCode::OK, pool_json(state, &pool, Some(revision), &reports)))
        }
        (&Method::PUT, ["pools", name]) => {
            let name = (*name).to_owned();
            let expect = precondition(&req)?;
            let mut spec: crate::pools::pool::PoolSpec<String> = json_body(req).await?;
            if let Some(balancer) = &mut spec.balancer {
                check_plugin(state, cp, account, balancer, true).await?;
            }
            let pool = cp.put_pool(account, &name, spec, expect).await?;
            tracing::info!(%account, pool = %name, origins = pool.spec.origins.len(), "pool set");
            Ok((StatusCode::OK, pool_json(state, &pool, None, &[])))
        }
        (&Method::DELETE, ["pools", name]) => {
            cp.delete_pool(account, name).await?;
            tracing::info!(%account, pool = %name, "pool deleted");
            Ok((StatusCode::OK, json!({ "deleted": name })))
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no API endpoint {method} {path}"),
        )),
    }
}

async fn authenticate(cp: &ControlPlane, req: &Request<Incoming>) -> Result<AccountId, ApiError> {
    let unauthorized = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid bearer token; run `burrow login`",
        )
    };
    let token = bearer(req).ok_or_else(unauthorized)?;
    cp.authenticate(token).await?.ok_or_else(unauthorized)
}

async fn json_body<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, ApiError> {
    json_body_limited(req, MAX_BODY).await
}

async fn json_body_limited<T: for<'de> Deserialize<'de>>(req: Request<Incoming>, limit: usize) -> Result<T, ApiError> {
    let bytes = raw_body(req, limit, Duration::from_secs(30)).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_json", format!("request body: {e}")))
}

/// The whole request body, at most `limit` bytes, received within `timeout`.
async fn raw_body(req: Request<Incoming>, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    let read = Limited::new(req.into_body(), limit).collect();
    let bytes = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!("the request body took over {}s", timeout.as_secs()),
            )
        })?
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("this request body is limited to {limit} bytes"),
            )
        })?;
    Ok(bytes.to_bytes())
}

/// Refuse what is plainly not a component before compiling anything.
fn check_component_header(wasm: &[u8]) -> Result<(), ApiError> {
    let invalid = |message: &str| ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "invalid_plugin",
        message: message.to_owned(),
        field: Some("wasm"),
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

/// A query parameter's raw value.
fn param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A binding must name a plugin the account uploaded (its version is pinned here: the latest
/// unless given) or one loaded on this edge by the operator, of the right kind: a binding that
/// could not run is refused here instead of failing requests later.
async fn check_plugin(
    state: &EdgeState,
    cp: &ControlPlane,
    account: AccountId,
    binding: &mut PluginBinding,
    balancer: bool,
) -> Result<(), ApiError> {
    let invalid = |message: String| ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "invalid",
        message,
        field: Some("plugins"),
    };
    let name = binding.plugin.clone();
    if binding.reuse > MAX_REUSE {
        return Err(invalid(format!("reuse is at most {MAX_REUSE} requests per instance")));
    }
    let kind = match cp.plugin_version(account, &name, binding.version).await {
        Ok(uploaded) => {
            binding.version = Some(uploaded.version);
            Some(uploaded.kind == PluginKind::Balancer)
        }
        Err(CpError::NotFound(_)) if binding.version.is_none() => {
            state.config.plugins.as_ref().and_then(|host| host.is_balancer(&name))
        }
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
fn precondition(req: &Request<Incoming>) -> Result<Option<u64>, ApiError> {
    if req.headers().get(header::IF_NONE_MATCH).is_some_and(|v| v == "*") {
        return Ok(Some(0));
    }
    let Some(value) = req.headers().get(header::IF_MATCH) else {
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

/// A pool with each origin's tunnel name and its health as each edge sees it: this edge's live
/// view, then the last report of every other edge.
fn pool_json(state: &EdgeState, pool: &PoolDoc, revision: Option<u64>, reports: &[HealthReport]) -> Value {
    let table = state.routes.load();
    let live = table.pool(pool.account, &pool.name).map(|(_, p)| p);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let origins: Vec<Value> = pool
        .spec
        .origins
        .iter()
        .map(|o| {
            let name = table.tunnel(&o.tunnel).map(|t| t.name.clone());
            let here = live
                .and_then(|p| {
                    let i = p.spec.origins.iter().position(|x| x.tunnel == o.tunnel)?;
                    Some(origin_report(state, p, i))
                })
                .map_or_else(
                    || json!({ "edge": state.config.node_name, "healthy": null, "reason": "not applied on this edge yet" }),
                    |r| json!({ "edge": state.config.node_name, "healthy": r.healthy, "reason": r.reason }),
                );
            let mut health = vec![here];
            for report in reports.iter().filter(|r| r.node != state.config.node_name) {
                let seen = report
                    .pools
                    .iter()
                    .find(|p| p.account == pool.account && p.pool == pool.name)
                    .and_then(|p| p.origins.iter().find(|x| x.tunnel == o.tunnel));
                let age = now.saturating_sub(report.updated);
                health.push(match seen {
                    _ if age > STALE_HEALTH.as_secs() => {
                        json!({ "edge": report.node, "healthy": null, "reason": format!("stale: last report {age}s ago") })
                    }
                    Some(r) => json!({ "edge": report.node, "healthy": r.healthy, "reason": r.reason }),
                    None => json!({ "edge": report.node, "healthy": null, "reason": "not applied on this edge yet" }),
                });
            }
            json!({
                "tunnel": o.tunnel,
                "name": name,
                "weight": o.weight,
                "enabled": o.enabled,
                "health": health,
            })
        })
        .collect();
    let mut body = json!({
        "name": pool.name,
        "created": pool.created,
        "spec": pool.spec,
        "origins": origins,
    });
    if let Some(revision) = revision {
        body["revision"] = json!(revision);
    }
    body
}

/// A tunnel without its secret hash.
fn public_tunnel(t: &Tunnel) -> Value {
    json!({ "id": t.id, "name": t.name, "created": t.created })
}

async fn tunnel_json(cp: &ControlPlane, t: &Tunnel) -> Result<Value, ApiError> {
    let connections = cp.connections(t.id).await?;
    let mut body = public_tunnel(t);
    body["connections"] = json!(connections);
    Ok(body)
}
