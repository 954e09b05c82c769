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
    /// The request's headers are larger than the limit.
    #[error("the request headers are {0} bytes")]
    HeadersTooLarge(usize),
    /// A plugin bound to the route trapped, timed out or misbehaved (fail-closed).
    #[error("{0}")]
    PluginFailed(crate::plugins::host::PluginError),
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
    /// The client's request body could not be read: bad chunked framing, or the client left.
    #[error("the request body could not be read: {0}")]
    BadBody(String),
    /// The connector refused the request (unsupported service, draining).
    #[error("tunnel {name:?}: connector refused the request: {message}")]
    ConnectorRefused { name: String, message: String },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::MissingHost | ProxyError::BadRequest(_) | ProxyError::BadBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ProxyError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
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

    /// Whether the origin or its tunnel caused this, so that it counts against the origin's
    /// health. Nothing a visitor can cause at will does (a bad or aborted body, a stalled upload,
    /// a request the connector's rules cannot serve).
    pub fn blames_origin(&self) -> bool {
        matches!(
            self,
            ProxyError::TunnelStream { .. } | ProxyError::OriginUnreachable { .. } | ProxyError::OriginTimeout { .. }
        )
    }

    /// Whether the connection must close after this answer: the request's framing cannot be
    /// trusted, so whatever follows it on the connection cannot either.
    pub fn closes_connection(&self) -> bool {
        matches!(self, ProxyError::BadRequest(_) | ProxyError::BadBody(_))
    }

    /// Machine-readable code, sent as `Burrow-Error`.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::MissingHost => "missing_host",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::BadBody(_) => "bad_request_body",
            ProxyError::UriTooLong(_) => "uri_too_long",
            ProxyError::HeadersTooLarge(_) => "headers_too_large",
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

    /// The sentence the visitor reads: generic on purpose. Which tunnel, rule, origin address or
    /// plugin failed, and why, is the tenant's and the operator's business: it goes to the log
    /// (with the request id the visitor sees), never onto the page. (A 4xx page also says what
    /// was wrong with the visitor's own request.)
    fn sentence(&self) -> &'static str {
        match self {
            ProxyError::MissingHost => "The request names no site: send a Host header.",
            ProxyError::BadRequest(_) => "The request is malformed or can be read more than one way.",
            ProxyError::BadBody(_) => "The request body could not be read.",
            ProxyError::UriTooLong(_) => "The request target is too long.",
            ProxyError::HeadersTooLarge(_) => "The request headers are too large.",
            ProxyError::Misdirected { .. } => "This connection was opened for another site: open a new one.",
            ProxyError::RequestTimeout(_) => "The request body did not arrive in time.",
            ProxyError::PayloadTooLarge(_) => "The request body is too large for this site.",
            ProxyError::Busy(_) => "The edge is under heavy load; retry in a moment.",
            ProxyError::PluginFailed(_) => "This site's edge configuration failed to handle the request.",
            ProxyError::UnknownHost(_) => "No site is served under this name here.",
            ProxyError::TunnelUnavailable { .. } => "This site's tunnel is not connected right now.",
            ProxyError::TunnelStream { .. } => "The connection to this site broke; retry.",
            ProxyError::OriginUnreachable { .. } => "This site's server could not be reached.",
            ProxyError::OriginTimeout { .. } => "This site's server did not answer in time.",
            ProxyError::ConnectorRefused { .. } => "This site is not set up to serve this request.",
            ProxyError::NoHealthyOrigin { .. } => "None of this site's servers can take the request right now.",
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
    // What the visitor got wrong is theirs to read (which header, which limit); what failed
    // behind the edge (5xx) stays in the log.
    let detail = match status.is_client_error() {
        true => format!("{err}.\n"),
        false => String::new(),
    };
    let body = format!(
        "{} {}\n\n{}\n{detail}\nBurrow-Error: {}\nRequest id: {request_id}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        err.sentence(),
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
    if err.closes_connection() {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A visitor's page says what happened in general terms and nothing of the tenant's setup:
    /// no tunnel or plugin name, no rule, no origin address, no error text from inside.
    #[test]
    fn error_pages_name_nothing_internal() {
        let errors = [
            ProxyError::TunnelUnavailable {
                name: "secret-tunnel".into(),
                id: "6ff4".into(),
            },
            ProxyError::OriginUnreachable {
                name: "secret-tunnel".into(),
                message: "rule #12 (hostname a.test) → http://localhost:38009: tcp connect error".into(),
            },
            ProxyError::PluginFailed(crate::plugins::host::PluginError {
                plugin: "secret-plugin".into(),
                reason: "wasm trap: unreachable".into(),
            }),
            ProxyError::NoHealthyOrigin {
                pool: "secret-pool".into(),
            },
        ];
        for err in &errors {
            let resp = error_response(err, "r1");
            let body = format!("{:?}", resp.body());
            for internal in ["secret", "6ff4", "rule", "38009", "localhost", "trap"] {
                assert!(!body.contains(internal), "{internal:?} on the page: {body}");
            }
            assert!(body.contains(err.code()) && body.contains("r1"), "{body}");
        }
    }
}
