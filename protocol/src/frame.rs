//! Framing: `[type: u8][length: u32 big-endian][payload]`.
//!
//! The codec is sans-IO (it works on a `BytesMut`), enforces [`Limits`] before buffering a
//! payload, and returns an error — never panics — on any input.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http::HeaderMap;
use tokio_util::codec::{Decoder, Encoder};

use crate::control::ControlMessage;
use crate::head::{RequestHead, ResponseHead, StreamError, decode_headers, encode_headers};

/// Bytes in a frame header: type and length.
pub const FRAME_HEADER_LEN: usize = 5;

const TYPE_CONTROL: u8 = 1;
const TYPE_REQUEST_HEAD: u8 = 2;
const TYPE_RESPONSE_HEAD: u8 = 3;
const TYPE_DATA: u8 = 4;
const TYPE_TRAILERS: u8 = 5;
const TYPE_ERROR: u8 = 6;

/// One unit on a tunnel stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Control(ControlMessage),
    RequestHead(Box<RequestHead>),
    ResponseHead(Box<ResponseHead>),
    /// A piece of body. Never empty on the wire.
    Data(Bytes),
    Trailers(HeaderMap),
    Error(StreamError),
}

/// Bounds on what a peer may make us buffer or wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest control message, head or trailer block (default 64 KiB).
    pub max_head_size: usize,
    /// Most header lines in one head or trailer block (default 256).
    pub max_headers: usize,
    /// Largest data frame payload; senders split bigger chunks (default 256 KiB).
    pub max_data_frame: usize,
    /// How long to wait for a head or control message once one is expected (default 10 s).
    pub read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_size: 64 * 1024,
            max_headers: 256,
            max_data_frame: 256 * 1024,
            read_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame type {0} is unknown")]
    UnknownType(u8),
    #[error("{kind} frame of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        kind: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("{count} headers exceed the limit of {limit}")]
    TooManyHeaders { count: usize, limit: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("stream ended in the middle of a frame")]
    Truncated,
    #[error("no frame within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// `tokio_util` codec for tunnel streams.
#[derive(Debug, Clone, Default)]
pub struct TunnelCodec {
    pub limits: Limits,
}

impl TunnelCodec {
    pub fn new(limits: Limits) -> Self {
        Self { limits }
    }
}

impl Decoder for TunnelCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let kind = src[0];
        let len = u32::from_be_bytes([src[1], src[2], src[3], src[4]]) as usize;
        let (name, limit) = match kind {
            TYPE_DATA => ("data", self.limits.max_data_frame),
            TYPE_CONTROL => ("control", self.limits.max_head_size),
            TYPE_REQUEST_HEAD => ("request head", self.limits.max_head_size),
            TYPE_RESPONSE_HEAD => ("response head", self.limits.max_head_size),
            TYPE_TRAILERS => ("trailers", self.limits.max_head_size),
            TYPE_ERROR => ("error", self.limits.max_head_size),
            other => return Err(FrameError::UnknownType(other)),
        };
        // Checked before buffering: a peer cannot make us hold more than the limit.
        if len > limit {
            return Err(FrameError::TooLarge {
                kind: name,
                size: len,
                limit,
            });
        }
        if src.len() < FRAME_HEADER_LEN + len {
            src.reserve(FRAME_HEADER_LEN + len - src.len());
            return Ok(None);
        }
        src.advance(FRAME_HEADER_LEN);
        let payload = src.split_to(len);
        if kind == TYPE_DATA {
            if payload.is_empty() {
                return Err(FrameError::Malformed("empty data frame".into()));
            }
            return Ok(Some(Frame::Data(payload.freeze())));
        }
        let mut r = Reader::new(&payload);
        let frame = match kind {
            TYPE_CONTROL => Frame::Control(
                serde_json::from_slice(&payload).map_err(|e| FrameError::Malformed(format!("control message: {e}")))?,
            ),
            TYPE_REQUEST_HEAD => Frame::RequestHead(Box::new(RequestHead::decode(&mut r, &self.limits)?)),
            TYPE_RESPONSE_HEAD => Frame::ResponseHead(Box::new(ResponseHead::decode(&mut r, &self.limits)?)),
            TYPE_TRAILERS => Frame::Trailers(decode_headers(&mut r, &self.limits)?),
            _ => Frame::Error(StreamError::decode(&mut r)?),
        };
        if kind != TYPE_CONTROL && !r.is_empty() {
            return Err(FrameError::Malformed(format!(
                "{} trailing bytes after {name}",
                r.remaining()
            )));
        }
        Ok(Some(frame))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated),
        }
    }
}

impl Encoder<Frame> for TunnelCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let start = dst.len();
        dst.put_bytes(0, FRAME_HEADER_LEN);
        // A frame that cannot be encoded leaves nothing of itself behind.
        let kind = encode_payload(&frame, dst).inspect_err(|_| dst.truncate(start))?;
        let len = dst.len() - start - FRAME_HEADER_LEN;
        let limit = if kind == TYPE_DATA {
            self.limits.max_data_frame
        } else {
            self.limits.max_head_size
        };
        if len > limit || (kind == TYPE_DATA && len == 0) {
            dst.truncate(start);
            return Err(FrameError::TooLarge {
                kind: "outgoing",
                size: len,
                limit,
            });
        }
        dst[start] = kind;
        dst[start + 1..start + FRAME_HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }
}

/// Write `frame`'s payload after its header; returns its type.
fn encode_payload(frame: &Frame, dst: &mut BytesMut) -> Result<u8, FrameError> {
    Ok(match frame {
        Frame::Control(msg) => {
            let json = serde_json::to_vec(msg).map_err(|e| FrameError::Malformed(format!("control message: {e}")))?;
            dst.put_slice(&json);
            TYPE_CONTROL
        }
        Frame::RequestHead(head) => {
            head.encode(dst)?;
            TYPE_REQUEST_HEAD
        }
        Frame::ResponseHead(head) => {
            head.encode(dst)?;
            TYPE_RESPONSE_HEAD
        }
        Frame::Data(data) => {
            dst.put_slice(data);
            TYPE_DATA
        }
        Frame::Trailers(headers) => {
            encode_headers(headers, dst)?;
            TYPE_TRAILERS
        }
        Frame::Error(err) => {
            err.encode(dst)?;
            TYPE_ERROR
        }
    })
}

/// The header of a data frame carrying `len` bytes, for senders that write the payload
/// separately (zero-copy). `len` must be in `1..=max_data_frame`.
pub fn data_frame_header(len: usize) -> [u8; FRAME_HEADER_LEN] {
    let l = (len as u32).to_be_bytes();
    [TYPE_DATA, l[0], l[1], l[2], l[3]]
}

/// Read the next frame, failing if none arrives within `limits.read_timeout`.
/// `Ok(None)` means the peer finished the stream cleanly between frames.
pub async fn read_frame<S>(frames: &mut S, limits: &Limits) -> Result<Option<Frame>, FrameError>
where
    S: Stream<Item = Result<Frame, FrameError>> + Unpin,
{
    match tokio::time::timeout(limits.read_timeout, frames.next()).await {
        Ok(next) => next.transpose(),
        Err(_) => Err(FrameError::Timeout(limits.read_timeout)),
    }
}

/// Bounds-checked reader over a frame payload.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(FrameError::Malformed(format!(
                "needed {n} more bytes, {} left",
                self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_be_bytes(self.array::<2>()?))
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn bytes8(&mut self) -> Result<&'a [u8], FrameError> {
        let n = usize::from(self.u8()?);
        self.take(n)
    }

    pub(crate) fn bytes16(&mut self) -> Result<&'a [u8], FrameError> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }

    pub(crate) fn str8(&mut self) -> Result<&'a str, FrameError> {
        std::str::from_utf8(self.bytes8()?).map_err(|_| FrameError::Malformed("invalid UTF-8".into()))
    }

    pub(crate) fn str16(&mut self) -> Result<&'a str, FrameError> {
        std::str::from_utf8(self.bytes16()?).map_err(|_| FrameError::Malformed("invalid UTF-8".into()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use std::net::SocketAddr;

    use http::{HeaderValue, Method, StatusCode};

    use super::*;
    use crate::head::{RequestKind, Scheme, StreamErrorCode};

    fn sample_request() -> RequestHead {
        let mut headers = HeaderMap::new();
        headers.append("accept", HeaderValue::from_static("text/html"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        headers.append("x-bin", HeaderValue::from_bytes(b"\xff\x80 opaque").unwrap());
        RequestHead {
            kind: RequestKind::WebSocket,
            flags: 0,
            method: Method::POST,
            scheme: Scheme::Https,
            authority: "app.example.com:8443".into(),
            path: "/a/b?c=d".into(),
            headers,
            client_addr: "[2001:db8::1]:4242".parse::<SocketAddr>().unwrap(),
            request_id: "0123456789abcdef".into(),
        }
    }

    fn all_frames() -> Vec<Frame> {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        vec![
            Frame::Control(crate::ControlMessage::Drain),
            Frame::RequestHead(Box::new(sample_request())),
            Frame::ResponseHead(Box::new(ResponseHead {
                status: StatusCode::CREATED,
                headers: HeaderMap::new(),
            })),
            Frame::Data(Bytes::from_static(b"hello")),
            Frame::Trailers(trailers),
            Frame::Error(StreamError {
                code: StreamErrorCode::OriginTimeout,
                message: "slow".into(),
            }),
        ]
    }

    #[test]
    fn every_frame_roundtrips_and_repeated_headers_keep_order() {
        let mut codec = TunnelCodec::default();
        let mut buf = BytesMut::new();
        for frame in all_frames() {
            codec.encode(frame, &mut buf).unwrap();
        }
        let mut decoded = Vec::new();
        while let Some(frame) = codec.decode(&mut buf).unwrap() {
            decoded.push(frame);
        }
        assert_eq!(decoded, all_frames());
        let Frame::RequestHead(head) = &decoded[1] else {
            panic!("not a request head")
        };
        let multi: Vec<_> = head.headers.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["a", "b"]);
    }

    #[test]
    fn decodes_byte_by_byte() {
        let mut codec = TunnelCodec::default();
        let mut whole = BytesMut::new();
        codec
            .encode(Frame::RequestHead(Box::new(sample_request())), &mut whole)
            .unwrap();
        let mut buf = BytesMut::new();
        let mut out = None;
        for (i, byte) in whole.iter().enumerate() {
            buf.put_u8(*byte);
            let got = codec.decode(&mut buf).unwrap();
            if i + 1 < whole.len() {
                assert!(got.is_none(), "frame complete too early at byte {i}");
            } else {
                out = got;
            }
        }
        assert_eq!(out, Some(Frame::RequestHead(Box::new(sample_request()))));
    }

    #[test]
    fn oversized_head_is_refused_before_buffering() {
        let mut codec = TunnelCodec::default();
        let mut buf = BytesMut::new();
        buf.put_u8(TYPE_REQUEST_HEAD);
        buf.put_u32(64 * 1024 + 1);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooLarge { size: 65537, .. })
        ));
        let mut buf = BytesMut::new();
        buf.put_u8(TYPE_DATA);
        buf.put_u32(u32::MAX);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooLarge { kind: "data", .. })
        ));
    }

    /// A field longer than its length prefix holds is an error, never cut short (a 300-byte
    /// method once reached the origin as another, 255-byte one), and leaves nothing behind.
    #[test]
    fn fields_too_long_to_frame_are_refused_not_cut() {
        let mut codec = TunnelCodec::new(Limits::default());
        let mut dst = BytesMut::from(&b"before"[..]);
        let mut head = sample_request();
        head.method = http::Method::from_bytes("M".repeat(300).as_bytes()).unwrap();
        let err = codec.encode(Frame::RequestHead(Box::new(head)), &mut dst).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::TooLarge {
                    kind: "method",
                    size: 300,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(&dst[..], b"before");
    }

    #[test]
    fn header_count_limit_applies() {
        let mut headers = HeaderMap::new();
        for i in 0..300 {
            headers.append("x-h", HeaderValue::from(i));
        }
        let mut buf = BytesMut::new();
        TunnelCodec::default()
            .encode(Frame::Trailers(headers), &mut buf)
            .unwrap();
        let err = TunnelCodec::default().decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, FrameError::TooManyHeaders { count: 300, limit: 256 }),
            "{err}"
        );
    }

    #[test]
    fn malformed_frames_are_errors() {
        let cases: &[(&str, &[u8])] = &[
            ("unknown type", &[9, 0, 0, 0, 0]),
            ("empty data", &[TYPE_DATA, 0, 0, 0, 0]),
            ("head too short", &[TYPE_REQUEST_HEAD, 0, 0, 0, 2, 0, 0]),
            ("bad kind", &[TYPE_REQUEST_HEAD, 0, 0, 0, 3, 7, 0, 0]),
            ("bad status", &[TYPE_RESPONSE_HEAD, 0, 0, 0, 4, 0, 5, 0, 0]),
            ("trailing bytes", &[TYPE_RESPONSE_HEAD, 0, 0, 0, 5, 0, 200, 0, 0, 1]),
            ("bad header name", &[TYPE_TRAILERS, 0, 0, 0, 7, 0, 1, 0, 1, b' ', 0, 0]),
            ("bad error code", &[TYPE_ERROR, 0, 0, 0, 4, 0, 99, 0, 0]),
            ("control not json", &[TYPE_CONTROL, 0, 0, 0, 1, b'{']),
        ];
        for (name, bytes) in cases {
            let mut buf = BytesMut::from(*bytes);
            let result = TunnelCodec::default().decode(&mut buf);
            assert!(result.is_err(), "{name}: accepted {result:?}");
        }
    }

    #[test]
    fn truncated_stream_is_an_error_at_eof() {
        let mut buf = BytesMut::new();
        TunnelCodec::default()
            .encode(Frame::Data(Bytes::from_static(b"abcdef")), &mut buf)
            .unwrap();
        buf.truncate(8);
        assert!(matches!(
            TunnelCodec::default().decode_eof(&mut buf),
            Err(FrameError::Truncated)
        ));
        assert!(
            TunnelCodec::default()
                .decode_eof(&mut BytesMut::new())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn any_prefix_or_corruption_never_panics() {
        // A cheap stand-in for the fuzzer: every truncation and every single-byte corruption
        // of every frame kind must decode to a frame, "need more", or an error.
        let mut whole = BytesMut::new();
        for frame in all_frames() {
            TunnelCodec::default().encode(frame, &mut whole).unwrap();
        }
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            let mut codec = TunnelCodec::default();
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }
        for pos in 0..whole.len() {
            for value in [0u8, 1, 0x7f, 0xff] {
                let mut buf = whole.clone();
                buf[pos] = value;
                let mut codec = TunnelCodec::default();
                while let Ok(Some(_)) = codec.decode(&mut buf) {}
            }
        }
    }

    #[test]
    fn data_header_matches_encoder() {
        let mut buf = BytesMut::new();
        TunnelCodec::default()
            .encode(Frame::Data(Bytes::from_static(b"xyz")), &mut buf)
            .unwrap();
        assert_eq!(&buf[..FRAME_HEADER_LEN], &data_frame_header(3));
    }
}
