//! Phases 3 and 4 for pools: the request's steering key (affinity, hashing, the balancer
//! plugin's pick), then the origin chosen, the outcome recorded for passive health, and an
//! idempotent request retried once elsewhere when it failed before any response byte.

use std::time::Instant;

use burrow_protocol::{Scheme, TunnelId};
use http::{HeaderValue, Response};
use http_body_util::{Either, Full};

use super::{ClientInfo, Head, ResponseBody, Upstream, content_length, exchange};
use crate::EdgeState;
use crate::dataplane::respond::ProxyError;
use crate::plugins::binding::Binding;
use crate::plugins::host::PluginRequest;
use crate::pools::pool::{self, Pool, RequestKey};
use crate::route_table::RouteTable;

/// Small responses of retryable pool requests are read whole before the client sees a byte, so
/// that a connector dying mid-response can still be retried on another origin.
const MAX_BUFFERED_RESPONSE: u64 = 64 * 1024;

/// How this request is steered in `pool`: its affinity and hash keys, and the origin the
/// pool's balancer plugin prefers, if it has one.
pub(super) async fn steering_key(
    state: &EdgeState,
    pool: &Pool,
    head: &Head,
    client: &ClientInfo,
    request_id: &str,
    route_pattern: &str,
) -> RequestKey {
    let mut key = pool.request_key(&head.headers, client.addr.ip());
    if let Some(binding) = &pool.balancer {
        let request = PluginRequest {
            method: head.method.clone(),
            authority: head.authority.clone(),
            path_and_query: head.path.clone(),
            headers: head.headers.clone(),
            client_addr: client.addr,
            request_id: request_id.to_owned(),
            route: route_pattern.to_owned(),
            account: pool.account,
        };
        let candidates = pool.candidates(&|t| state.registry.load(t), None);
        let chosen = balance(state, binding, request, candidates).await;
        key.preferred = chosen.and_then(|i| pool.spec.origins.get(i as usize)).map(|o| o.tunnel);
    }
    key
}

/// Ask the pool's balancer plugin for an origin. A failing balancer does not fail the request:
/// the edge chooses instead (the plugin host trips a balancer that keeps failing).
async fn balance(
    state: &EdgeState,
    binding: &Binding,
    request: PluginRequest,
    candidates: Vec<crate::plugins::host::Candidate>,
) -> Option<u32> {
    let host = state.config.plugins.clone()?;
    match Box::pin(host.select_origin(binding, request, candidates)).await {
        Ok(choice) => choice,
        Err(e) => {
            tracing::debug!("{e}; the edge chooses the origin");
            None
        }
    }
}

/// Send a request to a pool: steer, record the outcome for passive health, and retry an
/// idempotent request once on another origin when it failed before any response byte.
#[allow(clippy::too_many_arguments, reason = "one request's parts, passed once")]
pub(super) async fn to_pool(
    state: &EdgeState,
    table: &RouteTable,
    index: usize,
    key: &RequestKey,
    client: &ClientInfo,
    head: &[u8],
    mut upstream: Upstream,
    retry: bool,
) -> Result<Response<ResponseBody>, ProxyError> {
    let pools = table.pools();
    let load = |t: &TunnelId| state.registry.load(t);
    let mut exclude = None;
    loop {
        let choice = pool::choose(pools, index, &load, key, exclude).ok_or_else(|| ProxyError::NoHealthyOrigin {
            pool: pools[index].name.clone(),
        })?;
        let pool = &pools[choice.pool];
        let tunnel = pool.spec.origins[choice.origin].tunnel;
        let name = &pool.origin_names[choice.origin];
        let health = &pool.health[choice.origin];
        let attempt = std::mem::replace(
            &mut upstream,
            Upstream {
                body: None,
                on_upgrade: None,
            },
        );
        let started = Instant::now();
        // A first attempt that may be retried gives up on a connection that stops answering.
        let hedge = retry && exclude.is_none();
        let mut result = exchange::exchange(state, tunnel, name, head, attempt, hedge).await;
        if retry && exclude.is_none() {
            result = match result {
                Ok(response) => buffer_small(state, response, name).await,
                Err(e) => Err(e),
            };
        }
        match result {
            Ok(mut response) => {
                // Only gateway failures count: an app's own 500s (which a visitor can provoke) do not eject it.
                let gateway_failure = matches!(response.status().as_u16(), 502..=504);
                health.record_request(!gateway_failure, started.elapsed());
                if let (true, Some(ttl)) = (choice.pin, pool.spec.affinity_ttl_secs) {
                    let cookie = pool::affinity_cookie(tunnel, ttl, client.scheme == Scheme::Https);
                    if let Ok(value) = HeaderValue::from_str(&cookie) {
                        response.headers_mut().append(http::header::SET_COOKIE, value);
                    }
                }
                return Ok(response);
            }
            Err(e) => {
                // Only what the origin or its tunnel did counts against it: a visitor can send a
                // bad body, abort, or ask for what the connector cannot serve at will.
                if e.blames_origin() {
                    health.record_request(false, started.elapsed());
                }
                let before_response = matches!(
                    e,
                    ProxyError::TunnelUnavailable { .. }
                        | ProxyError::TunnelStream { .. }
                        | ProxyError::OriginUnreachable { .. }
                        | ProxyError::ConnectorRefused { .. }
                );
                if !(retry && before_response && exclude.is_none()) {
                    return Err(e);
                }
                tracing::debug!(pool = %pool.name, origin = %name, "retrying on another origin: {e}");
                exclude = Some(tunnel);
            }
        }
    }
}

/// Read a small response (`Content-Length` up to [`MAX_BUFFERED_RESPONSE`]) to its end, so that
/// a stream that breaks mid-body is still an error before the client saw anything.
async fn buffer_small(
    state: &EdgeState,
    response: Response<ResponseBody>,
    tunnel_name: &str,
) -> Result<Response<ResponseBody>, ProxyError> {
    let small = content_length(response.headers()).is_some_and(|n| n <= MAX_BUFFERED_RESPONSE);
    if !small {
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let collected = tokio::time::timeout(state.config.origin_timeout, http_body_util::BodyExt::collect(body))
        .await
        .map_err(|_| ProxyError::OriginTimeout {
            name: tunnel_name.to_owned(),
            timeout: state.config.origin_timeout,
        })?
        .map_err(|e| ProxyError::TunnelStream {
            name: tunnel_name.to_owned(),
            reason: format!("response body: {e}"),
        })?;
    // A body with a Content-Length has no trailers in HTTP/1.1; an HTTP/2 origin's are dropped.
    Ok(Response::from_parts(
        parts,
        Either::Right(Full::new(collected.to_bytes())),
    ))
}
