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

/// Serve until `shutdown`. Readiness is "at least one connection registered with an edge".
pub async fn serve(listener: TcpListener, status: Arc<Status>, connector: String, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics and readiness listener ready (/ready, /metrics)");
    }
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
        let status = status.clone();
        let connector = connector.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = answer(&req, &status, &connector);
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

fn answer(req: &Request<Incoming>, status: &Status, connector: &str) -> Response<Full<Bytes>> {
    let ready = status.ready_connections();
    let (code, content_type, body) = match req.uri().path() {
        "/ready" => {
            let code = if ready > 0 {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = serde_json::json!({
                "status": code.as_u16(),
                "readyConnections": ready,
                "connectorId": connector,
            });
            (code, "application/json", body.to_string())
        }
        "/metrics" => {
            let body = format!(
                "# HELP burrow_connector_ready_connections Tunnel connections registered with an edge.\n\
                 # TYPE burrow_connector_ready_connections gauge\n\
                 burrow_connector_ready_connections {ready}\n"
            );
            (StatusCode::OK, "text/plain; version=0.0.4", body)
        }
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
