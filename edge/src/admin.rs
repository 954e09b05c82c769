//! Admin listener: `/metrics` (Prometheus) and `/ready`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::EdgeState;

pub async fn serve(listener: TcpListener, state: Arc<EdgeState>, shutdown: CancellationToken) {
    loop {
        let (stream, client) = tokio::select! {
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
                let state = state.clone();
                async move {
                    let response = if req.uri().path().starts_with("/v1/") {
                        crate::control::api::handle(&state, req, client.ip()).await
                    } else {
                        answer(&state, &req).map(|body| body.map_err(|never| match never {}).boxed_unsync())
                    };
                    Ok::<_, Infallible>(response)
                }
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
            "not found: try /metrics or /ready\n".into(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}
