//! Phases 2 and 5: the route's plugin chain on the request (`on-request-headers`,
//! `on-request-body`) and on the origin's response (`on-response-headers`, `on-response-body`).
//! Bodies are read whole only for chains that declared a body hook, within their limit.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body::Body;
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use super::log::PendingLog;
use super::resolve::Resolved;
use super::{ClientInfo, Head, RequestBody, ResponseBody, content_length};
use crate::EdgeState;
use crate::dataplane::respond::ProxyError;
use crate::plugins::binding::Binding;
use crate::plugins::host::{Declared, Exchange, Outcome, Phase, PluginError, PluginRequest, PluginResponse};

/// The request after its hooks: on to the origin, or answered by a plugin.
pub(super) enum RequestHooks {
    Forward {
        body: RequestBody,
        /// The request as the response hooks will see it, when the chain has some.
        for_response: Option<PluginRequest>,
    },
    Respond(Response<Full<Bytes>>),
}

/// Run the request hooks of `route` on `head` (changed in place) and its body; note the
/// request for `on-log` in `log` when the chain has that hook.
#[allow(clippy::too_many_arguments, reason = "one request's parts, passed once")]
pub(super) async fn request_hooks(
    state: &EdgeState,
    route: &Resolved,
    needs: Declared,
    client: &ClientInfo,
    request_id: &str,
    head: &mut Head,
    incoming: Incoming,
    log: &mut Option<PendingLog>,
) -> Result<RequestHooks, ProxyError> {
    let plugins = &route.plugins;
    // Key-value spaces are per account: a route without a known owner (which the table build
    // rules out) runs no plugin rather than share one.
    let account = route.account.ok_or_else(|| {
        ProxyError::PluginFailed(PluginError {
            plugin: plugins.first().map(|b| b.plugin.clone()).unwrap_or_default(),
            reason: "the route's account is unknown".into(),
        })
    })?;
    let request = PluginRequest {
        method: head.method.clone(),
        authority: head.authority.clone(),
        path_and_query: std::mem::take(&mut head.path),
        headers: std::mem::take(&mut head.headers),
        client_addr: client.addr,
        request_id: request_id.to_owned(),
        route: route.pattern.clone(),
        account,
    };
    if let Some(plugin_host) = state.config.plugins.as_ref().filter(|_| needs.log) {
        // As the visitor sent it; on-log runs whatever happens next, errors included.
        *log = Some(PendingLog {
            host: plugin_host.clone(),
            chain: plugins.clone(),
            request: request.clone(),
        });
    }
    let (request, body) = match run_request_hooks(state, plugins, needs, request, incoming).await? {
        Hooked::Forward { request, body } => (request, body),
        Hooked::Respond(response) => return Ok(RequestHooks::Respond(response)),
    };
    let for_response = needs.response().then(|| request.clone());
    head.headers = request.headers;
    head.path = request.path_and_query;
    Ok(RequestHooks::Forward { body, for_response })
}

/// What the request hooks made of the request.
enum Hooked {
    Forward { request: PluginRequest, body: RequestBody },
    Respond(Response<Full<Bytes>>),
}

/// `on-request-headers`, then `on-request-body` for a chain that reads bodies.
async fn run_request_hooks(
    state: &EdgeState,
    plugins: &Arc<[Binding]>,
    needs: Declared,
    request: PluginRequest,
    incoming: Incoming,
) -> Result<Hooked, ProxyError> {
    let exchange = Exchange {
        request,
        response: None,
        body: None,
    };
    let mut exchange = match run_plugins(state, plugins, Phase::RequestHeaders, exchange).await? {
        Outcome::Continue(exchange) => exchange,
        Outcome::Respond(response) => return Ok(Hooked::Respond(response)),
    };
    // Only after on-request-headers: a refused request is never buffered.
    let announced = content_length(&exchange.request.headers);
    // A body announced bigger than any plugin reads: skipped when each of those plugins is
    // fail-open, refused otherwise.
    let host = state.config.plugins.as_ref();
    let skip = |limit: usize| {
        announced.is_some_and(|n| n > limit as u64)
            && host.is_some_and(|h| h.fail_open_for(plugins, Phase::RequestBody))
    };
    let (Some(limit), Some(host)) = (needs.request_body.filter(|l| !skip(*l)), host) else {
        return Ok(Hooked::Forward {
            request: exchange.request,
            body: Either::Left(incoming),
        });
    };
    let wanted = if incoming.is_end_stream() {
        0
    } else {
        announced.map_or(limit, |n| (n as usize).min(limit))
    };
    let _reserved = host
        .reserve_body(wanted)
        .ok_or(ProxyError::Busy("request bodies for plugins"))?;
    exchange.body = Some(buffer_request_body(state, incoming, limit).await?);
    exchange = match run_plugins(state, plugins, Phase::RequestBody, exchange).await? {
        Outcome::Continue(exchange) => exchange,
        Outcome::Respond(response) => return Ok(Hooked::Respond(response)),
    };
    let buffered = exchange.body.take().unwrap_or_default();
    let headers = &mut exchange.request.headers;
    headers.remove(http::header::TRANSFER_ENCODING);
    headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(buffered.len()));
    Ok(Hooked::Forward {
        request: exchange.request,
        body: Either::Right(Full::new(buffered)),
    })
}

/// Read the whole request body for `on-request-body`, within the body timeouts: at most `limit`
/// bytes (more is a 413).
async fn buffer_request_body(state: &EdgeState, body: Incoming, limit: usize) -> Result<Bytes, ProxyError> {
    let read = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit));
    let timeout = state.config.request_body_timeout;
    match tokio::time::timeout(timeout, read).await {
        Err(_) => Err(ProxyError::RequestTimeout(format!("did not arrive within {timeout:?}"))),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ProxyError::PayloadTooLarge(limit)),
        Ok(Err(e)) => Err(ProxyError::BadRequest(format!("reading the request body: {e}"))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// The response hooks of the chain, on the origin's response: `on-response-headers`, then (with
/// the body read whole, at most the chain's limit) `on-response-body`.
pub(super) async fn response_hooks(
    state: &EdgeState,
    chain: &Arc<[Binding]>,
    needs: Declared,
    request: PluginRequest,
    response: Response<ResponseBody>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (mut parts, body) = response.into_parts();
    let head = PluginResponse {
        status: parts.status,
        headers: std::mem::take(&mut parts.headers),
    };
    let mut exchange = Exchange {
        request,
        response: Some(head),
        body: None,
    };
    if needs.response_headers {
        exchange = match run_plugins(state, chain, Phase::ResponseHeaders, exchange).await? {
            Outcome::Continue(exchange) => exchange,
            Outcome::Respond(response) => return Ok(response.map(Either::Right)),
        };
    }
    let mut body = body;
    // Bodiless by definition (HEAD, 204, 304): no body hook, and the framing stays as it is.
    let status = exchange.response.as_ref().map_or(parts.status, |r| r.status);
    let bodiless = exchange.request.method == Method::HEAD
        || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED)
        || status.is_informational();
    let announced = exchange.response.as_ref().and_then(|r| content_length(&r.headers));
    let host = state.config.plugins.as_ref();
    let over = |limit: usize| announced.is_some_and(|n| n > limit as u64);
    let optional = host.is_some_and(|h| h.fail_open_for(chain, Phase::ResponseBody));
    if let (Some(limit), Some(host)) = (
        needs.response_body.filter(|l| !(bodiless || over(*l) && optional)),
        host,
    ) {
        if over(limit) {
            return Err(ProxyError::PluginFailed(PluginError {
                plugin: "(response body)".into(),
                reason: format!("the response body is over {limit} bytes, the most this route's plugins read"),
            }));
        }
        let wanted = announced.map_or(limit, |n| (n as usize).min(limit));
        let _reserved = host
            .reserve_body(wanted)
            .ok_or(ProxyError::Busy("response bodies for plugins"))?;
        let read = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit));
        let collected = tokio::time::timeout(state.config.origin_timeout, read)
            .await
            .map_err(|_| ProxyError::OriginTimeout {
                name: "(response body for plugins)".into(),
                timeout: state.config.origin_timeout,
            })?
            .map_err(|e| {
                ProxyError::PluginFailed(PluginError {
                    plugin: "(response body)".into(),
                    reason: if e.is::<http_body_util::LengthLimitError>() {
                        format!("the response body is over {limit} bytes, the most this route's plugins read")
                    } else {
                        format!("reading the response body: {e}")
                    },
                })
            })?;
        exchange.body = Some(collected.to_bytes());
        exchange = match run_plugins(state, chain, Phase::ResponseBody, exchange).await? {
            Outcome::Continue(exchange) => exchange,
            Outcome::Respond(response) => return Ok(response.map(Either::Right)),
        };
        let bytes = exchange.body.take().unwrap_or_default();
        if let Some(head) = exchange.response.as_mut() {
            head.headers.remove(http::header::TRANSFER_ENCODING);
            head.headers
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        }
        body = Either::Right(Full::new(bytes));
    }
    if let Some(head) = exchange.response {
        parts.status = head.status;
        parts.headers = head.headers;
    }
    Ok(Response::from_parts(parts, body))
}

/// One phase of the route's plugin chain.
async fn run_plugins(
    state: &EdgeState,
    chain: &Arc<[Binding]>,
    phase: Phase,
    exchange: Exchange,
) -> Result<Outcome, ProxyError> {
    let Some(host) = state.config.plugins.clone() else {
        if chain.iter().all(|b| b.fail_open) {
            return Ok(Outcome::Continue(exchange));
        }
        let plugin = chain.first().map(|b| b.plugin.clone()).unwrap_or_default();
        return Err(ProxyError::PluginFailed(PluginError {
            plugin,
            reason: "no plugins are loaded on this edge".into(),
        }));
    };
    // Boxed, like every plugin call: wasmtime's call futures are large, and inline they would
    // make every request's future (moved in memory several times per request) that large too.
    Box::pin(host.run(chain, phase, exchange))
        .await
        .map_err(ProxyError::PluginFailed)
}
