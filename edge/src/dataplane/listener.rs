//! Public listener: HTTP/1.1 and HTTP/2 (prior knowledge in cleartext, ALPN over TLS).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use burrow_protocol::Scheme;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dataplane::proxy::{self, ClientInfo};
use crate::{ConnectionTimeouts, EdgeState};

/// Request heads above these are refused (431).
const MAX_HEADERS: usize = 100;
/// What hyper buffers of an HTTP/1 head: room for a target up to hyper's own limit (64 KiB,
/// then 414) beside small headers, so an over-long target gets a 414, not a 431.
/// [`crate::dataplane::request_checks`] holds headers to [`crate::dataplane::request_checks::MAX_HEADER_BYTES`].
const MAX_HEAD_BYTES: usize = 80 * 1024;
/// Idle HTTP/2 connections are pinged; one that does not answer is closed.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Premature resets: a connection is closed when at least half of at least this many recent
/// requests were cancelled by the client before their response (HTTP/2 "rapid reset" paced to
/// slip under h2's own limits). Only cancellations within [`FAST_CANCEL`] of the request count,
/// so a proxy whose users give up on a slow origin is not mistaken for an attack.
const RESET_WINDOW: u32 = 100;
const FAST_CANCEL: Duration = Duration::from_secs(1);

/// Counts one connection's requests and those the client cancelled before their response, and
/// notes when the last one started.
struct RequestWatch {
    opened: Instant,
    /// Milliseconds from `opened` to the last request's start.
    last_start: AtomicU64,
    started: AtomicU32,
    cancelled: AtomicU32,
    tripped: AtomicBool,
    notify: tokio::sync::Notify,
}

impl RequestWatch {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            last_start: AtomicU64::new(0),
            started: AtomicU32::new(0),
            cancelled: AtomicU32::new(0),
            tripped: AtomicBool::new(false),
            notify: tokio::sync::Notify::new(),
        }
    }

    fn start(self: &Arc<Self>) -> EarlyReset {
        let now = Instant::now();
        let since_open = now.saturating_duration_since(self.opened).as_millis();
        self.last_start
            .store(u64::try_from(since_open).unwrap_or(u64::MAX), Ordering::Relaxed);
        // Decay: only recent requests count.
        if self.started.fetch_add(1, Ordering::Relaxed) + 1 >= 2 * RESET_WINDOW {
            self.started.store(RESET_WINDOW, Ordering::Relaxed);
            let cancelled = self.cancelled.load(Ordering::Relaxed);
            self.cancelled.store(cancelled / 2, Ordering::Relaxed);
        }
        EarlyReset {
            watch: self.clone(),
            answered: false,
            started: now,
        }
    }

    /// Resolves when the connection is due to close gracefully: no request started for
    /// `timeouts.idle`, or it reached `timeouts.max_age`.
    async fn retired(&self, timeouts: &ConnectionTimeouts) {
        // Checked: an operator's "never" (a huge duration) must not overflow the clock.
        let old = self.opened.checked_add(timeouts.max_age);
        loop {
            let last = self.opened + Duration::from_millis(self.last_start.load(Ordering::Relaxed));
            let idle = last.checked_add(timeouts.idle);
            let Some(due) = old.into_iter().chain(idle).min() else {
                return std::future::pending().await;
            };
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due.into()).await;
        }
    }

    fn cancelled(&self) {
        let cancelled = self.cancelled.fetch_add(1, Ordering::Relaxed) + 1;
        let started = self.started.load(Ordering::Relaxed);
        if started >= RESET_WINDOW && cancelled * 2 >= started && !self.tripped.swap(true, Ordering::Relaxed) {
            self.notify.notify_one();
        }
    }
}

/// Dropped before `answered`: the client cancelled the request before its response head.
struct EarlyReset {
    watch: Arc<RequestWatch>,
    answered: bool,
    started: Instant,
}

impl EarlyReset {
    fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for EarlyReset {
    fn drop(&mut self) {
        if !self.answered && self.started.elapsed() < FAST_CANCEL {
            self.watch.cancelled();
        }
    }
}

pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<EdgeState>,
    shutdown: CancellationToken,
) {
    let timeouts = state.config.connection_timeouts;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The header timeout only works with a timer set (hyper is silent otherwise).
    // hyper's defaults are not enough for an internet-facing listener: every limit is explicit.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(250)
        .max_header_list_size(crate::dataplane::request_checks::MAX_HEADER_BYTES as u32)
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let scheme = if tls.is_some() { Scheme::Https } else { Scheme::Http };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, scheme = scheme.as_str(), "public listener ready");
    }
    let tracker = TaskTracker::new();
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = state.connection_slots.clone().try_acquire_owned() else {
            tracker.spawn(refuse_over_limit(stream, scheme));
            continue;
        };
        let client = ClientInfo {
            addr,
            scheme,
            sni: None,
        };
        let connection = serve_connection(
            stream,
            tls.clone(),
            builder.clone(),
            client,
            state.clone(),
            shutdown.clone(),
        );
        tracker.spawn(async move {
            connection.await;
            drop(slot);
        });
    }
    // Draining: stop taking connections now. An open socket that is no longer accepted from
    // would leave new visitors hanging until their timeout; a closed one refuses them at once
    // (and sends them elsewhere, behind a load balancer).
    drop(listener);
    tracker.close();
    if tokio::time::timeout(state.config.grace_period, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("public connections still open after the grace period");
    }
}

async fn serve_connection(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    builder: auto::Builder<TokioExecutor>,
    client: ClientInfo,
    state: Arc<EdgeState>,
    shutdown: CancellationToken,
) {
    let timeouts = state.config.connection_timeouts;
    let watch = Arc::new(RequestWatch::new());
    let service = |client: ClientInfo| {
        let watch = watch.clone();
        service_fn(move |req| {
            let (state, client) = (state.clone(), client.clone());
            let guard = watch.start();
            async move {
                let response = proxy::handle(state, req, client).await;
                guard.answered();
                Ok::<_, Infallible>(response)
            }
        })
    };
    let result = match tls {
        Some(tls) => match tokio::time::timeout(timeouts.tls_handshake, tls.accept(stream)).await {
            Ok(Ok(tls_stream)) => {
                let sni = tls_stream.get_ref().1.server_name().map(Arc::from);
                let service = service(ClientInfo { sni, ..client.clone() });
                drive(
                    builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), service),
                    &shutdown,
                    &watch,
                    &timeouts,
                )
                .await
            }
            Ok(Err(e)) => {
                tracing::debug!(client = %client.addr, "TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(client = %client.addr, "TLS handshake timed out");
                return;
            }
        },
        None => {
            let service = service(client.clone());
            drive(
                builder.serve_connection_with_upgrades(TokioIo::new(stream), service),
                &shutdown,
                &watch,
                &timeouts,
            )
            .await
        }
    };
    match result {
        Err(e) if watch.tripped.load(Ordering::Relaxed) => {
            tracing::warn!(client = %client.addr, "connection closed: {e}");
        }
        Err(e) => tracing::debug!(client = %client.addr, "connection ended: {e}"),
        Ok(()) => {}
    }
}

/// Over the connection limit: a plain 503 for cleartext clients (TLS ones are just closed: a
/// handshake is the expensive part we are refusing).
async fn refuse_over_limit(mut stream: TcpStream, scheme: Scheme) {
    use tokio::io::AsyncWriteExt;
    tracing::warn!("public connection limit reached; refusing a connection");
    if scheme == Scheme::Http {
        let response = b"HTTP/1.1 503 Service Unavailable\r\nburrow-error: too_many_connections\r\n\
                         connection: close\r\ncontent-length: 0\r\n\r\n";
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(response)).await;
    }
    let _ = stream.shutdown().await;
}

/// Run a connection. On shutdown, when idle, or at its maximum age, finish in-flight requests and
/// close (GOAWAY / Connection: close); on a premature-reset flood, drop it at once.
async fn drive<C>(
    conn: C,
    shutdown: &CancellationToken,
    watch: &RequestWatch,
    timeouts: &ConnectionTimeouts,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    C: std::future::Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + GracefulConnection,
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = watch.retired(timeouts) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = watch.notify.notified() => Err(format!(
            "too many requests cancelled before their response ({} of the last {})",
            watch.cancelled.load(Ordering::Relaxed),
            watch.started.load(Ordering::Relaxed)
        )
        .into()),
    }
}

/// hyper-util's connection types share `graceful_shutdown` but no trait for it.
pub trait GracefulConnection {
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>);
}

impl<I, S, E> GracefulConnection for auto::UpgradeableConnection<'_, I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: http_body::Body + Send + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        auto::UpgradeableConnection::graceful_shutdown(self)
    }
}
