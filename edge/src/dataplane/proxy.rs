//! One public request: route lookup → pick a tunnel connection → QUIC stream → relay both ways.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use burrow_protocol::body::{BodyError, FramedBody, send_body, splice};
use burrow_protocol::headers::{self, is_websocket_upgrade, strip_hop_by_hop};
use burrow_protocol::{
    Frame, RequestHead, RequestKind, ResponseHead, Scheme, StreamErrorCode, TunnelCodec, TunnelId, error_code,
};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_util::codec::{Encoder, FramedRead};

use crate::EdgeState;
use crate::dataplane::registry::InFlight;
use crate::dataplane::request_checks;
use crate::dataplane::respond::{ProxyError, error_response};
use crate::plugins::binding::Binding;
use crate::plugins::host::{Declared, Exchange, LogEntry, Outcome, Phase, PluginError, PluginRequest, PluginResponse};
use crate::pools::pool::{self, RequestKey};
use crate::route_table::{RouteTable, Target};

/// Opening a stream and writing a request head takes one round trip at most when the connection
/// has stream credit; longer, and the request tries another connection.
const OPEN_STREAM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Small responses of retryable pool requests are read whole before the client sees a byte, so
/// that a connector dying mid-response can still be retried on another origin.
const MAX_BUFFERED_RESPONSE: u64 = 64 * 1024;

/// Body of every response the edge sends: relayed from the tunnel, or generated here.
pub type ResponseBody = Either<TunnelBody, Full<Bytes>>;

/// Who is asking, as the public listener saw it.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub addr: SocketAddr,
    pub scheme: Scheme,
    /// TLS server name (SNI) the client asked for, if any.
    pub sni: Option<Arc<str>>,
}

/// What the public listener sends: the response body, watched to the end when plugins of the
/// route run `on-log`.
pub type PublicBody = Either<ResponseBody, LoggedBody>;

/// Handle one public request. Never fails: errors become responses in [`crate::dataplane::respond`].
pub async fn handle(state: Arc<EdgeState>, req: Request<Incoming>, client: ClientInfo) -> Response<PublicBody> {
    let started = Instant::now();
    let request_id = format!("{:032x}", rand::random::<u128>());
    let mut log = None;
    let mut response = match forward(&state, req, &client, &request_id, &mut log).await {
        Ok(response) => response,
        Err(err) => error_response(&err, &request_id).map(Either::Right),
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(headers::REQUEST_ID, value);
    }
    state.metrics.count_response(response.status().as_u16());
    state.metrics.request_duration.observe(started.elapsed().as_secs_f64());
    match log {
        Some(pending) => {
            let status = response.status().as_u16();
            response.map(|inner| {
                Either::Right(LoggedBody {
                    inner,
                    sent: 0,
                    pending: Some((pending, status, started)),
                })
            })
        }
        None => response.map(Either::Left),
    }
}

/// The route's `on-log` plugins and the request they are told about.
pub struct PendingLog {
    host: Arc<crate::plugins::host::PluginHost>,
    chain: Arc<[Binding]>,
    request: PluginRequest,
}

/// A response body that runs the route's `on-log` plugins when it ends, fails or is dropped,
/// beside the connection (never in the visitor's way).
pub struct LoggedBody {
    inner: ResponseBody,
    sent: u64,
    pending: Option<(PendingLog, u16, Instant)>,
}

impl LoggedBody {
    fn finish(&mut self, completed: bool) {
        let Some((log, status, started)) = self.pending.take() else {
            return;
        };
        let entry = LogEntry {
            status,
            bytes_sent: self.sent,
            duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            completed,
        };
        log.host.spawn_log(log.chain, log.request, entry);
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                self.sent += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            Poll::Ready(None) => self.finish(true),
            Poll::Ready(Some(Err(_))) => self.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // A body the server never polled to its end: complete only if nothing was left.
        let completed = self.inner.is_end_stream();
        self.finish(completed);
    }
}

/// Where the route sends this request, resolved before any await.
enum Destination {
    Tunnel {
        id: TunnelId,
        name: String,
    },
    /// A pool of the table (kept alive for the request; pools hold their health state).
    Pool {
        table: Arc<RouteTable>,
        index: usize,
    },
}

/// The request body for the origin: streamed from the client, or buffered for the plugins'
/// `on-request-body` (and perhaps replaced by them).
type RequestBody = Either<Incoming, Full<Bytes>>;

/// What goes to the origin besides the head: the client's body (`None` when empty) and, for a
/// WebSocket, the client side of the upgrade.
struct Upstream {
    body: Option<RequestBody>,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
}

async fn forward(
    state: &EdgeState,
    mut req: Request<Incoming>,
    client: &ClientInfo,
    request_id: &str,
    log: &mut Option<PendingLog>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let host = request_checks::check(&req)?;
    let (destination, plugins, (route_pattern, account)) = {
        // One atomic load; copy out what we need so no guard is held across awaits.
        let table = state.routes.load();
        if let Some(sni) = &client.sni {
            request_checks::check_sni(&table, sni, &host)?;
        }
        let route = table
            .lookup(&host)
            .ok_or_else(|| ProxyError::UnknownHost(host.clone()))?;
        let plugins = route.plugins.clone();
        // What plugins see of the route (a pool may have a balancer): no copy for requests that
        // run none.
        let balanced = matches!(route.target, Target::Pool(i) if table.pools()[i].balancer.is_some());
        let scope = (!plugins.is_empty() || balanced).then(|| (route.hostname.clone(), table.route_account(route)));
        let destination = match route.target {
            Target::Tunnel(id) => Destination::Tunnel {
                id,
                name: table.tunnel(&id).map(|t| t.name.clone()).unwrap_or_default(),
            },
            // Keep *this* table (not a newer one): the pool index belongs to it.
            Target::Pool(index) => Destination::Pool {
                table: arc_swap::Guard::into_inner(table),
                index,
            },
        };
        (destination, plugins, scope.unwrap_or_default())
    };

    if request_checks::is_asterisk(&req) {
        // `OPTIONS *` asks the server, not a resource: the edge answers for it.
        let mut response = Response::new(Either::Right(Full::default()));
        response
            .headers_mut()
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        return Ok(response);
    }
    let websocket = req.version() == Version::HTTP_11 && is_websocket_upgrade(req.headers());
    let on_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, incoming) = req.into_parts();
    let mut path = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    // The request as the response hooks will see it (kept only when some plugin has one).
    let mut for_response = None;
    let needs = match &state.config.plugins {
        Some(plugin_host) if !plugins.is_empty() => plugin_host.chain_needs(&plugins),
        _ => Declared::default(),
    };
    // An edge without plugins loaded still runs a route's chain: `run_plugins` fails it (or lets
    // it through when every binding is fail-open).
    let body: RequestBody = if plugins.is_empty() {
        Either::Left(incoming)
    } else {
        // Key-value spaces are per account: a route without a known owner (which the table
        // build rules out) runs no plugin rather than share one.
        let account = account.ok_or_else(|| {
            ProxyError::PluginFailed(PluginError {
                plugin: plugins.first().map(|b| b.plugin.clone()).unwrap_or_default(),
                reason: "the route's account is unknown".into(),
            })
        })?;
        let request = PluginRequest {
            method: parts.method.clone(),
            authority: host.clone(),
            path_and_query: std::mem::take(&mut path),
            headers: std::mem::take(&mut parts.headers),
            client_addr: client.addr,
            request_id: request_id.to_owned(),
            route: route_pattern.clone(),
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
        // Boxed: the hooks' state is large, and inline it would be part of every request's
        // future (moved in memory several times per request), plugins or not.
        let (request, body) = match Box::pin(request_hooks(state, &plugins, needs, request, incoming)).await? {
            RequestHooks::Forward { request, body } => (request, body),
            RequestHooks::Respond(response) => return Ok(response.map(Either::Right)),
        };
        if needs.response() {
            for_response = Some(request.clone());
        }
        parts.headers = request.headers;
        path = request.path_and_query;
        body
    };
    let mut steering_key = RequestKey::default();
    if let Destination::Pool { table, index } = &destination {
        let pool = &table.pools()[*index];
        steering_key = pool.request_key(&parts.headers, client.addr.ip());
        if let Some(binding) = &pool.balancer {
            let request = PluginRequest {
                method: parts.method.clone(),
                authority: host.clone(),
                path_and_query: path.clone(),
                headers: parts.headers.clone(),
                client_addr: client.addr,
                request_id: request_id.to_owned(),
                route: route_pattern.clone(),
                account: pool.account,
            };
            let candidates = pool.candidates(&|t| state.registry.load(t), None);
            let chosen = balance(state, binding, request, candidates).await;
            steering_key.preferred = chosen.and_then(|i| pool.spec.origins.get(i as usize)).map(|o| o.tunnel);
        }
    }
    let idempotent = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) && body.is_end_stream();
    let head = RequestHead {
        kind: if websocket {
            RequestKind::WebSocket
        } else {
            RequestKind::Http
        },
        flags: 0,
        method: parts.method,
        scheme: client.scheme,
        path,
        headers: forwarded_headers(parts.headers, client, &host, request_id, websocket),
        authority: host,
        client_addr: client.addr,
        request_id: request_id.to_owned(),
    };
    let mut head_bytes = BytesMut::with_capacity(512);
    TunnelCodec::new(state.config.limits)
        .encode(Frame::RequestHead(Box::new(head)), &mut head_bytes)
        .map_err(|e| ProxyError::BadRequest(format!("request head: {e}")))?;
    let upstream = Upstream {
        body: (!body.is_end_stream()).then_some(body),
        on_upgrade,
    };
    let response = match destination {
        Destination::Tunnel { id, name } => exchange(state, id, &name, &head_bytes, upstream, false).await?,
        Destination::Pool { table, index } => {
            let retry = idempotent && !websocket;
            // Boxed: with its retry it is twice the tunnel exchange, and it would grow every
            // request's future, not only pooled ones.
            Box::pin(to_pool(
                state,
                &table,
                index,
                &steering_key,
                client,
                &head_bytes,
                upstream,
                retry,
            ))
            .await?
        }
    };
    match for_response {
        Some(request) if response.status() != StatusCode::SWITCHING_PROTOCOLS => {
            Box::pin(run_response_plugins(state, &plugins, needs, request, response)).await
        }
        _ => Ok(response),
    }
}

/// The Content-Length of a message, if it has one.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(http::header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The request after its hooks: on to the origin, or answered by a plugin.
enum RequestHooks {
    Forward { request: PluginRequest, body: RequestBody },
    Respond(Response<Full<Bytes>>),
}

/// `on-request-headers`, then `on-request-body` for a chain that reads bodies.
async fn request_hooks(
    state: &EdgeState,
    plugins: &Arc<[Binding]>,
    needs: Declared,
    request: PluginRequest,
    incoming: Incoming,
) -> Result<RequestHooks, ProxyError> {
    let exchange = Exchange {
        request,
        response: None,
        body: None,
    };
    let mut exchange = match run_plugins(state, plugins, Phase::RequestHeaders, exchange).await? {
        Outcome::Continue(exchange) => exchange,
        Outcome::Respond(response) => return Ok(RequestHooks::Respond(response)),
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
        return Ok(RequestHooks::Forward {
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
        Outcome::Respond(response) => return Ok(RequestHooks::Respond(response)),
    };
    let buffered = exchange.body.take().unwrap_or_default();
    let headers = &mut exchange.request.headers;
    headers.remove(http::header::TRANSFER_ENCODING);
    headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(buffered.len()));
    Ok(RequestHooks::Forward {
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
async fn run_response_plugins(
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

/// Send a request to a pool: steer, record the outcome for passive health, and retry an
/// idempotent request once on another origin when it failed before any response byte.
#[allow(clippy::too_many_arguments, reason = "one request's parts, passed once")]
async fn to_pool(
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
        let mut result = exchange(state, tunnel, name, head, attempt, hedge).await;
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

/// One request/response exchange over a stream of `tunnel`. With `hedge`, waiting for the
/// response head ends early (as a stream failure, which the caller retries elsewhere) when the
/// connection stops answering: its connector is likely dead, and the request can be sent again.
async fn exchange(
    state: &EdgeState,
    tunnel_id: TunnelId,
    tunnel_name: &str,
    head_bytes: &[u8],
    upstream: Upstream,
    hedge: bool,
) -> Result<Response<ResponseBody>, ProxyError> {
    // The origin timeout covers opening the stream too: a connection with no stream credit
    // left, or one whose connector just died, must not hold a request beyond it.
    let deadline = tokio::time::Instant::now() + state.config.origin_timeout;
    let timed_out = || ProxyError::OriginTimeout {
        name: tunnel_name.to_owned(),
        timeout: state.config.origin_timeout,
    };
    let (in_flight, mut send, recv) =
        tokio::time::timeout_at(deadline, open_stream(state, tunnel_id, tunnel_name, head_bytes))
            .await
            .map_err(|_| timed_out())??;
    let connection = in_flight.connection().clone();

    // A WebSocket keeps its send half for the raw bytes after the 101.
    let mut upgrade_send = None;
    // With a body: (why the upload was cut, if it stalled before the response head; a sender
    // fired when the response head arrives, which ends the upload's total time limit).
    let mut upload = None;
    if upstream.on_upgrade.is_some() {
        upgrade_send = Some(send);
    } else if let Some(body) = upstream.body {
        let (body_failed_tx, body_failed) = tokio::sync::oneshot::channel::<ProxyError>();
        let (answered_tx, answered) = tokio::sync::oneshot::channel::<()>();
        upload = Some((body_failed, answered_tx));
        let limits = state.config.limits;
        let (idle, total) = (
            state.config.request_body_idle_timeout,
            state.config.request_body_timeout,
        );
        tokio::spawn(async move {
            // The total limit holds until the origin starts answering; after that only the idle
            // one does, so an upload streamed beside a streamed response may last.
            let limit = async move {
                tokio::select! {
                    () = tokio::time::sleep(total) => {}
                    Ok(()) = answered => std::future::pending().await,
                }
            };
            let relayed = tokio::select! {
                relayed = send_body(body, &mut send, &limits, Some(idle)) => Some(relayed),
                () = limit => None,
            };
            // What the visitor did to the upload, if the visitor is to blame.
            let visitor = match relayed {
                Some(Ok(())) => {
                    let _ = send.finish();
                    return;
                }
                Some(Err(BodyError::Idle(idle))) => {
                    Some(ProxyError::RequestTimeout(format!("sent nothing for {idle:?}")))
                }
                None => Some(ProxyError::RequestTimeout(format!("did not arrive within {total:?}"))),
                // Reading the visitor's body failed: bad chunked framing, or the visitor left.
                Some(Err(BodyError::Source(e))) => Some(ProxyError::BadBody(e.to_string())),
                Some(Err(e)) => {
                    tracing::debug!("request body relay stopped: {e}");
                    None
                }
            };
            // Tell the waiting exchange first, so the visitor's error wins over the connector's
            // reaction to the reset (which would look like the tunnel's fault).
            if let Some(error) = visitor {
                let _ = body_failed_tx.send(error);
            }
            // Reset, not finish: the origin must not take a cut upload as complete.
            let _ = send.reset(error_code::REQUEST_CANCELLED.into());
        });
    } else {
        let _ = send.finish();
    }

    let mut frames = FramedRead::new(recv, TunnelCodec::new(state.config.limits));
    let stream_failed = |reason: String| ProxyError::TunnelStream {
        name: tunnel_name.to_owned(),
        reason,
    };
    let stalled = async {
        match upload.as_mut() {
            Some((body_failed, _)) => body_failed.await.ok(),
            None => None,
        }
    };
    let first = tokio::select! {
        biased;
        // No body, or the relay dropped the sender when the body went through: this branch then
        // disables itself.
        Some(stalled) = stalled => return Err(stalled),
        () = connection.until_suspect(), if hedge => {
            return Err(stream_failed("the tunnel connection stopped answering".into()));
        }
        first = tokio::time::timeout_at(deadline, frames.next()) => first,
    }
    .map_err(|_| timed_out())?;
    if let Some((_, answered)) = upload {
        let _ = answered.send(());
    }
    let ResponseHead {
        status,
        headers: mut response_headers,
    } = match first {
        Some(Ok(Frame::ResponseHead(head))) => *head,
        Some(Ok(Frame::Error(err))) => {
            let name = tunnel_name.to_owned();
            return Err(match err.code {
                StreamErrorCode::OriginUnreachable => ProxyError::OriginUnreachable {
                    name,
                    message: err.message,
                },
                StreamErrorCode::OriginTimeout => ProxyError::OriginTimeout {
                    name,
                    timeout: state.config.origin_timeout,
                },
                _ => ProxyError::ConnectorRefused {
                    name,
                    message: err.message,
                },
            });
        }
        Some(Ok(_)) => return Err(stream_failed("connector sent an unexpected frame".into())),
        Some(Err(e)) => return Err(stream_failed(e.to_string())),
        None => return Err(stream_failed("connector closed the stream without answering".into())),
    };

    if let (Some(on_upgrade), Some(send), StatusCode::SWITCHING_PROTOCOLS) = (upstream.on_upgrade, upgrade_send, status)
    {
        // Tunnel the upgraded connection only once the origin agreed (101).
        strip_hop_by_hop(&mut response_headers, true);
        tokio::spawn(bridge_upgrade(on_upgrade, send, frames, in_flight));
        let mut response = Response::new(Either::Right(Full::default()));
        *response.status_mut() = status;
        *response.headers_mut() = response_headers;
        return Ok(response);
    }

    strip_hop_by_hop(&mut response_headers, false);
    let mut response = Response::new(Either::Left(TunnelBody {
        inner: FramedBody::new(frames),
        _in_flight: in_flight,
    }));
    *response.status_mut() = status;
    *response.headers_mut() = response_headers;
    Ok(response)
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

/// Open a stream on the tunnel's least busy connection and write the head. A connection that
/// fails here has seen nothing of the request, so one other connection is tried.
pub(crate) async fn open_stream(
    state: &EdgeState,
    tunnel: TunnelId,
    tunnel_name: &str,
    head: &[u8],
) -> Result<(InFlight, quinn::SendStream, quinn::RecvStream), ProxyError> {
    let mut skip = None;
    let mut last_error = String::new();
    for _ in 0..2 {
        let Some(in_flight) = state.registry.pick(&tunnel, skip) else {
            break;
        };
        let conn = in_flight.connection().clone();
        let opened = async {
            let (mut send, recv) = conn.quic.open_bi().await.map_err(|e| e.to_string())?;
            send.write_all(head).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((send, recv))
        };
        match tokio::time::timeout(OPEN_STREAM_TIMEOUT, opened).await {
            Ok(Ok((send, recv))) => return Ok((in_flight, send, recv)),
            Ok(Err(e)) => last_error = e,
            Err(_) => {
                // No stream credit (the connector is at its limit) or no answer: try another.
                conn.mark_suspect();
                last_error = format!("no stream could be opened within {OPEN_STREAM_TIMEOUT:?}");
            }
        }
        skip = Some(conn.info.connection_id);
    }
    if last_error.is_empty() {
        Err(ProxyError::TunnelUnavailable {
            name: tunnel_name.to_owned(),
            id: tunnel.to_string(),
        })
    } else {
        Err(ProxyError::TunnelStream {
            name: tunnel_name.to_owned(),
            reason: last_error,
        })
    }
}

/// Headers sent to the origin: hop-by-hop and spoofable `burrow-*` headers removed, forwarding
/// headers added.
fn forwarded_headers(
    mut h: HeaderMap,
    client: &ClientInfo,
    host: &str,
    request_id: &str,
    websocket: bool,
) -> HeaderMap {
    strip_hop_by_hop(&mut h, websocket);
    let spoofed: Vec<_> = h.keys().filter(|k| set_by_edge(k.as_str())).cloned().collect();
    for name in spoofed {
        h.remove(name);
    }
    let ip = client.addr.ip().to_string();
    let xff = match h.get(&headers::X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {ip}"),
        None => ip.clone(),
    };
    for (name, value) in [
        (headers::X_FORWARDED_FOR, xff.as_str()),
        (headers::X_FORWARDED_PROTO, client.scheme.as_str()),
        (headers::X_FORWARDED_HOST, host),
        (headers::CONNECTING_IP, ip.as_str()),
        (headers::REQUEST_ID, request_id),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            h.insert(name, value);
        }
    }
    h
}

/// Whether a client header is one the edge sets, in any spelling: `burrow-*`, and with `_` for
/// `-` the forwarding headers too (CGI and WSGI origins read `Burrow_Connecting_IP` as
/// `Burrow-Connecting-IP`). The visitor's own `X-Forwarded-For` is kept and appended to.
fn set_by_edge(name: &str) -> bool {
    let spelled = |canonical: &str| {
        name.len() >= canonical.len()
            && name
                .bytes()
                .zip(canonical.bytes())
                .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
    };
    let underscored = name.contains('_');
    spelled("burrow-")
        || underscored
            && name.len() <= "x-forwarded-proto".len()
            && ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"]
                .iter()
                .any(|h| h.len() == name.len() && spelled(h))
}

/// After a 101: raw bytes between the client's upgraded connection and the tunnel stream.
async fn bridge_upgrade(
    on_upgrade: hyper::upgrade::OnUpgrade,
    mut send: quinn::SendStream,
    frames: FramedRead<quinn::RecvStream, TunnelCodec>,
    in_flight: InFlight,
) {
    let _in_flight = in_flight;
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!("client upgrade failed: {e}");
            let _ = send.reset(error_code::REQUEST_CANCELLED.into());
            return;
        }
    };
    let parts = frames.into_parts();
    splice(TokioIo::new(upgraded), parts.io, parts.read_buf, send).await;
}

/// A response body relayed from the tunnel; keeps its connection counted as busy until done.
pub struct TunnelBody {
    inner: FramedBody<quinn::RecvStream>,
    _in_flight: InFlight,
}

impl Body for TunnelBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_the_edges_headers_is_stripped() {
        for name in [
            "burrow-connecting-ip",
            "burrow_connecting_ip",
            "burrow_request-id",
            "burrow-anything",
            "x_forwarded_for",
            "x_forwarded-proto",
            "x-forwarded_host",
        ] {
            assert!(set_by_edge(name), "{name}");
        }
        for name in [
            "x-forwarded-for",
            "burrowing",
            "x_forwarded_fork",
            "content-type",
            "my_header",
        ] {
            assert!(!set_by_edge(name), "{name}");
        }
    }
}
