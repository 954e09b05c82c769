//! One public request, in phases, each in a function of its own:
//!
//! 1. **resolve** ([`resolve`]): the route for the Host, and where it sends requests;
//! 2. **request hooks** ([`hooks::request_hooks`]): `on-request-headers`, then `on-request-body`;
//! 3. **steer** ([`steer::steering_key`]): for a pool, the request's key (affinity, hashing) and
//!    the balancer plugin's pick;
//! 4. **dispatch**: over a stream of the tunnel ([`exchange`]: timeouts, the upload, the response
//!    head), or to the pool ([`steer::to_pool`]: passive health, affinity cookie, one retry on
//!    another origin);
//! 5. **response hooks** ([`hooks::response_hooks`]);
//! 6. **log** ([`log`]): `on-log` when the response body has gone out.
//!
//! An error in any phase becomes a response in [`crate::dataplane::respond`].

mod exchange;
mod forwarded;
mod hooks;
mod log;
mod resolve;
mod steer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use burrow_protocol::headers::{self, is_websocket_upgrade};
use burrow_protocol::{Frame, RequestHead, RequestKind, Scheme, TunnelCodec};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio_util::codec::Encoder;

use crate::EdgeState;
use crate::dataplane::request_checks;
use crate::dataplane::respond::{ProxyError, error_response};
use crate::plugins::host::Declared;

pub use exchange::TunnelBody;
pub(crate) use exchange::open_stream;
pub use log::{LoggedBody, PendingLog};
use resolve::Destination;

/// Body of every response the edge sends: relayed from the tunnel, or generated here.
pub type ResponseBody = Either<TunnelBody, Full<Bytes>>;

/// What the public listener sends: the response body, watched to the end when plugins of the
/// route run `on-log`.
pub type PublicBody = Either<ResponseBody, LoggedBody>;

/// Who is asking, as the public listener saw it.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub addr: SocketAddr,
    pub scheme: Scheme,
    /// TLS server name (SNI) the client asked for, if any.
    pub sni: Option<Arc<str>>,
}

/// The request body for the origin: streamed from the client, or buffered for the plugins'
/// `on-request-body` (and perhaps replaced by them).
type RequestBody = Either<Incoming, Full<Bytes>>;

/// The request head on its way to the origin, as the phases change it.
struct Head {
    method: Method,
    /// The Host, checked.
    authority: String,
    path: String,
    headers: HeaderMap,
}

/// What goes to the origin besides the head: the client's body (`None` when empty) and, for a
/// WebSocket, the client side of the upgrade.
struct Upstream {
    body: Option<RequestBody>,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
}

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
    log::watch(response, log, started)
}

/// The phases, in order.
async fn forward(
    state: &EdgeState,
    mut req: Request<Incoming>,
    client: &ClientInfo,
    request_id: &str,
    log: &mut Option<PendingLog>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let authority = request_checks::check(&req)?;
    let route = resolve::resolve(state, client, &authority)?;
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
    let (parts, incoming) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let mut head = Head {
        method: parts.method,
        authority,
        path,
        headers: parts.headers,
    };

    let needs = match &state.config.plugins {
        Some(plugin_host) if !route.plugins.is_empty() => plugin_host.chain_needs(&route.plugins),
        _ => Declared::default(),
    };
    // An edge without plugins loaded still runs a route's chain: the hooks fail it (or let it
    // through when every binding is fail-open).
    let (body, for_response) = if route.plugins.is_empty() {
        (Either::Left(incoming), None)
    } else {
        // Boxed: the hooks' state is large, and inline it would be part of every request's
        // future (moved in memory several times per request), plugins or not.
        let hooks = hooks::request_hooks(state, &route, needs, client, request_id, &mut head, incoming, log);
        match Box::pin(hooks).await? {
            hooks::RequestHooks::Forward { body, for_response } => (body, for_response),
            hooks::RequestHooks::Respond(response) => return Ok(response.map(Either::Right)),
        }
    };

    let idempotent = matches!(head.method, Method::GET | Method::HEAD | Method::OPTIONS) && body.is_end_stream();
    let steering_key = match &route.destination {
        Destination::Pool { table, index } => {
            steer::steering_key(state, &table.pools()[*index], &head, client, request_id, &route.pattern).await
        }
        Destination::Tunnel { .. } => Default::default(),
    };
    let head_bytes = encode_head(state, head, client, request_id, websocket)?;
    let upstream = Upstream {
        body: (!body.is_end_stream()).then_some(body),
        on_upgrade,
    };
    let response = match route.destination {
        Destination::Tunnel { id, name } => {
            // An idempotent request whose stream broke before any response byte (its connection
            // or the edge it was forwarded to died) goes once more: to another connection, or
            // another edge. (Not hedged as pools are: watching for a silent connection costs
            // every request, and a dead edge's streams break on their own.)
            let retry = idempotent && !websocket;
            match exchange::exchange(state, id, &name, &head_bytes, upstream, false).await {
                Err(ProxyError::TunnelStream { .. }) if retry => {
                    let again = Upstream {
                        body: None,
                        on_upgrade: None,
                    };
                    exchange::exchange(state, id, &name, &head_bytes, again, false).await?
                }
                result => result?,
            }
        }
        Destination::Pool { table, index } => {
            let retry = idempotent && !websocket;
            // Boxed: with its retry it is twice the tunnel exchange, and it would grow every
            // request's future, not only pooled ones.
            let pooled = steer::to_pool(
                state,
                &table,
                index,
                &steering_key,
                client,
                &head_bytes,
                upstream,
                retry,
            );
            Box::pin(pooled).await?
        }
    };

    match for_response {
        Some(request) if response.status() != StatusCode::SWITCHING_PROTOCOLS => {
            Box::pin(hooks::response_hooks(state, &route.plugins, needs, request, response)).await
        }
        _ => Ok(response),
    }
}

/// The request head as the connector reads it, with the forwarding headers.
fn encode_head(
    state: &EdgeState,
    head: Head,
    client: &ClientInfo,
    request_id: &str,
    websocket: bool,
) -> Result<BytesMut, ProxyError> {
    let head = RequestHead {
        kind: if websocket {
            RequestKind::WebSocket
        } else {
            RequestKind::Http
        },
        flags: 0,
        method: head.method,
        scheme: client.scheme,
        path: head.path,
        headers: forwarded::headers(head.headers, client, &head.authority, request_id, websocket),
        authority: head.authority,
        client_addr: client.addr,
        request_id: request_id.to_owned(),
    };
    let mut bytes = BytesMut::with_capacity(512);
    TunnelCodec::new(state.config.limits)
        .encode(Frame::RequestHead(Box::new(head)), &mut bytes)
        .map_err(|e| ProxyError::BadRequest(format!("request head: {e}")))?;
    Ok(bytes)
}

/// The Content-Length of a message, if it has one.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(http::header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}
