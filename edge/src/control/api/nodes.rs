//! What edge-only nodes follow, with their node tokens: the routing config as a stream, the
//! plugin components it binds, and their view of pool health.
//!
//! | method | path | does |
//! |---|---|---|
//! | GET | /v1/watch | NDJSON stream of routing snapshots (one now, one after every change; an empty line as heartbeat) |
//! | GET | /v1/plugin-wasm/{account}/{name}/{version} | a plugin version's component |
//! | PUT | /v1/health/{node} | that node's view of every pool origin (for `pool show`) |

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body::Frame;
use http_body_util::StreamBody;
use tokio_util::sync::CancellationToken;

use super::{ApiError, bearer, control};
use crate::EdgeState;
use crate::control::health_monitor::HealthReport;
use crate::control::resources::ControlPlane;

/// Edge-only nodes reconnect when the watch stream is silent for longer than this.
pub const WATCH_HEARTBEAT: Duration = Duration::from_secs(15);
/// Health reports of edge-only nodes list every pool origin.
const MAX_HEALTH_BODY: usize = 8 * 1024 * 1024;

pub fn routes() -> Router<Arc<EdgeState>> {
    Router::new()
        .route("/v1/watch", get(watch))
        .route("/v1/plugin-wasm/{account}/{name}/{version}", get(plugin_wasm))
        .route("/v1/health/{node}", put(put_health))
}

/// The node a valid node token was made for.
async fn node(cp: &ControlPlane, headers: &HeaderMap) -> Result<String, ApiError> {
    let denied = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
    let token = bearer(headers).ok_or_else(|| denied("a node token is required"))?;
    cp.authenticate_node(token)
        .await?
        .ok_or_else(|| denied("invalid node token"))
}

async fn watch(State(state): State<Arc<EdgeState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let cp = control(&state)?;
    node(cp, &headers).await?;
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
    let mut response = Body::new(StreamBody::new(lines)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(response)
}

async fn plugin_wasm(
    State(state): State<Arc<EdgeState>>,
    Path((account, name, version)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let cp = control(&state)?;
    node(cp, &headers).await?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such plugin version");
    let account = account.parse::<uuid::Uuid>().map_err(|_| not_found())?;
    let version = version.parse::<u32>().map_err(|_| not_found())?;
    let doc = cp
        .plugin_version(burrow_protocol::AccountId(account), &name, Some(version))
        .await?;
    let wasm = cp.plugin_wasm(&doc).await?;
    Ok(([(header::CONTENT_TYPE, "application/wasm")], wasm).into_response())
}

async fn put_health(
    State(state): State<Arc<EdgeState>>,
    Path(path_node): Path<String>,
    req: Request,
) -> Result<StatusCode, ApiError> {
    let cp = control(&state)?;
    let token_node = node(cp, req.headers()).await?;
    // A node reports for itself only: one leaked token cannot overwrite every node's view.
    if token_node != path_node {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this node token was created for node {token_node:?}, which is the only node it can report for; \
                 run that node with --node-name {token_node} or create a token named {path_node:?}"
            ),
        ));
    }
    let bytes = super::body::read(req, MAX_HEALTH_BODY, Duration::from_secs(30)).await?;
    let report: HealthReport = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_json", format!("request body: {e}")))?;
    if report.node != path_node {
        return Err(ApiError::invalid("node", "the report's node does not match the path"));
    }
    cp.put_node_health(&report, None).await?;
    Ok(StatusCode::NO_CONTENT)
}
