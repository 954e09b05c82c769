//! The operator's listener: `/metrics` (Prometheus) and `/ready`. Tenants use the API listener
//! (`--api`); nothing here is theirs to see.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::EdgeState;

pub async fn serve(listener: TcpListener, state: Arc<EdgeState>, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin listener ready (/metrics, /ready)");
    }
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("admin accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = answer(&state, &req);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(state: &EdgeState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.encode(),
        ),
        "/ready" => {
            // An edge with no config yet (no snapshot, control plane not reached) would answer
            // 404 for every host: not ready.
            let (status, word) = match state.is_configured() {
                true => (StatusCode::OK, "ready"),
                false => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no config yet: waiting for the control plane",
                ),
            };
            let body = serde_json::json!({
                "status": word,
                "node": state.config.node_name,
                "tunnel_connections": state.registry.connection_count(),
                "routes": state.routes.load().route_count(),
            });
            (status, "application/json", body.to_string())
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics or /ready (the /v1 API is on the --api listener)\n".into(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}
