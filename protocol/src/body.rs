//! Bodies over tunnel streams: framed data and trailers in, `http_body::Body` out, and back.
//!
//! Generic over `AsyncRead`/`AsyncWrite` so both ends (edge and connector) share one
//! implementation; the framing itself stays in the sans-IO [`crate::frame`] codec.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use http::HeaderMap;
use http_body::{Body, Frame as BodyFrame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Encoder, FramedRead};

use crate::frame::{Frame, FrameError, Limits, TunnelCodec, data_frame_header};

/// An HTTP body read from a tunnel stream: `Data*` then optional `Trailers`, ended by FIN.
///
/// A stream that is reset or cut mid-frame yields an error, so a truncated body is never
/// presented as complete.
pub struct FramedBody<R> {
    frames: FramedRead<R, TunnelCodec>,
    done: bool,
}

impl<R: AsyncRead + Unpin> FramedBody<R> {
    /// Continue reading body frames from a stream whose head was already read.
    pub fn new(frames: FramedRead<R, TunnelCodec>) -> Self {
        Self { frames, done: false }
    }

    /// The reader and whatever it buffered beyond the last frame (for raw upgraded streams).
    pub fn into_parts(self) -> (R, BytesMut) {
        let parts = self.frames.into_parts();
        (parts.io, parts.read_buf)
    }
}

/// Why a body could not be relayed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("tunnel stream: {0}")]
    Frame(#[from] FrameError),
    #[error("unexpected {0} frame inside a body")]
    Unexpected(&'static str),
    #[error("reading body: {0}")]
    Source(Box<dyn std::error::Error + Send + Sync>),
    #[error("writing body: {0}")]
    Write(std::io::Error),
    #[error("the body sent nothing for {0:?}")]
    Idle(std::time::Duration),
}

impl<R: AsyncRead + Unpin> Body for FramedBody<R> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<BodyFrame<Bytes>, BodyError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let next = ready!(Pin::new(&mut self.frames).poll_next(cx));
        let out = match next {
            None => {
                self.done = true;
                None
            }
            Some(Ok(Frame::Data(data))) => Some(Ok(BodyFrame::data(data))),
            Some(Ok(Frame::Trailers(trailers))) => {
                self.done = true;
                Some(Ok(BodyFrame::trailers(trailers)))
            }
            Some(Ok(other)) => {
                self.done = true;
                Some(Err(BodyError::Unexpected(frame_name(&other))))
            }
            Some(Err(e)) => {
                self.done = true;
                Some(Err(e.into()))
            }
        };
        Poll::Ready(out)
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

fn frame_name(frame: &Frame) -> &'static str {
    match frame {
        Frame::Control(_) => "control",
        Frame::RequestHead(_) => "request head",
        Frame::ResponseHead(_) => "response head",
        Frame::Data(_) => "data",
        Frame::Trailers(_) => "trailers",
        Frame::Error(_) => "error",
    }
}

/// Write one non-data frame (head, trailers, error, control).
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: Frame, limits: &Limits) -> Result<(), BodyError> {
    let mut buf = BytesMut::with_capacity(256);
    TunnelCodec::new(*limits).encode(frame, &mut buf)?;
    w.write_all(&buf).await.map_err(BodyError::Write)
}

/// Relay `body` as `Data*` and optional `Trailers` frames. The caller finishes the stream on
/// `Ok` and resets it on `Err`, so the peer can tell a complete body from a cut one.
/// Each chunk is written as soon as it arrives (no buffering: SSE events flow through).
/// With `idle`, a body that sends nothing for that long is an error (slow-upload defence).
pub async fn send_body<B, W>(
    body: B,
    w: &mut W,
    limits: &Limits,
    idle: Option<std::time::Duration>,
) -> Result<(), BodyError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    W: AsyncWrite + Unpin,
{
    let mut body = std::pin::pin!(body);
    loop {
        let next = match idle {
            Some(idle) => tokio::time::timeout(idle, body.frame())
                .await
                .map_err(|_| BodyError::Idle(idle))?,
            None => body.frame().await,
        };
        let Some(frame) = next else { break };
        let frame = frame.map_err(|e| BodyError::Source(e.into()))?;
        match frame.into_data() {
            Ok(data) => write_data(w, data, limits).await?,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    write_trailers(w, trailers, limits).await?;
                    break;
                }
            }
        }
    }
    Ok(())
}

async fn write_data<W: AsyncWrite + Unpin>(w: &mut W, mut data: Bytes, limits: &Limits) -> Result<(), BodyError> {
    while !data.is_empty() {
        let chunk = data.split_to(data.len().min(limits.max_data_frame));
        w.write_all(&data_frame_header(chunk.len()))
            .await
            .map_err(BodyError::Write)?;
        w.write_all(&chunk).await.map_err(BodyError::Write)?;
    }
    Ok(())
}

async fn write_trailers<W: AsyncWrite + Unpin>(
    w: &mut W,
    trailers: HeaderMap,
    limits: &Limits,
) -> Result<(), BodyError> {
    write_frame(w, Frame::Trailers(trailers), limits).await
}

/// After an upgrade (`101` WebSocket, `200` TCP): raw bytes both ways between `io` and a tunnel
/// stream until both directions end. `leftover` is what the framed reader had buffered past the
/// response head. Each side is shut down (FIN) when its source ends, so half-close works.
pub async fn splice<I, R, W>(io: I, mut tunnel_recv: R, leftover: BytesMut, mut tunnel_send: W)
where
    I: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut io_read, mut io_write) = tokio::io::split(io);
    let upstream = async {
        let _ = tokio::io::copy(&mut io_read, &mut tunnel_send).await;
        let _ = tunnel_send.shutdown().await;
    };
    let downstream = async {
        if !leftover.is_empty() && io_write.write_all(&leftover).await.is_err() {
            return;
        }
        let _ = tokio::io::copy(&mut tunnel_recv, &mut io_write).await;
        let _ = io_write.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use http::HeaderValue;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    #[tokio::test]
    async fn body_with_trailers_roundtrips_through_a_pipe() {
        let (mut a, b) = tokio::io::duplex(1024);
        let limits = Limits {
            max_data_frame: 7,
            ..Limits::default()
        };
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let frames: Vec<Result<BodyFrame<Bytes>, std::io::Error>> = vec![
            Ok(BodyFrame::data(Bytes::from_static(b"hello, "))),
            Ok(BodyFrame::data(Bytes::from_static(b"tunnel world"))),
            Ok(BodyFrame::trailers(trailers.clone())),
        ];
        let source = StreamBody::new(futures_util::stream::iter(frames));
        let writer = tokio::spawn(async move {
            send_body(source, &mut a, &limits, None).await.unwrap();
            a.shutdown().await.unwrap();
        });
        let body = FramedBody::new(FramedRead::new(b, TunnelCodec::new(limits)));
        let collected = body.collect().await.unwrap();
        writer.await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"hello, tunnel world"));
    }

    #[tokio::test]
    async fn cut_stream_is_an_error_not_a_short_body() {
        let (mut a, b) = tokio::io::duplex(1024);
        a.write_all(&data_frame_header(10)).await.unwrap();
        a.write_all(b"only5").await.unwrap();
        drop(a);
        let body = FramedBody::new(FramedRead::new(b, TunnelCodec::default()));
        assert!(body.collect().await.is_err());
    }
}
