//! Phase 4 over one tunnel: a stream on one of its connections, the request head and body up,
//! the response head back (or the connector's error), then the body relayed as it comes; or,
//! after a 101, raw bytes both ways.

use std::pin::Pin;
use std::task::{Context, Poll};

use burrow_protocol::body::{BodyError, FramedBody, send_body, splice};
use burrow_protocol::headers::strip_hop_by_hop;
use burrow_protocol::{Frame, ResponseHead, StreamErrorCode, TunnelCodec, TunnelId, error_code};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{Response, StatusCode};
use http_body::Body;
use http_body_util::{Either, Full};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tokio_util::codec::FramedRead;

use super::{RequestBody, ResponseBody, Upstream};
use crate::EdgeState;
use crate::dataplane::peers::PeerStream;
use crate::dataplane::registry::InFlight;
use crate::dataplane::respond::ProxyError;

/// Opening a stream and writing a request head takes one round trip at most when the connection
/// has stream credit; longer, and the request tries another connection.
const OPEN_STREAM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// One request/response exchange over a stream of `tunnel`. With `hedge`, waiting for the
/// response head ends early (as a stream failure, which the caller retries elsewhere) when the
/// connection stops answering: its connector is likely dead, and the request can be sent again.
pub(super) async fn exchange(
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
    let (carrier, send, recv) =
        tokio::time::timeout_at(deadline, open_stream(state, tunnel_id, tunnel_name, head_bytes))
            .await
            .map_err(|_| timed_out())??;

    // A WebSocket keeps its send half for the raw bytes after the 101.
    let (mut upload, upgrade_send) = match (upstream.on_upgrade.is_some(), upstream.body) {
        (true, _) => (None, Some(send)),
        (false, Some(body)) => (Some(Upload::start(state, body, send)), None),
        (false, None) => {
            let mut send = send;
            let _ = send.finish();
            (None, None)
        }
    };

    let mut frames = FramedRead::new(recv, TunnelCodec::new(state.config.limits));
    let stalled = async {
        match upload.as_mut() {
            Some(upload) => (&mut upload.failed).await.ok(),
            None => None,
        }
    };
    let first = tokio::select! {
        biased;
        // No body, or the relay dropped the sender when the body went through: this branch then
        // disables itself.
        Some(stalled) = stalled => return Err(stalled),
        () = carrier.until_suspect(), if hedge => {
            carrier.failed(state);
            return Err(stream_failed(tunnel_name, "the tunnel connection stopped answering".into()));
        }
        first = tokio::time::timeout_at(deadline, frames.next()) => first,
    }
    .map_err(|_| timed_out())?;
    if let Some(upload) = upload {
        let _ = upload.answered.send(());
    }
    let head = response_head(state, tunnel_name, first);
    if let Err(ProxyError::TunnelStream { .. }) = &head {
        carrier.failed(state);
    }
    let ResponseHead {
        status,
        headers: mut response_headers,
    } = head?;

    if let (Some(on_upgrade), Some(send), StatusCode::SWITCHING_PROTOCOLS) = (upstream.on_upgrade, upgrade_send, status)
    {
        // Tunnel the upgraded connection only once the origin agreed (101).
        strip_hop_by_hop(&mut response_headers, true);
        tokio::spawn(bridge_upgrade(on_upgrade, send, frames, carrier));
        let mut response = Response::new(Either::Right(Full::default()));
        *response.status_mut() = status;
        *response.headers_mut() = response_headers;
        return Ok(response);
    }

    strip_hop_by_hop(&mut response_headers, false);
    let mut response = Response::new(Either::Left(TunnelBody {
        inner: FramedBody::new(frames),
        _carrier: carrier,
    }));
    *response.status_mut() = status;
    *response.headers_mut() = response_headers;
    Ok(response)
}

/// What keeps a request's stream counted while it runs: a connection of this edge, or the link
/// to the edge the request was forwarded to.
pub(crate) enum Carrier {
    Local(InFlight),
    Peer(PeerStream),
}

impl Carrier {
    /// The stream broke before the response head: an edge it was forwarded to is tried after
    /// the others for a while (it likely died; a retry must not go there first).
    fn failed(&self, state: &EdgeState) {
        if let (Carrier::Peer(stream), Some(peers)) = (self, state.peers.load_full()) {
            peers.mark_failed(stream.link.remote_address());
        }
    }

    /// Resolves when the tunnel connection stops answering (a hedged request then moves).
    async fn until_suspect(&self) {
        match self {
            Carrier::Local(in_flight) => in_flight.connection().until_suspect().await,
            // The other edge watches its own connection; here, only the link to it.
            Carrier::Peer(stream) => {
                stream.link.closed().await;
            }
        }
    }
}

fn stream_failed(tunnel_name: &str, reason: String) -> ProxyError {
    ProxyError::TunnelStream {
        name: tunnel_name.to_owned(),
        reason,
    }
}

/// The first frame of the answer: the response head, or what the connector says went wrong.
fn response_head<E: std::fmt::Display>(
    state: &EdgeState,
    tunnel_name: &str,
    first: Option<Result<Frame, E>>,
) -> Result<ResponseHead, ProxyError> {
    let name = tunnel_name.to_owned();
    match first {
        Some(Ok(Frame::ResponseHead(head))) => Ok(*head),
        Some(Ok(Frame::Error(err))) => Err(match err.code {
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
        }),
        Some(Ok(_)) => Err(stream_failed(tunnel_name, "connector sent an unexpected frame".into())),
        Some(Err(e)) => Err(stream_failed(tunnel_name, e.to_string())),
        None => Err(stream_failed(
            tunnel_name,
            "connector closed the stream without answering".into(),
        )),
    }
}

/// A request body being relayed up the stream beside the wait for the response head.
struct Upload {
    /// Why the upload was cut, when the visitor is to blame and no response head came yet.
    failed: oneshot::Receiver<ProxyError>,
    /// Fired when the response head arrives: that ends the upload's total time limit.
    answered: oneshot::Sender<()>,
}

impl Upload {
    fn start(state: &EdgeState, body: RequestBody, mut send: quinn::SendStream) -> Self {
        let (failed_tx, failed) = oneshot::channel::<ProxyError>();
        let (answered, answered_rx) = oneshot::channel::<()>();
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
                    Ok(()) = answered_rx => std::future::pending().await,
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
                let _ = failed_tx.send(error);
            }
            // Reset, not finish: the origin must not take a cut upload as complete.
            let _ = send.reset(error_code::REQUEST_CANCELLED.into());
        });
        Self { failed, answered }
    }
}

/// Open a stream on the tunnel's least busy connection and write the head. A connection that
/// fails here has seen nothing of the request, so one other connection is tried. With no
/// connection here, another edge of the cluster that has one carries it.
pub(crate) async fn open_stream(
    state: &EdgeState,
    tunnel: TunnelId,
    tunnel_name: &str,
    head: &[u8],
) -> Result<(Carrier, quinn::SendStream, quinn::RecvStream), ProxyError> {
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
            Ok(Ok((send, recv))) => return Ok((Carrier::Local(in_flight), send, recv)),
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
        if let Some(peers) = state.peers.load_full() {
            let (stream, send, recv) = peers.open(state, tunnel, tunnel_name, head).await?;
            return Ok((Carrier::Peer(stream), send, recv));
        }
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

/// After a 101: raw bytes between the client's upgraded connection and the tunnel stream.
async fn bridge_upgrade(
    on_upgrade: hyper::upgrade::OnUpgrade,
    mut send: quinn::SendStream,
    frames: FramedRead<quinn::RecvStream, TunnelCodec>,
    carrier: Carrier,
) {
    let _carrier = carrier;
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
    _carrier: Carrier,
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
