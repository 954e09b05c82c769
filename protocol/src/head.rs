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
    /// Fails on a field too long for its length prefix: nothing is ever cut short, which would
    /// make the connector serve another request than the visitor sent.
    pub(crate) fn encode(&self, dst: &mut BytesMut) -> Result<(), FrameError> {
        dst.put_u8(self.kind as u8);
        dst.put_u8(self.flags);
        dst.put_u8(self.scheme as u8);
        put_str8(dst, "method", self.method.as_str())?;
        put_bytes16(dst, "authority", self.authority.as_bytes())?;
        put_bytes16(dst, "path", self.path.as_bytes())?;
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
        put_str8(dst, "request id", &self.request_id)?;
        encode_headers(&self.headers, dst)
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
    pub(crate) fn encode(&self, dst: &mut BytesMut) -> Result<(), FrameError> {
        dst.put_u16(self.status.as_u16());
        encode_headers(&self.headers, dst)
    }

    pub(crate) fn decode(r: &mut Reader<'_>, limits: &Limits) -> Result<Self, FrameError> {
        let status = StatusCode::from_u16(r.u16()?).map_err(|_| FrameError::Malformed("invalid status code".into()))?;
        let headers = decode_headers(r, limits)?;
        Ok(Self { status, headers })
    }
}

impl StreamError {
    pub(crate) fn encode(&self, dst: &mut BytesMut) -> Result<(), FrameError> {
        dst.put_u16(self.code as u16);
        // A message is ours to shorten: at most 1 KiB, cut at a character boundary.
        let mut end = self.message.len().min(1024);
        while !self.message.is_char_boundary(end) {
            end -= 1;
        }
        put_bytes16(dst, "error message", &self.message.as_bytes()[..end])
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
pub(crate) fn encode_headers(headers: &HeaderMap, dst: &mut BytesMut) -> Result<(), FrameError> {
    // HeaderMap::len counts values, which is what we write.
    let count = u16::try_from(headers.len()).map_err(|_| FrameError::TooManyHeaders {
        count: headers.len(),
        limit: usize::from(u16::MAX),
    })?;
    dst.put_u16(count);
    for (name, value) in headers {
        put_bytes16(dst, "header name", name.as_str().as_bytes())?;
        put_bytes16(dst, "header value", value.as_bytes())?;
    }
    Ok(())
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

fn put_str8(dst: &mut BytesMut, what: &'static str, s: &str) -> Result<(), FrameError> {
    let len = u8::try_from(s.len()).map_err(|_| too_long(what, s.len(), usize::from(u8::MAX)))?;
    dst.put_u8(len);
    dst.put_slice(s.as_bytes());
    Ok(())
}

fn too_long(kind: &'static str, size: usize, limit: usize) -> FrameError {
    FrameError::TooLarge { kind, size, limit }
}

fn put_bytes16(dst: &mut BytesMut, what: &'static str, bytes: &[u8]) -> Result<(), FrameError> {
    let len = u16::try_from(bytes.len()).map_err(|_| too_long(what, bytes.len(), usize::from(u16::MAX)))?;
    dst.put_u16(len);
    dst.put_slice(bytes);
    Ok(())
}
