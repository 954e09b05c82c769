//! The `/v1` REST API tenants use (and edge-only nodes, with node tokens), served with axum on
//! the API listener (`--api`). The request and answer bodies are `burrow_api`'s types; one
//! handler per resource and method; a wrong method gets 405 with `Allow`.
//!
//! Bearer tokens identify the account; another account's objects are "not found", never
//! "forbidden" (no existence oracle). Every error is one [`ApiError`], rendered as
//! `burrow_api::ErrorBody`. Failed authentications are limited per client and per token id
//! ([`crate::rate_limit::AuthFailures`]); every mutating call is logged under the `audit` target.
//!
//! - [`tenants`]: account, tunnels, routes, pools, plugins, zones.
//! - [`nodes`]: what edge-only nodes follow: `/v1/watch`, plugin components, health reports.

mod body;
mod error;
mod nodes;
mod tenants;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode, header};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use body::MAX_BODY;
pub use error::ApiError;
pub use nodes::WATCH_HEARTBEAT;

use crate::EdgeState;
use crate::control::resources::ControlPlane;

/// The account a tenant request authenticated as (set by [`authenticate`]).
#[derive(Debug, Clone, Copy)]
pub struct Tenant(pub burrow_protocol::AccountId);

/// The address a request counts against for limits (see [`client_address`]).
#[derive(Debug, Clone, Copy)]
pub struct Client(pub IpAddr);

/// The whole API: tenant routes behind authentication, node routes with node tokens.
pub fn router(state: Arc<EdgeState>) -> Router {
    let tenants = tenants::routes().layer(axum::middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .merge(tenants)
        .merge(nodes::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), limit_failures))
        .with_state(state)
}

/// Where the API is served: a TCP listener, with TLS when `--api-tls-cert` is given.
pub struct ApiListener {
    pub tcp: TcpListener,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// How long a client may take over its TLS handshake or its request head.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve the API on `listener` until `shutdown`.
pub async fn serve(listener: ApiListener, state: Arc<EdgeState>, shutdown: CancellationToken) {
    let router = router(state.clone());
    if let Ok(addr) = listener.tcp.local_addr() {
        let scheme = if listener.tls.is_some() { "https" } else { "http" };
        tracing::info!(%addr, scheme, "API listener ready");
    }
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.tcp.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("API accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let (router, tls, shutdown) = (router.clone(), listener.tls.clone(), shutdown.clone());
        connections.spawn(async move {
            match tls {
                None => serve_connection(stream, peer, router, shutdown).await,
                Some(tls) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                    Ok(Ok(stream)) => serve_connection(stream, peer, router, shutdown).await,
                    Ok(Err(e)) => tracing::debug!(%peer, "API TLS handshake: {e}"),
                    Err(_) => tracing::debug!(%peer, "API TLS handshake timed out"),
                },
            }
        });
    }
    // Answer the calls in flight (bounded: a client may hold a request open).
    connections.close();
    if tokio::time::timeout(Duration::from_secs(5), connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("API calls still running 5 s after shutdown; closing them");
    }
}

async fn serve_connection<S>(stream: S, peer: SocketAddr, router: Router, shutdown: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        let router = router.clone();
        async move { tower::ServiceExt::oneshot(router, req.map(axum::body::Body::new)).await }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        () = shutdown.cancelled() => connection.as_mut().graceful_shutdown(),
    }
    // The request in flight is answered; then the connection closes.
    let _ = connection.await;
}

async fn not_found(method: Method, uri: http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no API endpoint {method} {}", uri.path()),
    )
}

/// The control plane, or why this edge has none.
fn control(state: &EdgeState) -> Result<&ControlPlane, ApiError> {
    state.control.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_control_plane",
            "this edge serves a tunnels file, not the API; run it without --tunnels to use the store",
        )
    })
}

/// The bearer token of a request.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::trim)
}

/// Tenant routes: the bearer token names the account (then the call is audited).
async fn authenticate(State(state): State<Arc<EdgeState>>, mut req: Request, next: Next) -> Response {
    let unauthorized = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid bearer token; run `burrow login`",
        )
    };
    let cp = match control(&state) {
        Ok(cp) => cp,
        Err(e) => return e.into_response(),
    };
    let account = match bearer(req.headers()) {
        Some(token) => match cp.authenticate(token).await {
            Ok(Some(account)) => account,
            Ok(None) => return unauthorized().into_response(),
            Err(e) => return ApiError::from(e).into_response(),
        },
        None => return unauthorized().into_response(),
    };
    req.extensions_mut().insert(Tenant(account));
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let response = next.run(req).await;
    // The audit trail: who changed what, and whether it took.
    if method != Method::GET {
        let status = response.status().as_u16();
        tracing::info!(target: "audit", %account, %method, %path, status, "api call");
    }
    response
}

/// Failed authentications, counted per client and per token id: a token id whose secret is
/// being guessed waits out a cool-down, checked or not; a client over its budget gets 429 for its
/// failures only.
async fn limit_failures(State(state): State<Arc<EdgeState>>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    let client = client_address(&state.config.trusted_proxies, peer, req.headers());
    req.extensions_mut().insert(Client(client));
    let token_id = bearer(req.headers())
        .and_then(crate::control::resources::token_id)
        .map(str::to_owned);
    if let Some(wait) = state.auth_failures.cooling(token_id.as_deref()) {
        return too_many_failures(wait);
    }
    let response = next.run(req).await;
    if response.status() == StatusCode::UNAUTHORIZED
        && let Some(wait) = state.auth_failures.failed(client, token_id.as_deref())
    {
        tracing::warn!(%client, "too many failed API authentications");
        return too_many_failures(wait);
    }
    response
}

fn too_many_failures(wait: Duration) -> Response {
    let seconds = wait.as_secs() + 1;
    let message = format!("too many failed authentications; retry in {seconds}s");
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        .retry_after(Duration::from_secs(seconds))
        .into_response()
}

/// The client a request is from: the peer, unless the peer is a trusted proxy, then the
/// nearest address in `X-Forwarded-For` that is not one (what a proxy in front of the API saw).
pub fn client_address(trusted: &[ipnet::IpNet], peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    forwarded
        .iter()
        .rev()
        .take(16)
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}
