//! Phase 6: the route's `on-log` plugins, run when the response body has gone out (or failed,
//! or was dropped), beside the connection: never in the visitor's way.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::Response;
use http_body::Body;
use http_body_util::Either;

use super::{PublicBody, ResponseBody};
use crate::plugins::binding::Binding;
use crate::plugins::host::{LogEntry, PluginRequest};

/// The response as the listener sends it: watched to its end when `log` holds `on-log` plugins.
pub(super) fn watch(
    response: Response<ResponseBody>,
    log: Option<PendingLog>,
    started: Instant,
) -> Response<PublicBody> {
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
    pub(super) host: Arc<crate::plugins::host::PluginHost>,
    pub(super) chain: Arc<[Binding]>,
    pub(super) request: PluginRequest,
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
