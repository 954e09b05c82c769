//! The pools' monitors, and each edge's published view of its origins' health.
//!
//! A pool's monitor is sent *through the tunnel* as a request flagged as a health check, so the
//! connector's ingress rules pick the service. Transitions are logged once and exported as
//! `burrow_pool_origin_healthy{account,pool,origin}`. Each edge also publishes its whole view
//! ([`HealthReport`], when it changes and every minute) to the control plane, so that
//! `burrow pool show` can print every origin's health as each edge sees it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use burrow_protocol::{AccountId, FLAG_HEALTH_CHECK, Frame, RequestHead, RequestKind, Scheme, TunnelCodec, TunnelId};
use burrow_shared::backoff::Backoff;
use bytes::BytesMut;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Method};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Encoder, FramedRead};
use tokio_util::sync::CancellationToken;

use crate::EdgeState;
use crate::pools::health::now_ms;
use crate::pools::pool::{MonitorType, Pool};
use crate::route_table::RouteTable;

/// How often the prober looks for due probes and reports transitions.
const TICK: Duration = Duration::from_millis(200);
/// Monitors read at most this much of a response body.
const MAX_PROBE_BODY: usize = 64 * 1024;
/// An unchanged health view is published again this often (so a silent edge shows as stale).
pub const REPORT_REFRESH: Duration = Duration::from_secs(60);
/// Most origins one health report may carry.
pub const MAX_REPORTED_ORIGINS: usize = 100_000;

/// One edge's view of every pool origin, kept in the store under `health/<node>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    pub node: String,
    /// Unix seconds when the edge published it.
    pub updated: u64,
    pub pools: Vec<PoolReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolReport {
    pub account: AccountId,
    pub pool: String,
    pub origins: Vec<OriginReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OriginReport {
    pub tunnel: TunnelId,
    pub healthy: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Every pool origin's verdict on this edge now.
pub fn pool_view(state: &EdgeState) -> Vec<PoolReport> {
    let table = state.routes.load();
    table
        .pools()
        .iter()
        .map(|pool| PoolReport {
            account: pool.account,
            pool: pool.name.clone(),
            origins: (0..pool.spec.origins.len())
                .map(|i| origin_report(state, pool, i))
                .collect(),
        })
        .collect()
}

/// Origin `i` of `pool` as this edge sees it.
pub fn origin_report(state: &EdgeState, pool: &Pool, i: usize) -> OriginReport {
    let origin = &pool.spec.origins[i];
    let connected = state.registry.is_connected(&origin.tunnel);
    let reason = pool.health[i].reason(origin.enabled, connected);
    OriginReport {
        tunnel: origin.tunnel,
        healthy: reason.is_none(),
        reason,
    }
}

/// Decides when this edge's health view is published: when it changed, or after
/// [`REPORT_REFRESH`]; after failures, no sooner than an exponential back-off allows (a control
/// plane that is down or refusing is not asked every second by every edge).
#[derive(Default)]
pub struct ReportSchedule {
    last: Option<Vec<PoolReport>>,
    sent: Option<Instant>,
    failures: u32,
    /// The back-off drawn at the last failure, and the refresh period drawn at the last report:
    /// jittered, so that edges started together do not report in step.
    wait: Duration,
    refresh: Duration,
}

/// Between two reports after failures (the cap, jittered by half).
const REPORT_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

impl ReportSchedule {
    /// The report to publish now, if any.
    pub fn due(&mut self, state: &EdgeState) -> Option<HealthReport> {
        if self.sent.is_some_and(|t| t.elapsed() < self.wait) {
            return None;
        }
        let view = pool_view(state);
        let fresh = self.sent.is_some_and(|t| t.elapsed() < self.refresh);
        if fresh && self.last.as_ref() == Some(&view) {
            return None;
        }
        self.last = Some(view.clone());
        self.sent = Some(Instant::now());
        self.refresh = REPORT_REFRESH.mul_f64(rand::random_range(0.8..1.0));
        let updated = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Some(HealthReport {
            node: state.config.node_name.clone(),
            updated,
            pools: view,
        })
    }

    /// Publishing failed: try again after the back-off, even if nothing changed.
    pub fn failed(&mut self) {
        self.last = None;
        self.failures = self.failures.saturating_add(1);
        self.wait = self.backoff().mul_f64(rand::random_range(0.5..=1.0));
    }

    /// Publishing worked: back to reporting changes as they happen.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.wait = Duration::ZERO;
    }

    /// The cap of the wait after failures: 0 with none, then 2 s, 4 s, 8 s … up to
    /// [`MAX_REPORT_BACKOFF`]; the wait itself is drawn between half of it and all of it.
    fn backoff(&self) -> Duration {
        match self.failures {
            0 => Duration::ZERO,
            n => REPORT_BACKOFF.cap(n),
        }
    }
}

/// Probe every monitored origin when due and report health transitions, until shutdown.
pub async fn run(state: Arc<EdgeState>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let table = state.routes.load_full();
        for (p, pool) in table.pools().iter().enumerate() {
            for (i, origin) in pool.spec.origins.iter().enumerate() {
                log_transition(&state, pool, i);
                let Some(monitor) = &pool.spec.monitor else { continue };
                let health = &pool.health[i];
                let now = now_ms();
                if !origin.enabled
                    || now < health.next_probe_ms.load(Ordering::Relaxed)
                    || health.probing.swap(true, Ordering::Relaxed)
                {
                    continue;
                }
                health
                    .next_probe_ms
                    .store(now + monitor.interval_secs * 1000, Ordering::Relaxed);
                tokio::spawn(probe(state.clone(), table.clone(), p, i));
            }
        }
    }
}

/// Log and export a change of an origin's verdict.
fn log_transition(state: &EdgeState, pool: &Pool, i: usize) {
    let up = pool.usable(i, &|t| state.registry.load(t));
    let health = &pool.health[i];
    if !state.registry.is_connected(&pool.spec.origins[i].tunnel) {
        // Failures seen on a dead connection say nothing about the connector that comes next.
        health.forget_passive();
    }
    let verdict = if up { 1 } else { 2 };
    let previous = health.reported.swap(verdict, Ordering::Relaxed);
    if previous == verdict {
        return;
    }
    let origin = &pool.origin_names[i];
    state
        .metrics
        .set_pool_origin_healthy(&pool.account.to_string(), &pool.name, origin, up);
    let connected = state.registry.is_connected(&pool.spec.origins[i].tunnel);
    match health.reason(pool.spec.origins[i].enabled, connected) {
        None if previous != 0 => tracing::info!(pool = %pool.name, origin = %origin, "pool origin is healthy again"),
        None => {}
        Some(reason) => tracing::warn!(pool = %pool.name, origin = %origin, "pool origin is unhealthy: {reason}"),
    }
}

/// One monitor request through the origin's tunnel.
async fn probe(state: Arc<EdgeState>, table: Arc<RouteTable>, p: usize, i: usize) {
    let pool = &table.pools()[p];
    let health = &pool.health[i];
    let tunnel = pool.spec.origins[i].tunnel;
    // A tunnel without connections is already down; its probes would only add noise.
    if state.registry.is_connected(&tunnel)
        && let Some(monitor) = &pool.spec.monitor
    {
        let timeout = Duration::from_secs(monitor.timeout_secs);
        let result = match tokio::time::timeout(timeout, send_probe(&state, pool, i)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        if let Err(e) = &result {
            tracing::debug!(pool = %pool.name, origin = %pool.origin_names[i], "probe failed: {e}");
        }
        health.record_probe(result, monitor.healthy_threshold, monitor.unhealthy_threshold);
        log_transition(&state, pool, i);
    }
    health.probing.store(false, Ordering::Relaxed);
}

async fn send_probe(state: &EdgeState, pool: &Pool, i: usize) -> Result<(), String> {
    let Some(monitor) = &pool.spec.monitor else {
        return Ok(());
    };
    let tunnel = pool.spec.origins[i].tunnel;
    let authority = monitor
        .host
        .clone()
        .or_else(|| pool.probe_host.clone())
        .unwrap_or_else(|| pool.name.clone());
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static(concat!("burrow-health-check/", env!("CARGO_PKG_VERSION"))),
    );
    let head = RequestHead {
        kind: RequestKind::Http,
        flags: FLAG_HEALTH_CHECK,
        method: Method::from_bytes(monitor.method.as_bytes()).map_err(|e| e.to_string())?,
        scheme: match monitor.kind {
            MonitorType::Http => Scheme::Http,
            MonitorType::Https => Scheme::Https,
        },
        authority,
        path: monitor.path.clone(),
        headers,
        client_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        request_id: format!("{:032x}", rand::random::<u128>()),
    };
    let mut bytes = BytesMut::with_capacity(256);
    TunnelCodec::new(state.config.limits)
        .encode(Frame::RequestHead(Box::new(head)), &mut bytes)
        .map_err(|e| e.to_string())?;
    let name = &pool.origin_names[i];
    let (_in_flight, mut send, recv) = crate::dataplane::proxy::open_stream(state, tunnel, name, &bytes)
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    let mut frames = FramedRead::new(recv, TunnelCodec::new(state.config.limits));
    let status = match frames.next().await {
        Some(Ok(Frame::ResponseHead(head))) => head.status,
        Some(Ok(Frame::Error(err))) => return Err(err.message),
        Some(Ok(_)) => return Err("unexpected frame".into()),
        Some(Err(e)) => return Err(e.to_string()),
        None => return Err("stream closed without an answer".into()),
    };
    if !monitor.expects(status) {
        return Err(format!(
            "status {} is not in {}",
            status.as_u16(),
            monitor.expected_codes
        ));
    }
    if let Some(expected) = &monitor.expected_body {
        let mut body = burrow_protocol::body::FramedBody::new(frames);
        let mut seen = Vec::new();
        while seen.len() < MAX_PROBE_BODY {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        seen.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(format!("reading the body: {e}")),
                None => break,
            }
        }
        let found = seen.windows(expected.len()).any(|w| w == expected.as_bytes());
        if !found {
            return Err(format!("the body does not contain {expected:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_backoff_grows_and_is_capped_and_resets() {
        let mut schedule = ReportSchedule::default();
        assert_eq!(schedule.backoff(), Duration::ZERO);
        let waits: Vec<u64> = (0..8)
            .map(|_| {
                schedule.failed();
                schedule.backoff().as_secs()
            })
            .collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60]);
        assert!(schedule.wait >= Duration::from_secs(30) && schedule.wait <= Duration::from_secs(60));
        schedule.succeeded();
        assert_eq!((schedule.backoff(), schedule.wait), (Duration::ZERO, Duration::ZERO));
    }
}
