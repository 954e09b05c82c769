//! The connector's metrics listener: `/ready` for orchestrators, `/metrics` for Prometheus.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use burrow_tunnel::tunnel_client::Status;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// What `/metrics` reports, read from the tunnel client's status at each scrape.
struct Metrics {
    registry: Registry,
    ready: Gauge,
}

impl Metrics {
    fn new(connector: &str) -> Self {
        let mut registry = Registry::default();
        let ready = Gauge::default();
        registry.register(
            "burrow_connector_ready_connections",
            "Tunnel connections registered with an edge",
            ready.clone(),
        );
        let info = Info::new(vec![
            ("connector_id", connector.to_owned()),
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
        ]);
        registry.register("burrow_connector", "This connector", info);
        Self { registry, ready }
    }

    fn encode(&self, status: &Status) -> String {
        self.ready
            .set(i64::try_from(status.ready_connections()).unwrap_or(i64::MAX));
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The `/ready` answer.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Readiness<'a> {
    status: u16,
    ready_connections: usize,
    connector_id: &'a str,
}

/// Serve until `shutdown`. Readiness is "at least one connection registered with an edge".
pub async fn serve(listener: TcpListener, status: Arc<Status>, connector: String, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics and readiness listener ready (/ready, /metrics)");
    }
    let metrics = Arc::new(Metrics::new(&connector));
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("metrics listener: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let (status, connector, metrics) = (status.clone(), connector.clone(), metrics.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = answer(&req, &status, &connector, &metrics);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(req: &Request<Incoming>, status: &Status, connector: &str, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (code, content_type, body) = match req.uri().path() {
        "/ready" => {
            let ready = status.ready_connections();
            let code = if ready > 0 {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = Readiness {
                status: code.as_u16(),
                ready_connections: ready,
                connector_id: connector,
            };
            (
                code,
                "application/json",
                serde_json::to_string(&body).unwrap_or_default(),
            )
        }
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(status),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /ready or /metrics\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}
