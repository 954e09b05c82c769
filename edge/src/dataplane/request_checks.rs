//! Checks on a public request head before anything is routed: the ambiguities that let a router
//! and an origin (or two tenants) see different requests are refused here.
//!
//! hyper accepts HTTP/1.1 without Host, with two Host headers, `Transfer-Encoding: chunked,
//! chunked`, and HTTP/2 whose `:authority` differs from `Host`; each is a 400 here.

use burrow_shared::host_port;
use http::{HeaderMap, Method, Request, Version, header};

use crate::dataplane::respond::ProxyError;
use crate::route_table::RouteTable;

/// Longest path + query accepted (414 above).
pub const MAX_URI_LEN: usize = 8 * 1024;
/// Most bytes of request headers accepted (431 above).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Longest Host accepted.
const MAX_HOST_LEN: usize = 255;
/// Longest method accepted (the standard ones are at most 16 bytes; WebDAV's too).
pub const MAX_METHOD_LEN: usize = 32;

/// The host the request is for (lowercase, port kept), or why the request is refused.
pub fn check<B>(req: &Request<B>) -> Result<String, ProxyError> {
    let method = req.method();
    if method == Method::CONNECT {
        // HTTP/1's parser refuses it too: both get the same answer.
        return Err(ProxyError::BadRequest(
            "CONNECT is not served: this edge forwards HTTP requests to tunnels".into(),
        ));
    }
    if method.as_str().len() > MAX_METHOD_LEN {
        return Err(ProxyError::BadRequest(format!(
            "the method is {} bytes long; at most {MAX_METHOD_LEN} are accepted",
            method.as_str().len()
        )));
    }
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > MAX_URI_LEN {
        return Err(ProxyError::UriTooLong(uri_len));
    }
    if is_asterisk(req) && method != Method::OPTIONS {
        return Err(ProxyError::BadRequest("only OPTIONS may ask for \"*\"".into()));
    }
    let header_bytes: usize = req.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Err(ProxyError::HeadersTooLarge(header_bytes));
    }
    check_framing(req.headers())?;
    let host = request_host(req)?;
    let valid = !host.is_empty()
        && host.len() <= MAX_HOST_LEN
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
        && host_port::parse(&host).is_ok();
    if !valid {
        return Err(ProxyError::BadRequest(
            "the Host is not a valid host name (and port)".into(),
        ));
    }
    Ok(host.to_ascii_lowercase())
}

/// `OPTIONS *`: a question to the server as a whole, which the edge answers itself (no origin
/// is asked, so no tunnel owner sees a request it could not have configured for).
pub fn is_asterisk<B>(req: &Request<B>) -> bool {
    req.uri().path() == "*"
}

/// The Host: `:authority` for HTTP/2 (a `Host` header, if any, must agree), exactly one `Host`
/// header for HTTP/1.x (an absolute-form target must agree with it).
fn request_host<B>(req: &Request<B>) -> Result<String, ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest(
            "the request has more than one Host header".into(),
        ));
    }
    let header_host = match first {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ProxyError::BadRequest("the Host header is not valid text".into()))?,
        ),
        None => None,
    };
    let authority = req.uri().authority().map(|a| a.as_str());
    match (authority, header_host) {
        (Some(a), Some(h)) if !a.eq_ignore_ascii_case(h) => Err(ProxyError::BadRequest(format!(
            "the request target names {a:?} but the Host header says {h:?}"
        ))),
        (Some(a), _) if req.version() == Version::HTTP_2 || a.len() <= MAX_HOST_LEN => Ok(a.to_owned()),
        (_, Some(h)) => Ok(h.to_owned()),
        _ => Err(ProxyError::MissingHost),
    }
}

/// Over TLS, a connection opened for one tenant's site (SNI) must not carry requests for another
/// tenant's site (connection coalescing across tenants). 421 tells the client to open a new
/// connection for that site.
pub fn check_sni(table: &RouteTable, sni: &str, host: &str) -> Result<(), ProxyError> {
    let host_only = host_port::split(host).0;
    if sni.eq_ignore_ascii_case(host_only) {
        return Ok(());
    }
    let account = |name: &str| table.lookup(name).and_then(|r| table.route_account(r));
    match (account(sni), account(host)) {
        (Some(a), Some(b)) if a != b => Err(ProxyError::Misdirected {
            sni: sni.to_owned(),
            host: host.to_owned(),
        }),
        // Same tenant, or a server name no tenant routes (e.g. the edge's own name).
        _ => Ok(()),
    }
}

/// Reject bodies whose length two parsers could read differently.
fn check_framing(headers: &HeaderMap) -> Result<(), ProxyError> {
    let bad = |why: &str| Err(ProxyError::BadRequest(why.to_owned()));
    let lengths: Vec<_> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
    if lengths.windows(2).any(|w| w[0] != w[1]) {
        return bad("conflicting Content-Length headers");
    }
    let encodings: Vec<_> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    if encodings.is_empty() {
        return Ok(());
    }
    if !lengths.is_empty() {
        return bad("both Content-Length and Transfer-Encoding are set");
    }
    let only_chunked = encodings.len() == 1 && encodings[0].as_bytes().eq_ignore_ascii_case(b"chunked");
    if !only_chunked {
        return bad("Transfer-Encoding must be exactly \"chunked\"");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn request(version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().version(version).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn hosts() {
        use Version as V;
        type Case<'a> = (Version, &'a str, &'a [(&'a str, &'a str)], Result<&'a str, &'a str>);
        let cases: &[Case] = &[
            (V::HTTP_11, "/", &[("host", "App.Test")], Ok("app.test")),
            (V::HTTP_11, "/", &[("host", "app.test:8080")], Ok("app.test:8080")),
            (V::HTTP_11, "/", &[], Err("missing_host")),
            (
                V::HTTP_11,
                "/",
                &[("host", "a.test"), ("host", "b.test")],
                Err("bad_request"),
            ),
            (V::HTTP_11, "http://a.test/", &[("host", "b.test")], Err("bad_request")),
            (V::HTTP_11, "http://a.test/", &[("host", "a.test")], Ok("a.test")),
            (V::HTTP_2, "https://a.test/", &[], Ok("a.test")),
            (V::HTTP_2, "https://a.test/", &[("host", "b.test")], Err("bad_request")),
            (V::HTTP_11, "/", &[("host", "a b")], Err("bad_request")),
            (V::HTTP_11, "/", &[("host", "a:abc")], Err("bad_request")),
            (V::HTTP_11, "/", &[("host", "a:99999")], Err("bad_request")),
            (V::HTTP_11, "/", &[("host", "[::1]:8080")], Ok("[::1]:8080")),
            (V::HTTP_11, "*", &[("host", "a.test")], Err("bad_request")),
            (
                V::HTTP_11,
                "/",
                &[("host", "a.test"), ("transfer-encoding", "chunked, chunked")],
                Err("bad_request"),
            ),
            (
                V::HTTP_11,
                "/",
                &[("host", "a.test"), ("transfer-encoding", "gzip")],
                Err("bad_request"),
            ),
            (
                V::HTTP_11,
                "/",
                &[("host", "a.test"), ("transfer-encoding", "chunked")],
                Ok("a.test"),
            ),
            (
                V::HTTP_11,
                "/",
                &[
                    ("host", "a.test"),
                    ("transfer-encoding", "chunked"),
                    ("content-length", "3"),
                ],
                Err("bad_request"),
            ),
            (
                V::HTTP_11,
                "/",
                &[("host", "a.test"), ("content-length", "3"), ("content-length", "4")],
                Err("bad_request"),
            ),
        ];
        for (version, uri, headers, expected) in cases {
            let got = check(&request(*version, uri, headers)).map_err(|e| e.code());
            assert_eq!(got, expected.map(str::to_owned), "{uri} {headers:?}");
        }
    }

    #[test]
    fn long_uris_are_414() {
        let uri = format!("/{}", "a".repeat(MAX_URI_LEN));
        let err = check(&request(Version::HTTP_11, &uri, &[("host", "a.test")])).unwrap_err();
        assert_eq!(err.code(), "uri_too_long");
    }
}
