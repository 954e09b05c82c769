//! The one place where a failed request becomes an HTTP answer, and is logged once.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use burrow_protocol::headers;

/// Why the edge could not proxy a request. Each kind says whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The client sent no usable Host / :authority.
    #[error("request has no Host header")]
    MissingHost,
    /// An ambiguous or malformed request head (see `request_checks`).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request target is longer than the limit.
    #[error("the request target is {0} bytes long")]
    UriTooLong(usize),
    /// A plugin bound to the route trapped, timed out or misbehaved (fail-closed).
    #[error("{0}")]
    PluginFailed(crate::plugin_host::PluginError),
    /// The TLS server name and the Host belong to different tenants.
    #[error("TLS server name {sni:?} and Host {host:?} are different sites")]
    Misdirected { sni: String, host: String },
    /// No route for this hostname (the user's DNS points here, but nothing is routed).
    #[error("no route for host {0:?}")]
    UnknownHost(String),
    /// The route's tunnel exists but no connector is connected.
    #[error("tunnel {name:?} ({id}) has no live connections")]
    TunnelUnavailable { name: String, id: String },
    /// The tunnel connection failed while the request was being sent.
    #[error("tunnel {name:?}: stream failed: {reason}")]
    TunnelStream { name: String, reason: String },
    /// The connector reached no origin.
    #[error("tunnel {name:?}: origin unreachable: {message}")]
    OriginUnreachable { name: String, message: String },
    /// No response head within the origin timeout.
    #[error("tunnel {name:?}: origin did not answer within {timeout:?}")]
    OriginTimeout { name: String, timeout: std::time::Duration },
    /// Every origin of the pool (and of its fallbacks) is down, disabled or disconnected.
    #[error("pool {pool:?} has no healthy origin")]
    NoHealthyOrigin { pool: String },
    /// The edge has no room left for more buffered bodies right now.
    #[error("the edge is busy: no room for more {0}")]
    Busy(&'static str),
    /// The request body is bigger than the route's plugins read (`on-request-body`).
    #[error("the request body is over {0} bytes")]
    PayloadTooLarge(usize),
    /// The client's request body stalled or took too long (a slow-upload defence).
    #[error("the request body {0}")]
    RequestTimeout(String),
    /// The connector refused the request (unsupported service, draining).
    #[error("tunnel {name:?}: connector refused the request: {message}")]
    ConnectorRefused { name: String, message: String },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::MissingHost | ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ProxyError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::PluginFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::UnknownHost(_) => StatusCode::NOT_FOUND,
            ProxyError::TunnelUnavailable { .. }
            | ProxyError::TunnelStream { .. }
            | ProxyError::OriginUnreachable { .. }
            | ProxyError::ConnectorRefused { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::OriginTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::NoHealthyOrigin { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Machine-readable code, sent as `Burrow-Error`.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::MissingHost => "missing_host",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::UriTooLong(_) => "uri_too_long",
            ProxyError::RequestTimeout(_) => "request_timeout",
            ProxyError::PayloadTooLarge(_) => "payload_too_large",
            ProxyError::Busy(_) => "busy",
            ProxyError::PluginFailed(_) => "plugin_failed",
            ProxyError::Misdirected { .. } => "misdirected_request",
            ProxyError::UnknownHost(_) => "unknown_host",
            ProxyError::TunnelUnavailable { .. } => "tunnel_unavailable",
            ProxyError::TunnelStream { .. } => "tunnel_stream_failed",
            ProxyError::OriginUnreachable { .. } => "origin_unreachable",
            ProxyError::OriginTimeout { .. } => "origin_timeout",
            ProxyError::ConnectorRefused { .. } => "connector_refused",
            ProxyError::NoHealthyOrigin { .. } => "no_healthy_origin",
        }
    }

    /// What the person reading the error page should check next.
    fn advice(&self) -> String {
        match self {
            ProxyError::MissingHost => "Send a Host header naming the site.".into(),
            ProxyError::BadRequest(_) => "Fix the request; it can be read more than one way.".into(),
            ProxyError::UriTooLong(_) => {
                format!(
                    "Request targets are limited to {} bytes.",
                    crate::request_checks::MAX_URI_LEN
                )
            }
            ProxyError::Misdirected { .. } => "Open a new connection for this site.".into(),
            ProxyError::RequestTimeout(_) => "Send the request body without long pauses.".into(),
            ProxyError::PayloadTooLarge(limit) => format!("This site reads request bodies of at most {limit} bytes."),
            ProxyError::Busy(_) => "The edge is under heavy load; retry in a moment.".into(),
            ProxyError::PluginFailed(_) => {
                "A plugin of this site failed; its owner can see why in the edge logs.".into()
            }
            ProxyError::UnknownHost(host) => {
                format!("No tunnel is routed for {host}. Route it with \"burrow tunnel route dns TUNNEL {host}\".")
            }
            ProxyError::TunnelUnavailable { name, .. } => {
                format!("Is \"burrow tunnel run {name}\" running, and can it reach this edge on its tunnel port?")
            }
            ProxyError::TunnelStream { name, .. } => {
                format!("The connection to tunnel {name} broke; retry. If it persists, check the connector's logs.")
            }
            ProxyError::OriginUnreachable { .. } => {
                "The connector is running but could not reach the origin service named in its ingress rules. \
                 Is the origin up?"
                    .into()
            }
            ProxyError::OriginTimeout { .. } => "The origin is too slow to answer; check its load and logs.".into(),
            ProxyError::ConnectorRefused { .. } => "Check the connector's ingress rules for this hostname.".into(),
            ProxyError::NoHealthyOrigin { pool } => format!(
                "Every origin of pool {pool} is down or disabled, and so is its fallback. \
                 \"burrow pool show {pool}\" says why."
            ),
        }
    }
}

/// Turn an error into the response the client sees. Logs it (once) here.
pub fn error_response(err: &ProxyError, request_id: &str) -> Response<Full<Bytes>> {
    let status = err.status();
    if status.is_server_error() {
        tracing::warn!(request_id, code = err.code(), "{err}");
    } else {
        tracing::debug!(request_id, code = err.code(), "{err}");
    }
    let body = format!(
        "{} {}\n\n{err}.\n{}\n\nBurrow-Error: {}\nRequest id: {request_id}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        err.advice(),
        err.code(),
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(headers::ERROR, HeaderValue::from_static(err.code()));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_tunnel_page_names_the_tunnel_and_the_fix() {
        let err = ProxyError::TunnelUnavailable {
            name: "web".into(),
            id: "6ff4".into(),
        };
        let resp = error_response(&err, "r1");
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(resp.headers()[headers::ERROR], "tunnel_unavailable");
        let body = format!("{:?}", resp.body());
        assert!(body.contains("burrow tunnel run web"), "{body}");
    }
}
