//! The headers an origin receives: hop-by-hop and spoofable ones removed, the edge's
//! forwarding headers set.

use burrow_protocol::headers::{self, strip_hop_by_hop};
use http::{HeaderMap, HeaderValue};

use super::ClientInfo;

/// Headers sent to the origin: hop-by-hop and spoofable `burrow-*` headers removed, forwarding
/// headers added.
pub(super) fn headers(
    mut h: HeaderMap,
    client: &ClientInfo,
    host: &str,
    request_id: &str,
    websocket: bool,
) -> HeaderMap {
    strip_hop_by_hop(&mut h, websocket);
    let spoofed: Vec<_> = h.keys().filter(|k| set_by_edge(k.as_str())).cloned().collect();
    for name in spoofed {
        h.remove(name);
    }
    let ip = client.addr.ip().to_string();
    let xff = match h.get(&headers::X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {ip}"),
        None => ip.clone(),
    };
    for (name, value) in [
        (headers::X_FORWARDED_FOR, xff.as_str()),
        (headers::X_FORWARDED_PROTO, client.scheme.as_str()),
        (headers::X_FORWARDED_HOST, host),
        (headers::CONNECTING_IP, ip.as_str()),
        (headers::REQUEST_ID, request_id),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            h.insert(name, value);
        }
    }
    h
}

/// Whether a client header is one the edge sets, in any spelling: `burrow-*`, and with `_` for
/// `-` the forwarding headers too (CGI and WSGI origins read `Burrow_Connecting_IP` as
/// `Burrow-Connecting-IP`). The visitor's own `X-Forwarded-For` is kept and appended to.
fn set_by_edge(name: &str) -> bool {
    let spelled = |canonical: &str| {
        name.len() >= canonical.len()
            && name
                .bytes()
                .zip(canonical.bytes())
                .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
    };
    let underscored = name.contains('_');
    spelled("burrow-")
        || underscored
            && name.len() <= "x-forwarded-proto".len()
            && ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"]
                .iter()
                .any(|h| h.len() == name.len() && spelled(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_the_edges_headers_is_stripped() {
        for name in [
            "burrow-connecting-ip",
            "burrow_connecting_ip",
            "burrow_request-id",
            "burrow-anything",
            "x_forwarded_for",
            "x_forwarded-proto",
            "x-forwarded_host",
        ] {
            assert!(set_by_edge(name), "{name}");
        }
        for name in [
            "x-forwarded-for",
            "burrowing",
            "x_forwarded_fork",
            "content-type",
            "my_header",
        ] {
            assert!(!set_by_edge(name), "{name}");
        }
    }
}
