//! `host`, `host:port`, `[v6]`, `[v6]:port`: the one place that knows where a port starts.

/// Split into the host (IPv6 brackets kept) and the port's text, checking neither. Allocates
/// nothing: route lookups use it on every request.
pub fn split(s: &str) -> (&str, Option<&str>) {
    if s.starts_with('[') {
        return match s.find(']') {
            Some(end) => (&s[..=end], s[end + 1..].strip_prefix(':')),
            None => (s, None),
        };
    }
    match s.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (s, None),
    }
}

/// The host without IPv6 brackets: `[::1]` → `::1`.
pub fn unbracket(host: &str) -> &str {
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// [`split`], checked: the host is a valid URI authority host (a name, an IPv4 address or a
/// bracketed IPv6 address, no user info), the port a number from 1 to 65535.
pub fn parse(s: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = split(s);
    if host.starts_with('[') && unbracket(host).parse::<std::net::Ipv6Addr>().is_err() {
        return Err(format!("`{host}` is not a valid IPv6 address"));
    }
    let valid_host = !host.is_empty()
        && !s.contains('@')
        && host.parse::<http::uri::Authority>().is_ok_and(|a| a.as_str() == host)
        && (!host.contains(':') || host.starts_with('['));
    if !valid_host {
        return Err(format!(
            "`{host}` is not a valid host: use a host name, an IPv4 address or an [IPv6] address"
        ));
    }
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|&n| n != 0 && p.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| format!("port `{p}` is not a number from 1 to 65535"))?,
        ),
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_ports() {
        assert_eq!(split("a.test:8080"), ("a.test", Some("8080")));
        assert_eq!(split("[::1]:80"), ("[::1]", Some("80")));
        assert_eq!(split("[::1]"), ("[::1]", None));
        assert_eq!(split("a.test"), ("a.test", None));
        assert_eq!(unbracket("[::1]"), "::1");
        assert_eq!(parse("a.test:8080"), Ok(("a.test", Some(8080))));
        assert_eq!(parse("[::1]:80"), Ok(("[::1]", Some(80))));
        assert_eq!(parse("10.0.0.1"), Ok(("10.0.0.1", None)));
        for bad in [
            "a:abc",
            "a:0",
            "a:99999",
            "a:",
            "user@a:80",
            "[::1",
            "[zz]:80",
            "",
            "a b:80",
            ":80",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
