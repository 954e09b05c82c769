//! Request and response heads: what crosses the tunnel before a body.

use std::net::{IpAddr, SocketAddr};

use bytes::{BufMut, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::frame::{FrameError, Limits, Reader};

/// What kind of exchange a request stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Ordinary HTTP: framed bodies and trailers both ways.
    Http = 0,
    /// WebSocket upgrade: after a `101` response head, raw bytes both ways.
    WebSocket = 1,
    /// Raw TCP: after a `200` response head, raw bytes both ways.
    Tcp = 2,
}

/// Scheme the public client used to reach the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http = 0,
    Https = 1,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Flag bit: the request is an edge health probe, not a visitor's request.
pub const FLAG_HEALTH_CHECK: u8 = 1;

/// The head of a public request as the edge forwards it.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestHead {
    pub kind: RequestKind,
    pub flags: u8,
    pub method: Method,
    pub scheme: Scheme,
    /// Host (and port, if the client gave one) the client asked for.
    pub authority: String,
    /// Path and query, as received.
    pub path: String,
    pub headers: HeaderMap,
    pub client_addr: SocketAddr,
    pub request_id: String,
}

/// The head of the origin's response as the connector returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// Why the connector could not produce a response. Sent instead of a [`ResponseHead`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    pub code: StreamErrorCode,
    /// Safe to show to the visitor's operator: names the origin, never secrets.
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamErrorCode {
    /// Connecting to the origin failed (refused, DNS, TLS).
    OriginUnreachable = 1,
    /// The origin did not answer in time.
    OriginTimeout = 2,
    /// The request cannot be served by the matched ingress rule (e.g. HTTP to a `tcp://` service).
    Unsupported = 3,
    /// The connector is draining and takes no new requests.
    Draining = 4,
    /// Anything else on the connector side.
    Internal = 5,
}

impl StreamErrorCode {
    fn from_u16(code: u16) -> Option<Self> {
        Some(match code {
            1 => Self::OriginUnreachable,
            2 => Self::OriginTimeout,
            3 => Self::Unsupported,
            4 => Self::Draining,
            5 => Self::Internal,
            _ => return None,
        })
    }
}

impl RequestHead {
    pub(crate) fn encode(&self, dst: &mut BytesMut) {
        dst.put_u8(self.kind as u8);
        dst.put_u8(self.flags);
        dst.put_u8(self.scheme as u8);
        put_str8(dst, self.method.as_str());
        put_str16(dst, &self.authority);
        put_str16(dst, &self.path);
        match self.client_addr.ip() {
            IpAddr::V4(ip) => {
                dst.put_u8(4);
                dst.put_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                dst.put_u8(6);
                dst.put_slice(&ip.octets());
            }
        }
        dst.put_u16(self.client_addr.port());
        put_str8(dst, &self.request_id);
        encode_headers(&self.headers, dst);
    }

    pub(crate) fn decode(r: &mut Reader<'_>, limits: &Limits) -> Result<Self, FrameError> {
        let kind = match r.u8()? {
            0 => RequestKind::Http,
            1 => RequestKind::WebSocket,
            2 => RequestKind::Tcp,
            other => return Err(FrameError::Malformed(format!("unknown request kind {other}"))),
        };
        let flags = r.u8()?;
        let scheme = match r.u8()? {
            0 => Scheme::Http,
            1 => Scheme::Https,
            other => return Err(FrameError::Malformed(format!("unknown scheme {other}"))),
        };
        let method = Method::from_bytes(r.bytes8()?).map_err(|_| FrameError::Malformed("invalid method".into()))?;
        let authority = r.str16()?.to_owned();
        let path = r.str16()?.to_owned();
        let ip = match r.u8()? {
            4 => IpAddr::from(r.array::<4>()?),
            6 => IpAddr::from(r.array::<16>()?),
            other => return Err(FrameError::Malformed(format!("unknown address family {other}"))),
        };
        let client_addr = SocketAddr::new(ip, r.u16()?);
        let request_id = r.str8()?.to_owned();
        let headers = decode_headers(r, limits)?;
        Ok(Self {
            kind,
            flags,
            method,
            scheme,
            authority,
            path,
            headers,
            client_addr,
            request_id,
        })
    }
}

impl ResponseHead {
    pub(crate) fn encode(&self, dst: &mut BytesMut) {
        dst.put_u16(self.status.as_u16());
        encode_headers(&self.headers, dst);
    }

    pub(crate) fn decode(r: &mut Reader<'_>, limits: &Limits) -> Result<Self, FrameError> {
        let status = StatusCode::from_u16(r.u16()?).map_err(|_| FrameError::Malformed("invalid status code".into()))?;
        let headers = decode_headers(r, limits)?;
        Ok(Self { status, headers })
    }
}

impl StreamError {
    pub(crate) fn encode(&self, dst: &mut BytesMut) {
        dst.put_u16(self.code as u16);
        put_str16(dst, &self.message);
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, FrameError> {
        let raw = r.u16()?;
        let code = StreamErrorCode::from_u16(raw)
            .ok_or_else(|| FrameError::Malformed(format!("unknown stream error code {raw}")))?;
        let message = r.str16()?.to_owned();
        Ok(Self { code, message })
    }
}

/// Headers travel as a count and then name/value byte pairs, so repeated names keep their order.
pub(crate) fn encode_headers(headers: &HeaderMap, dst: &mut BytesMut) {
    // HeaderMap::len counts values, which is what we write.
    dst.put_u16(u16::try_from(headers.len()).unwrap_or(u16::MAX));
    for (name, value) in headers.iter().take(usize::from(u16::MAX)) {
        put_bytes16(dst, name.as_str().as_bytes());
        put_bytes16(dst, value.as_bytes());
    }
}

pub(crate) fn decode_headers(r: &mut Reader<'_>, limits: &Limits) -> Result<HeaderMap, FrameError> {
    let count = usize::from(r.u16()?);
    if count > limits.max_headers {
        return Err(FrameError::TooManyHeaders {
            count,
            limit: limits.max_headers,
        });
    }
    let mut headers = HeaderMap::with_capacity(count);
    for _ in 0..count {
        let name =
            HeaderName::from_bytes(r.bytes16()?).map_err(|_| FrameError::Malformed("invalid header name".into()))?;
        let value = HeaderValue::from_bytes(r.bytes16()?)
            .map_err(|_| FrameError::Malformed(format!("invalid value for header {name}")))?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn put_str8(dst: &mut BytesMut, s: &str) {
    // Methods and request ids are short; anything longer is cut rather than mis-framed.
    let bytes = &s.as_bytes()[..s.len().min(255)];
    dst.put_u8(bytes.len() as u8);
    dst.put_slice(bytes);
}

fn put_str16(dst: &mut BytesMut, s: &str) {
    put_bytes16(dst, s.as_bytes());
}

fn put_bytes16(dst: &mut BytesMut, bytes: &[u8]) {
    let bytes = &bytes[..bytes.len().min(usize::from(u16::MAX))];
    dst.put_u16(bytes.len() as u16);
    dst.put_slice(bytes);
}
