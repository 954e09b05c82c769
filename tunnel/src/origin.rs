//! Serving one request stream: match an ingress rule, talk to the origin, relay the answer.
//!
//! The edge opens one QUIC stream per public request. Everything here is per stream; the only
//! shared state is the per-rule HTTP client (pooled keep-alive connections to the origin).

use std::sync::Arc;

use anyhow::{Context, Result};
use burrow_protocol::body::{FramedBody, send_body, splice, write_frame};
use burrow_protocol::frame::read_frame;
use burrow_protocol::headers::strip_hop_by_hop;
use burrow_protocol::{
    Frame, Limits, RequestHead, RequestKind, ResponseHead, StreamError, StreamErrorCode, TunnelCodec, error_code,
};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::FramedRead;

use crate::ingress::{Ingress, OriginRequest, OriginScheme, Rule, Service};
use crate::tls::origin_tls_config;

type TunnelRecv = quinn::RecvStream;
type RequestBody = FramedBody<TunnelRecv>;
type HttpClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

/// Any byte stream to an origin (TCP, Unix socket, either under TLS).
trait OriginIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> OriginIo for T {}

/// The connector's view of its origins: the ingress rules and one client per HTTP rule.
pub struct Origins {
    ingress: Ingress,
    /// Indexed like `ingress.rules`.
    rules: Vec<RuleOrigin>,
    limits: Limits,
    in_flight: std::sync::atomic::AtomicUsize,
}

struct RuleOrigin {
    /// Pooled client for `http(s)://` services.
    client: Option<HttpClient>,
    /// TLS for dialled connections (`https` WebSockets, `unix+tls`).
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// Why a stream got no response from the origin; becomes an `Error` frame for the edge.
struct Failure {
    code: StreamErrorCode,
    message: String,
}

impl Failure {
    fn unreachable(rule: &Rule, cause: impl std::fmt::Display) -> Self {
        Self {
            code: StreamErrorCode::OriginUnreachable,
            message: format!("{}: {cause}", rule.describe()),
        }
    }
}

impl Origins {
    pub fn new(ingress: Ingress, limits: Limits) -> Result<Self> {
        let rules = ingress.rules.iter().map(RuleOrigin::new).collect::<Result<Vec<_>>>()?;
        Ok(Self {
            ingress,
            rules,
            limits,
            in_flight: Default::default(),
        })
    }

    /// The same rules with connection pools of their own (for another thread's connections).
    pub fn with_own_pools(&self) -> Result<Self> {
        Self::new(self.ingress.clone(), self.limits)
    }

    pub fn ingress(&self) -> &Ingress {
        &self.ingress
    }

    /// Request streams being served now (each holds a task and, for HTTP, an origin request).
    pub fn streams_in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Serve one request stream opened by the edge, start to finish.
    pub async fn serve(&self, send: quinn::SendStream, recv: TunnelRecv) {
        struct Counted<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Counted<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _counted = Counted(&self.in_flight);
        self.serve_stream(send, recv).await;
    }

    async fn serve_stream(&self, mut send: quinn::SendStream, recv: TunnelRecv) {
        let mut frames = FramedRead::new(recv, TunnelCodec::new(self.limits));
        let head = match read_frame(&mut frames, &self.limits).await {
            Ok(Some(Frame::RequestHead(head))) => *head,
            Ok(_) | Err(_) => {
                let _ = send.reset(error_code::PROTOCOL_ERROR.into());
                return;
            }
        };
        let (path, _query) = head.path.split_once('?').unwrap_or((&head.path, ""));
        let rule = self.ingress.find(&head.authority, path);
        let Some(origin) = self.rules.get(rule.index) else {
            let _ = send.reset(error_code::PROTOCOL_ERROR.into());
            return;
        };
        let request_id = head.request_id.clone();
        // The edge stops reading (STOP_SENDING) when it gives up on the request (timeout, visitor
        // gone): the origin request is dropped then, with its connection, instead of running on
        // until a hung origin answers.
        let abandoned = send.stopped();
        let work = async {
            match (&rule.service, head.kind) {
                (Service::HttpStatus(status), _) => {
                    respond_static(&mut send, *status, Bytes::new(), &self.limits).await
                }
                (Service::HelloWorld, RequestKind::Http) => {
                    respond_static(&mut send, StatusCode::OK, hello_world(&head), &self.limits).await
                }
                (Service::Http { .. } | Service::Unix { .. }, RequestKind::Http) => {
                    self.proxy_http(rule, origin, head, FramedBody::new(frames), &mut send)
                        .await
                }
                (Service::Http { .. } | Service::Unix { .. }, RequestKind::WebSocket) => {
                    self.proxy_websocket(rule, origin, head, frames, &mut send).await
                }
                (Service::Tcp { address }, RequestKind::Tcp) => {
                    let stream = dial_tcp(address, &rule.origin)
                        .await
                        .map_err(|e| Failure::unreachable(rule, e));
                    match stream {
                        Ok(stream) => {
                            let ok = ResponseHead {
                                status: StatusCode::OK,
                                headers: HeaderMap::new(),
                            };
                            upgrade_relay(stream, ok, frames, &mut send, &self.limits).await;
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
                (service, kind) => Err(Failure {
                    code: StreamErrorCode::Unsupported,
                    message: format!("{} ({service}) cannot serve {kind:?} requests", rule.describe()),
                }),
            }
        };
        let result = tokio::select! {
            result = work => result,
            // (`Ok(None)` would mean the edge has the whole answer: only after `work` ended.)
            stopped = abandoned => {
                tracing::debug!(request_id, ?stopped, "the edge abandoned the request; dropping the origin request");
                return;
            }
        };
        if let Err(failure) = result {
            tracing::warn!(request_id, "{}", failure.message);
            let _ = send_failure(&mut send, failure, &self.limits).await;
        }
        // Finished is not delivered: closing the connection (shutdown, drain) drops unsent
        // stream data, so the task that tracks this request lasts until the edge has it all.
        let _ = send.stopped().await;
    }

    async fn proxy_http(
        &self,
        rule: &Rule,
        origin: &RuleOrigin,
        head: RequestHead,
        body: RequestBody,
        send: &mut quinn::SendStream,
    ) -> Result<(), Failure> {
        let request = origin_request(rule, head, body, origin.client.is_some())?;
        let response = match (&origin.client, &rule.service) {
            (Some(client), _) => client
                .request(request)
                .await
                .map_err(|e| describe_client_error(rule, &e))?,
            (None, Service::Unix { .. }) => {
                let io = dial(rule, origin).await?;
                let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                    .await
                    .map_err(|e| Failure::unreachable(rule, e))?;
                tokio::spawn(conn);
                sender
                    .send_request(request)
                    .await
                    .map_err(|e| Failure::unreachable(rule, e))?
            }
            _ => return Err(Failure::unreachable(rule, "no HTTP client for this rule")),
        };
        relay_response(response, send, &self.limits).await;
        Ok(())
    }

    /// WebSocket: a dedicated HTTP/1.1 connection; once the origin answers 101, raw bytes.
    async fn proxy_websocket(
        &self,
        rule: &Rule,
        origin: &RuleOrigin,
        head: RequestHead,
        frames: FramedRead<TunnelRecv, TunnelCodec>,
        send: &mut quinn::SendStream,
    ) -> Result<(), Failure> {
        let request = origin_request(rule, head, Empty::<Bytes>::new(), false)?;
        let io = dial(rule, origin).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| Failure::unreachable(rule, e))?;
        tokio::spawn(conn.with_upgrades());
        let mut response = sender
            .send_request(request)
            .await
            .map_err(|e| Failure::unreachable(rule, e))?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            // The origin refused the upgrade: an ordinary response, relayed as such.
            relay_response(response, send, &self.limits).await;
            return Ok(());
        }
        let mut headers = std::mem::take(response.headers_mut());
        strip_hop_by_hop(&mut headers, true);
        let upgraded = hyper::upgrade::on(response)
            .await
            .map_err(|e| Failure::unreachable(rule, e))?;
        let head = ResponseHead {
            status: StatusCode::SWITCHING_PROTOCOLS,
            headers,
        };
        upgrade_relay(TokioIo::new(upgraded), head, frames, send, &self.limits).await;
        Ok(())
    }
}

impl RuleOrigin {
    fn new(rule: &Rule) -> Result<Self> {
        let settings = &rule.origin;
        let context = || format!("setting up {}", rule.describe());
        if settings.disable_chunked_encoding {
            tracing::warn!(
                "{}: disableChunkedEncoding is not supported yet and is ignored",
                rule.describe()
            );
        }
        Ok(match &rule.service {
            Service::Http { scheme, .. } => {
                let tls = origin_tls_config(settings).with_context(context)?;
                let client = http_client(settings, tls.clone(), *scheme == OriginScheme::Https);
                Self {
                    client: Some(client),
                    tls: (*scheme == OriginScheme::Https).then_some(tls),
                }
            }
            Service::Unix { tls: true, .. } => Self {
                client: None,
                tls: Some(origin_tls_config(settings).with_context(context)?),
            },
            _ => Self {
                client: None,
                tls: None,
            },
        })
    }
}

fn http_client(settings: &OriginRequest, tls: Arc<rustls::ClientConfig>, https: bool) -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(settings.connect_timeout));
    http.set_keepalive(Some(settings.tcp_keep_alive));
    http.set_nodelay(true);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls).clone())
        .https_or_http();
    let builder = match settings
        .origin_server_name
        .as_deref()
        .map(|n| ServerName::try_from(n.to_owned()))
    {
        Some(Ok(name)) => builder.with_server_name_resolver(FixedServerNameResolver::new(name)),
        _ => builder,
    };
    let connector = if settings.http2_origin && https {
        builder.enable_all_versions().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    };
    let mut client = Client::builder(TokioExecutor::new());
    client
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(settings.keep_alive_timeout)
        .pool_max_idle_per_host(settings.keep_alive_connections);
    // `http2Origin` on a cleartext origin means prior-knowledge HTTP/2 (h2c, e.g. gRPC servers).
    if settings.http2_origin && !https {
        client.http2_only(true);
    }
    client.build(connector)
}

/// The request as the origin receives it: the rule's base path prefixed, Host kept from the
/// visitor unless `httpHostHeader` overrides it (what cloudflared does). `absolute`: for the
/// pooled client, which connects by the URI's authority and sends origin-form itself; dialled
/// connections (WebSocket, Unix sockets) get origin-form, as a server expects.
fn origin_request<B>(rule: &Rule, head: RequestHead, body: B, absolute: bool) -> Result<Request<B>, Failure> {
    let uri = origin_uri(&rule.service, &head.path, absolute).map_err(|e| Failure {
        code: StreamErrorCode::Unsupported,
        message: format!("{}: {e}", rule.describe()),
    })?;
    let mut request = Request::builder()
        .method(head.method)
        .uri(uri)
        .body(body)
        .map_err(|e| Failure {
            code: StreamErrorCode::Internal,
            message: format!("building origin request: {e}"),
        })?;
    let headers = request.headers_mut();
    *headers = head.headers;
    let host = rule.origin.http_host_header.as_deref().unwrap_or(&head.authority);
    if let Ok(host) = HeaderValue::from_str(host) {
        headers.insert(header::HOST, host);
    }
    Ok(request)
}

/// The target of a request to `service`'s origin: built from parts, so that nothing a visitor
/// sends can name another host or port than the one configured. `path` must be origin-form (it
/// starts with `/`; the edge answers `OPTIONS *` itself).
pub fn origin_uri(service: &Service, path: &str, absolute: bool) -> Result<http::Uri, String> {
    if !path.starts_with('/') {
        return Err(format!("the request target {path:?} is not a path"));
    }
    let base = match service {
        Service::Http { base_path, .. } => base_path.as_str(),
        _ => "",
    };
    let path_and_query = http::uri::PathAndQuery::try_from(format!("{base}{path}"))
        .map_err(|e| format!("the request target {path:?} is not a valid path: {e}"))?;
    match service {
        Service::Http { scheme, authority, .. } if absolute => http::Uri::builder()
            .scheme(scheme.as_str())
            .authority(authority.as_str())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| format!("building the origin's URI: {e}")),
        _ => Ok(http::Uri::from(path_and_query)),
    }
}

/// Open a raw connection to the rule's origin (for WebSockets and Unix sockets).
async fn dial(rule: &Rule, origin: &RuleOrigin) -> Result<Box<dyn OriginIo>, Failure> {
    let settings = &rule.origin;
    let (io, server_name): (Box<dyn OriginIo>, String) = match &rule.service {
        Service::Http { authority, .. } => {
            let host = burrow_shared::host_port::split(authority).0;
            let stream = dial_tcp(authority, settings)
                .await
                .map_err(|e| Failure::unreachable(rule, e))?;
            (Box::new(stream), burrow_shared::host_port::unbracket(host).to_owned())
        }
        Service::Unix { path, .. } => {
            let stream = tokio::time::timeout(settings.connect_timeout, tokio::net::UnixStream::connect(path))
                .await
                .map_err(|_| Failure::unreachable(rule, "connect timed out"))?
                .map_err(|e| Failure::unreachable(rule, e))?;
            (Box::new(stream), "localhost".to_owned())
        }
        _ => return Err(Failure::unreachable(rule, "not a dialable service")),
    };
    let Some(tls) = &origin.tls else { return Ok(io) };
    let name = settings.origin_server_name.clone().unwrap_or(server_name);
    let name = ServerName::try_from(name).map_err(|e| Failure::unreachable(rule, e))?;
    let mut config = (**tls).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = tokio::time::timeout(settings.tls_timeout, connector.connect(name, io))
        .await
        .map_err(|_| Failure::unreachable(rule, "TLS handshake timed out"))?
        .map_err(|e| Failure::unreachable(rule, format!("TLS handshake: {e}")))?;
    Ok(Box::new(stream))
}

async fn dial_tcp(address: &str, settings: &OriginRequest) -> Result<tokio::net::TcpStream, String> {
    let stream = tokio::time::timeout(settings.connect_timeout, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| format!("connecting to {address} timed out after {:?}", settings.connect_timeout))?
        .map_err(|e| format!("connecting to {address}: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Send the origin's response back: head, then body and trailers as they arrive.
async fn relay_response<B>(response: Response<B>, send: &mut quinn::SendStream, limits: &Limits)
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    let head = Frame::ResponseHead(Box::new(ResponseHead {
        status: parts.status,
        headers: parts.headers,
    }));
    let sent = match write_frame(send, head, limits).await {
        Ok(()) => send_body(body, send, limits, None).await,
        Err(e) => Err(e),
    };
    match sent {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(e) => {
            // Reset, not finish: the visitor must see an error, never a short body as complete.
            tracing::debug!("response relay stopped: {e}");
            let _ = send.reset(error_code::REQUEST_CANCELLED.into());
        }
    }
}

/// Answer with a generated response (http_status, hello_world).
async fn respond_static(
    send: &mut quinn::SendStream,
    status: StatusCode,
    body: Bytes,
    limits: &Limits,
) -> Result<(), Failure> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    relay_response(response.map(|b| b.map_err(|never| match never {})), send, limits).await;
    Ok(())
}

/// Write the response head, then relay raw bytes both ways (WebSocket after 101, TCP after 200).
async fn upgrade_relay<I: AsyncRead + AsyncWrite + Unpin>(
    io: I,
    head: ResponseHead,
    frames: FramedRead<TunnelRecv, TunnelCodec>,
    send: &mut quinn::SendStream,
    limits: &Limits,
) {
    if write_frame(send, Frame::ResponseHead(Box::new(head)), limits)
        .await
        .is_err()
    {
        return;
    }
    let parts = frames.into_parts();
    splice(io, parts.io, parts.read_buf, send).await;
}

async fn send_failure(send: &mut quinn::SendStream, failure: Failure, limits: &Limits) -> Result<()> {
    let frame = Frame::Error(StreamError {
        code: failure.code,
        message: failure.message,
    });
    write_frame(send, frame, limits).await?;
    send.finish()?;
    Ok(())
}

fn describe_client_error(rule: &Rule, e: &hyper_util::client::legacy::Error) -> Failure {
    use std::error::Error;
    // The legacy client's Display is terse; the cause chain says what actually happened.
    // A timeout is told by its error's kind, not its wording.
    let mut message = e.to_string();
    let mut timed_out = false;
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        timed_out |= cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
        source = cause.source();
    }
    let code = match timed_out {
        true => StreamErrorCode::OriginTimeout,
        false => StreamErrorCode::OriginUnreachable,
    };
    Failure {
        code,
        message: format!("{}: {message}", rule.describe()),
    }
}

/// The `hello_world` service: shows what reached the origin side, handy to check a new tunnel.
fn hello_world(head: &RequestHead) -> Bytes {
    let mut page = format!(
        "Hello from burrow!\n\nThis response was served by the connector's built-in hello_world \
         service.\n\n{} {}\nhost: {}\nclient: {}\nrequest id: {}\n\nheaders:\n",
        head.method, head.path, head.authority, head.client_addr, head.request_id
    );
    for (name, value) in &head.headers {
        page.push_str(&format!("  {name}: {}\n", String::from_utf8_lossy(value.as_bytes())));
    }
    Bytes::from(page)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    /// Whatever the target, the origin's URI names the configured host and port, and dialled
    /// connections get origin-form.
    #[test]
    fn origin_uris_keep_the_configured_authority() {
        let service = Service::parse("http://127.0.0.1:48001/base").unwrap();
        for path in ["/x?y=1", "//evil.test/x", "/@evil.test:80/", "/..%2f..", "/a#frag"] {
            let uri = origin_uri(&service, path, true).unwrap();
            assert_eq!(uri.authority().unwrap().as_str(), "127.0.0.1:48001", "{path}");
            assert!(
                uri.path().starts_with("/base/") || uri.path().starts_with("/base"),
                "{uri}"
            );
            let dialled = origin_uri(&service, path, false).unwrap();
            assert!(dialled.authority().is_none(), "{dialled}");
        }
        for target in ["*", "", "http://evil.test/", "evil.test:80", "@evil.test"] {
            assert!(origin_uri(&service, target, true).is_err(), "{target:?}");
        }
    }
}
