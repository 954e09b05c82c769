//! Ingress rules: which origin service answers a request, chosen by hostname and path.
//!
//! The syntax and semantics follow cloudflared's `ingress:` section so existing `config.yml` files keep
//! working: rules are tried in order, the first whose hostname and path both match wins, and the last
//! rule must be a catch-all so every request has an answer. Rules are validated once, up front, and every
//! problem is reported together — fixing a config one error per restart is miserable. Matching happens per
//! request, so [`Ingress::find`] does no allocation.

use std::fmt;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::time::Duration;

use burrow_shared::host_port;
use regex::{Regex, RegexBuilder};
use serde::Deserialize;

/// More rules than this is almost certainly a generated config gone wrong; matching is linear.
pub const MAX_RULES: usize = 1000;
const MAX_PATH_LEN: usize = 1024;
/// Bounds compiled regex size so a hostile or careless pattern cannot eat memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
const MAX_HOSTNAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

const SUPPORTED_SERVICES: &str = "http://host[:port][/path], https://host[:port][/path], unix:/path/to.sock, \
     unix+tls:/path/to.sock, tcp://host:port, http_status:CODE, hello_world";

/// Answers requests when `rules` was built by hand and left empty; never reached through the constructors.
static NO_RULES: Rule = Rule {
    index: 0,
    hostname: None,
    path: None,
    service: Service::HttpStatus(http::StatusCode::SERVICE_UNAVAILABLE),
    origin: OriginRequest::DEFAULT,
};

/// A validated, ordered rule set. The last rule is always a catch-all.
#[derive(Debug, Clone)]
pub struct Ingress {
    pub rules: Vec<Rule>,
}

impl Ingress {
    /// One catch-all rule to `service` (for `burrow tunnel run --url URL`).
    pub fn single(service: Service, origin: OriginRequest) -> Ingress {
        Ingress {
            rules: vec![Rule {
                index: 0,
                hostname: None,
                path: None,
                service,
                origin,
            }],
        }
    }

    /// Validates raw rules from config.yml, applying `defaults` (the top-level `originRequest`) under each
    /// rule's own `originRequest`. Reports every problem at once.
    pub fn from_raw(rules: &[RawRule], defaults: &RawOriginRequest) -> Result<Ingress, IngressError> {
        let catch_all_hint = "add `- service: http_status:404` at the end";
        if rules.is_empty() {
            return Err(IngressError::one(format!(
                "there are no ingress rules: {catch_all_hint}"
            )));
        }
        if rules.len() > MAX_RULES {
            return Err(IngressError::one(format!(
                "{} ingress rules is more than the limit of {MAX_RULES}: use wildcard hostnames or path \
                 regexes to combine rules",
                rules.len()
            )));
        }

        let mut problems = Vec::new();
        let mut out = Vec::with_capacity(rules.len());
        let last = rules.len() - 1;
        for (index, raw) in rules.iter().enumerate() {
            let n = index + 1;
            let mut mine = Vec::new();
            let mut problem = |msg: String| mine.push(format!("rule #{n}: {msg}"));

            // Decided from the raw text so an invalid hostname is not also reported as a catch-all.
            let any_host = raw.hostname.as_deref().is_none_or(|h| h == "*");
            let any_path = raw.path.as_deref().is_none_or(str::is_empty);
            let catch_all = any_host && any_path;

            let hostname = match raw.hostname.as_deref().map(HostPattern::parse) {
                None | Some(Ok(None)) => None,
                Some(Ok(Some(p))) => Some(p),
                Some(Err(e)) => {
                    problem(e);
                    None
                }
            };
            let path = match raw.path.as_deref() {
                None | Some("") => None,
                Some(p) => compile_path(p).map_err(&mut problem).ok(),
            };
            let service = Service::parse(&raw.service).map_err(&mut problem).ok();
            if index == last && !catch_all {
                problem(format!("the last rule must match every request: {catch_all_hint}"));
            }
            problems.append(&mut mine);
            if index != last && catch_all {
                problems.push(format!(
                    "rule #{n} matches every request, so rules after it can never match: give it a hostname \
                     or path, or move it to the end"
                ));
            }

            if let Some(service) = service {
                let origin = raw.origin_request.merged_over(defaults).resolve();
                out.push(Rule {
                    index,
                    hostname,
                    path,
                    service,
                    origin,
                });
            }
        }

        if problems.is_empty() {
            Ok(Ingress { rules: out })
        } else {
            Err(IngressError { problems })
        }
    }

    /// First rule matching the request. `host` may carry a `:port` and is compared ASCII
    /// case-insensitively; `path` is the request path without the query. Does not allocate.
    pub fn find(&self, host: &str, path: &str) -> &Rule {
        let host = strip_port(host);
        self.rules
            .iter()
            .find(|r| r.matches(host, path))
            .or(self.rules.last())
            .unwrap_or(&NO_RULES)
    }
}

/// `host` without a trailing `:port` (IPv6 literals keep their brackets) or a trailing root dot.
fn strip_port(host: &str) -> &str {
    let host = host_port::split(host).0;
    host.strip_suffix('.').unwrap_or(host)
}

fn compile_path(p: &str) -> Result<Regex, String> {
    if p.len() > MAX_PATH_LEN {
        return Err(format!(
            "path is {} characters, more than the limit of {MAX_PATH_LEN}: simplify it",
            p.len()
        ));
    }
    RegexBuilder::new(p)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(limit) => {
                format!("path `{p}` compiles to more than {limit} bytes: simplify the regular expression")
            }
            // Syntax errors are multi-line ASCII art; the `error:` line alone reads well in a bullet list.
            e => {
                let text = e.to_string();
                let reason = text
                    .lines()
                    .find_map(|l| l.strip_prefix("error: "))
                    .unwrap_or(&text)
                    .to_owned();
                format!("path `{p}` is not a valid regular expression: {reason}")
            }
        })
}

/// One ingress rule with its origin settings resolved.
#[derive(Debug, Clone)]
pub struct Rule {
    /// 0-based position in the config; shown to people as `rule #{index + 1}`.
    pub index: usize,
    pub hostname: Option<HostPattern>,
    /// Unanchored, like cloudflared: `/api` matches `/v1/api/x` unless written `^/api`.
    pub path: Option<Regex>,
    pub service: Service,
    pub origin: OriginRequest,
}

impl Rule {
    /// Whether this rule accepts the request. `host` must already be stripped of its port.
    pub fn matches(&self, host: &str, path: &str) -> bool {
        self.hostname.as_ref().is_none_or(|h| h.matches(host)) && self.path.as_ref().is_none_or(|p| p.is_match(path))
    }

    /// Human-readable summary for logs, e.g. `rule #2 (hostname app.example.com, path ^/api) → http://...`.
    pub fn describe(&self) -> String {
        let n = self.index + 1;
        let cond = match (&self.hostname, &self.path) {
            (None, None) => "catch-all".to_owned(),
            (Some(h), None) => format!("hostname {h}"),
            (None, Some(p)) => format!("path {}", p.as_str()),
            (Some(h), Some(p)) => format!("hostname {h}, path {}", p.as_str()),
        };
        format!("rule #{n} ({cond}) → {}", self.service)
    }
}

/// A rule's hostname. `*` alone is represented as no pattern at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Lowercase hostname.
    Exact(String),
    /// Suffix including the leading dot: `*.example.com` is stored as `.example.com`. Like cloudflared it
    /// matches any depth (`a.b.example.com`) but not the apex `example.com`.
    Wildcard(String),
}

impl HostPattern {
    /// Validates and normalizes a config hostname; `Ok(None)` for `*`.
    pub fn parse(raw: &str) -> Result<Option<HostPattern>, String> {
        if raw == "*" {
            return Ok(None);
        }
        if raw.is_empty() {
            return Err("hostname is empty: remove it (or use `*`) to match every host".to_owned());
        }
        if raw.contains("://") {
            return Err(format!(
                "hostname `{raw}` must not include a scheme: write just the host, e.g. `app.example.com`"
            ));
        }
        if raw.contains('/') {
            return Err(format!(
                "hostname `{raw}` must not include a path: put it in the rule's `path` field"
            ));
        }
        if raw.contains(':') {
            return Err(format!(
                "hostname `{raw}` must not include a port: matching ignores the request's port"
            ));
        }
        let lower = raw.to_ascii_lowercase();
        let lower = lower.strip_suffix('.').unwrap_or(&lower);
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower),
        };
        if name.contains('*') {
            return Err(format!(
                "hostname `{raw}`: a wildcard is only allowed as the whole first label, e.g. `*.example.com`"
            ));
        }
        if lower.len() > MAX_HOSTNAME_LEN {
            return Err(format!(
                "hostname is {} characters, more than the DNS limit of {MAX_HOSTNAME_LEN}",
                lower.len()
            ));
        }
        for label in name.split('.') {
            if label.is_empty() || label.len() > MAX_LABEL_LEN {
                return Err(format!(
                    "hostname `{raw}`: each dot-separated label must be 1 to {MAX_LABEL_LEN} characters"
                ));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(format!(
                    "hostname `{raw}`: labels may contain only letters, digits and `-`"
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(format!("hostname `{raw}`: labels must not start or end with `-`"));
            }
        }
        Ok(Some(if wildcard {
            HostPattern::Wildcard(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_owned())
        }))
    }

    /// `host` has no port; compared ASCII case-insensitively without allocating.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host.eq_ignore_ascii_case(name),
            HostPattern::Wildcard(suffix) => {
                let (h, s) = (host.as_bytes(), suffix.as_bytes());
                // Strictly longer: the wildcard label must be non-empty, so the apex never matches.
                h.len() > s.len() && h[h.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginScheme {
    Http,
    Https,
}

impl OriginScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            OriginScheme::Http => "http",
            OriginScheme::Https => "https",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            OriginScheme::Http => 80,
            OriginScheme::Https => 443,
        }
    }
}

/// Where a matched request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Service {
    /// `http(s)://host[:port][/prefix]`; `authority` always carries the port, `base_path` has no trailing `/`.
    Http {
        scheme: OriginScheme,
        authority: String,
        base_path: String,
    },
    /// `unix:/path/sock` or `unix+tls:/path/sock`.
    Unix { path: PathBuf, tls: bool },
    /// `tcp://host:port`: raw byte stream, no HTTP.
    Tcp { address: String },
    /// `http_status:404`: answer directly with this status.
    HttpStatus(http::StatusCode),
    /// `hello_world`: the built-in test origin.
    HelloWorld,
}

impl Service {
    /// Parses cloudflared's service syntax; the error says which forms are accepted.
    pub fn parse(s: &str) -> Result<Service, String> {
        if s == "hello_world" {
            return Ok(Service::HelloWorld);
        }
        if let Some(code) = s.strip_prefix("http_status:") {
            return parse_status(code).map(Service::HttpStatus);
        }
        if let Some(path) = s.strip_prefix("unix+tls:") {
            return parse_unix(s, path, true);
        }
        if let Some(path) = s.strip_prefix("unix:") {
            return parse_unix(s, path, false);
        }
        if let Some((scheme, rest)) = s.split_once("://") {
            let with_scheme = |scheme| parse_http(s, scheme, rest);
            return if scheme.eq_ignore_ascii_case("http") {
                with_scheme(OriginScheme::Http)
            } else if scheme.eq_ignore_ascii_case("https") {
                with_scheme(OriginScheme::Https)
            } else if scheme.eq_ignore_ascii_case("tcp") {
                let address = parse_authority(rest, None).map_err(|e| format!("service `{s}`: {e}"))?;
                Ok(Service::Tcp { address })
            } else {
                Err(format!(
                    "service `{s}` has unsupported scheme `{scheme}`: use one of {SUPPORTED_SERVICES}"
                ))
            };
        }
        if s.is_empty() {
            return Err(format!("service is empty: use one of {SUPPORTED_SERVICES}"));
        }
        if parse_authority(s, None).is_ok() {
            return Err(format!("service `{s}` has no scheme: did you mean `http://{s}`?"));
        }
        Err(format!(
            "service `{s}` is not recognised: use one of {SUPPORTED_SERVICES}"
        ))
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Service::Http {
                scheme,
                authority,
                base_path,
            } => write!(f, "{}://{authority}{base_path}", scheme.as_str()),
            Service::Unix { path, tls } => {
                write!(f, "{}:{}", if *tls { "unix+tls" } else { "unix" }, path.display())
            }
            Service::Tcp { address } => write!(f, "tcp://{address}"),
            Service::HttpStatus(code) => write!(f, "http_status:{}", code.as_u16()),
            Service::HelloWorld => f.write_str("hello_world"),
        }
    }
}

fn parse_status(code: &str) -> Result<http::StatusCode, String> {
    code.parse::<u16>()
        .ok()
        .filter(|c| (100..=599).contains(c))
        .and_then(|c| http::StatusCode::from_u16(c).ok())
        .ok_or_else(|| {
            format!("http_status `{code}` is not an HTTP status code: use 100 to 599, e.g. `http_status:404`")
        })
}

fn parse_unix(s: &str, path: &str, tls: bool) -> Result<Service, String> {
    if path.is_empty() {
        return Err(format!(
            "service `{s}` has no socket path: write e.g. `unix:/run/app.sock`"
        ));
    }
    Ok(Service::Unix {
        path: PathBuf::from(path),
        tls,
    })
}

fn parse_http(s: &str, scheme: OriginScheme, rest: &str) -> Result<Service, String> {
    if rest.contains(['?', '#']) {
        return Err(format!(
            "service `{s}` must not have a query or fragment: remove everything from `?` or `#`"
        ));
    }
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let authority =
        parse_authority(authority, Some(scheme.default_port())).map_err(|e| format!("service `{s}`: {e}"))?;
    if path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return Err(format!(
            "service `{s}`: the path must not contain spaces or control characters"
        ));
    }
    Ok(Service::Http {
        scheme,
        authority,
        base_path: path.trim_end_matches('/').to_owned(),
    })
}

/// Parses `host[:port]` into a normalized `host:port` (lowercase host); `default_port` of `None` makes
/// the port mandatory.
fn parse_authority(s: &str, default_port: Option<u16>) -> Result<String, String> {
    if s.is_empty() {
        return Err("missing host".to_owned());
    }
    if s.contains('@') {
        return Err("credentials (`user@`) are not supported in the address".to_owned());
    }
    let (host, port) = host_port::parse(s)?;
    let host = match host.starts_with('[') {
        // One spelling of each IPv6 address.
        true => format!(
            "[{}]",
            host_port::unbracket(host)
                .parse::<Ipv6Addr>()
                .map_err(|e| format!("{host}: {e}"))?
        ),
        false => host.to_ascii_lowercase(),
    };
    let port = port
        .or(default_port)
        .ok_or("a port is required, e.g. `tcp://localhost:22`")?;
    Ok(format!("{host}:{port}"))
}

/// Origin connection settings with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginRequest {
    pub connect_timeout: Duration,
    pub tls_timeout: Duration,
    pub tcp_keep_alive: Duration,
    pub keep_alive_connections: usize,
    pub keep_alive_timeout: Duration,
    pub http_host_header: Option<String>,
    pub origin_server_name: Option<String>,
    pub ca_pool: Option<PathBuf>,
    pub no_tls_verify: bool,
    pub disable_chunked_encoding: bool,
    pub http2_origin: bool,
}

impl OriginRequest {
    /// cloudflared's defaults, except `keep_alive_connections` (cloudflared keeps 100): a burst
    /// of more concurrent requests than idle slots closed the excess connections after one
    /// request each, and under 640 concurrent requests a quarter of them opened a new origin
    /// connection. A `const` so it can live in statics.
    pub const DEFAULT: OriginRequest = OriginRequest {
        connect_timeout: Duration::from_secs(30),
        tls_timeout: Duration::from_secs(10),
        tcp_keep_alive: Duration::from_secs(30),
        keep_alive_connections: 1024,
        keep_alive_timeout: Duration::from_secs(90),
        http_host_header: None,
        origin_server_name: None,
        ca_pool: None,
        no_tls_verify: false,
        disable_chunked_encoding: false,
        http2_origin: false,
    };
}

impl Default for OriginRequest {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// `originRequest` as written in config.yml, at top level or per rule; every field optional so the two
/// levels can be layered.
#[derive(Deserialize, Default, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawOriginRequest {
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub tls_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub tcp_keep_alive: Option<Duration>,
    pub keep_alive_connections: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub keep_alive_timeout: Option<Duration>,
    pub http_host_header: Option<String>,
    pub origin_server_name: Option<String>,
    pub ca_pool: Option<PathBuf>,
    /// cloudflared spells this one with capitals.
    #[serde(rename = "noTLSVerify")]
    pub no_tls_verify: Option<bool>,
    pub disable_chunked_encoding: Option<bool>,
    pub http2_origin: Option<bool>,
}

impl RawOriginRequest {
    /// Fields set in `self` win; unset ones come from `base`.
    pub fn merged_over(&self, base: &RawOriginRequest) -> RawOriginRequest {
        fn pick<T: Clone>(mine: &Option<T>, base: &Option<T>) -> Option<T> {
            mine.as_ref().or(base.as_ref()).cloned()
        }
        RawOriginRequest {
            connect_timeout: pick(&self.connect_timeout, &base.connect_timeout),
            tls_timeout: pick(&self.tls_timeout, &base.tls_timeout),
            tcp_keep_alive: pick(&self.tcp_keep_alive, &base.tcp_keep_alive),
            keep_alive_connections: pick(&self.keep_alive_connections, &base.keep_alive_connections),
            keep_alive_timeout: pick(&self.keep_alive_timeout, &base.keep_alive_timeout),
            http_host_header: pick(&self.http_host_header, &base.http_host_header),
            origin_server_name: pick(&self.origin_server_name, &base.origin_server_name),
            ca_pool: pick(&self.ca_pool, &base.ca_pool),
            no_tls_verify: pick(&self.no_tls_verify, &base.no_tls_verify),
            disable_chunked_encoding: pick(&self.disable_chunked_encoding, &base.disable_chunked_encoding),
            http2_origin: pick(&self.http2_origin, &base.http2_origin),
        }
    }

    /// Fills unset fields with [`OriginRequest::DEFAULT`].
    pub fn resolve(&self) -> OriginRequest {
        let d = OriginRequest::DEFAULT;
        OriginRequest {
            connect_timeout: self.connect_timeout.unwrap_or(d.connect_timeout),
            tls_timeout: self.tls_timeout.unwrap_or(d.tls_timeout),
            tcp_keep_alive: self.tcp_keep_alive.unwrap_or(d.tcp_keep_alive),
            keep_alive_connections: self.keep_alive_connections.unwrap_or(d.keep_alive_connections),
            keep_alive_timeout: self.keep_alive_timeout.unwrap_or(d.keep_alive_timeout),
            http_host_header: self.http_host_header.clone(),
            origin_server_name: self.origin_server_name.clone(),
            ca_pool: self.ca_pool.clone(),
            no_tls_verify: self.no_tls_verify.unwrap_or(d.no_tls_verify),
            disable_chunked_encoding: self.disable_chunked_encoding.unwrap_or(d.disable_chunked_encoding),
            http2_origin: self.http2_origin.unwrap_or(d.http2_origin),
        }
    }
}

/// One `ingress:` entry as written in config.yml.
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub hostname: Option<String>,
    pub path: Option<String>,
    pub service: String,
    #[serde(rename = "originRequest", default)]
    pub origin_request: RawOriginRequest,
}

/// Every problem found in a rule set, each naming its rule and the fix.
#[derive(thiserror::Error, Debug)]
#[error("invalid ingress rules:{}", bullets(.problems))]
pub struct IngressError {
    pub problems: Vec<String>,
}

impl IngressError {
    pub fn one(problem: String) -> IngressError {
        IngressError {
            problems: vec![problem],
        }
    }
}

fn bullets(problems: &[String]) -> String {
    problems.iter().map(|p| format!("\n  - {p}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// `(hostname, path, service)`, with `""` meaning "not set".
    type Spec<'a> = (&'a str, &'a str, &'a str);

    fn raw(rules: &[Spec]) -> Vec<RawRule> {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let rule = |&(h, p, s): &Spec| RawRule {
            hostname: opt(h),
            path: opt(p),
            service: s.to_owned(),
            origin_request: RawOriginRequest::default(),
        };
        rules.iter().map(rule).collect()
    }

    fn build(rules: &[Spec]) -> Ingress {
        Ingress::from_raw(&raw(rules), &RawOriginRequest::default()).unwrap()
    }

    fn problems(rules: &[RawRule]) -> Vec<String> {
        Ingress::from_raw(rules, &RawOriginRequest::default())
            .unwrap_err()
            .problems
    }

    #[test]
    fn find_precedence() {
        let ing = build(&[
            ("api.example.com", "^/v2", "http://localhost:8002"),
            ("api.example.com", "", "http://localhost:8001"),
            ("*.example.com", "", "http://localhost:8003"),
            ("*.example.com", "", "http://localhost:9999"),
            ("", "\\.png$", "http://localhost:8004"),
            ("*", "^/any", "hello_world"),
            ("", "", "http_status:404"),
        ]);
        let cases: &[(&str, &str, usize)] = &[
            ("api.example.com", "/v2/users", 0),
            ("api.example.com", "/v1/users", 1),
            ("API.Example.COM:8443", "/v2", 0),
            ("api.example.com.", "/", 1),
            ("www.example.com", "/", 2),
            ("a.b.example.com", "/", 2),
            ("example.com", "/", 6),
            ("example.com", "/logo.png", 4),
            ("example.com", "/any/x", 5),
            ("notexample.com", "/", 6),
            ("xexample.com", "/", 6),
            ("other.org:80", "/x/y.png", 4),
            ("", "/", 6),
            ("[::1]:8080", "/", 6),
        ];
        for &(host, path, want) in cases {
            assert_eq!(ing.find(host, path).index, want, "host={host} path={path}");
        }
        assert!(ing.rules[5].hostname.is_none(), "`*` is stored as no hostname");
    }

    #[test]
    fn single_and_empty() {
        let ing = Ingress::single(Service::HelloWorld, OriginRequest::default());
        assert_eq!(ing.find("any", "/").service, Service::HelloWorld);
        let empty = Ingress { rules: Vec::new() };
        assert_eq!(
            empty.find("any", "/").service,
            Service::HttpStatus(http::StatusCode::SERVICE_UNAVAILABLE)
        );
    }

    #[test]
    fn service_forms_parse_and_round_trip() {
        let cases = [
            ("http://localhost:8000", "http://localhost:8000"),
            ("http://localhost", "http://localhost:80"),
            ("https://Origin.Internal", "https://origin.internal:443"),
            ("HTTPS://10.0.0.1:8443/app/", "https://10.0.0.1:8443/app"),
            ("http://[::1]:3000/a/b", "http://[::1]:3000/a/b"),
            ("http://[0:0::1]", "http://[::1]:80"),
            ("http://host/", "http://host:80"),
            ("unix:/run/app.sock", "unix:/run/app.sock"),
            ("unix+tls:/run/app.sock", "unix+tls:/run/app.sock"),
            ("tcp://DB.local:5432", "tcp://db.local:5432"),
            ("http_status:404", "http_status:404"),
            ("http_status:599", "http_status:599"),
            ("hello_world", "hello_world"),
        ];
        for (input, canonical) in cases {
            let got = Service::parse(input).unwrap();
            assert_eq!(got.to_string(), canonical, "{input}");
            assert_eq!(Service::parse(canonical).unwrap(), got, "round trip of {input}");
        }
        let want = Service::Http {
            scheme: OriginScheme::Https,
            authority: "10.0.0.1:8443".to_owned(),
            base_path: "/app".to_owned(),
        };
        assert_eq!(Service::parse("https://10.0.0.1:8443/app/").unwrap(), want);
        let want = Service::Unix {
            path: "/s".into(),
            tls: true,
        };
        assert_eq!(Service::parse("unix+tls:/s").unwrap(), want);
        let want = Service::HttpStatus(http::StatusCode::NOT_FOUND);
        assert_eq!(Service::parse("http_status:404").unwrap(), want);
    }

    #[test]
    fn service_errors() {
        let cases = [
            ("ftp://host", "unsupported scheme"),
            ("ftp://host", "http_status:CODE"),
            ("localhost:8080", "did you mean `http://localhost:8080`"),
            ("", "service is empty"),
            ("http://", "missing host"),
            ("http://host:0", "port `0`"),
            ("http://host:99999", "port `99999`"),
            ("http://host:+80", "port `+80`"),
            ("http://host/x?y=1", "query or fragment"),
            ("http://host#frag", "query or fragment"),
            ("http://user@host", "credentials"),
            ("http://ho st", "not a valid host"),
            ("http://[::zz]", "not a valid IPv6"),
            ("tcp://db.local", "port is required"),
            ("unix:", "no socket path"),
            ("http_status:99", "100 to 599"),
            ("http_status:600", "100 to 599"),
            ("http_status:abc", "100 to 599"),
            ("nonsense", "not recognised"),
        ];
        for (input, want) in cases {
            let err = Service::parse(input).unwrap_err();
            assert!(err.contains(want), "{input}: {err}");
        }
    }

    /// Each case is a single bad rule followed by a valid catch-all; exactly one problem, on rule #1.
    #[test]
    fn rule_problems_name_the_rule() {
        let long_label = format!("{}.com", "a".repeat(64));
        let long_name = format!("{}com", "abcdefghi.".repeat(26));
        let long_path = "a".repeat(1025);
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "https://app.example.com",
                "",
                "hello_world",
                "must not include a scheme",
            ),
            ("app.example.com:443", "", "hello_world", "must not include a port"),
            ("app.example.com/api", "", "hello_world", "must not include a path"),
            ("a.*.example.com", "", "hello_world", "wildcard"),
            ("*example.com", "", "hello_world", "wildcard"),
            ("app..example.com", "", "hello_world", "label must be 1 to 63"),
            (&long_label, "", "hello_world", "label must be 1 to 63"),
            (&long_name, "", "hello_world", "DNS limit of 253"),
            ("-app.example.com", "", "hello_world", "start or end with `-`"),
            ("app_1.example.com", "", "hello_world", "only letters, digits"),
            (
                "a.com",
                "(unclosed",
                "hello_world",
                "path `(unclosed` is not a valid regular expression",
            ),
            ("a.com", &long_path, "hello_world", "path is 1025 characters"),
            ("a.com", "a{1000}{1000}", "hello_world", "compiles to more than"),
            ("a.com", "", "gopher://x", "service `gopher://x` has unsupported scheme"),
            ("a.com", "", "http_status:42", "http_status `42`"),
        ];
        for &(host, path, service, want) in cases {
            let errs = problems(&raw(&[(host, path, service), ("", "", "http_status:404")]));
            assert_eq!(errs.len(), 1, "{host} {path} {service}: {errs:?}");
            assert!(
                errs[0].starts_with("rule #1: ") && errs[0].contains(want),
                "want {want:?}: {errs:?}"
            );
        }
        assert!(HostPattern::parse("").unwrap_err().contains("hostname is empty"));
    }

    #[test]
    fn rule_set_problems() {
        let cases: &[(&[Spec], &str)] = &[
            (&[], "no ingress rules"),
            (
                &[("a.com", "", "hello_world")],
                "rule #1: the last rule must match every request",
            ),
            (
                &[("", "^/x", "hello_world")],
                "rule #1: the last rule must match every request",
            ),
            (
                &[("", "", "hello_world"), ("", "", "http_status:404")],
                "rule #1 matches every request, so rules after it can never match",
            ),
        ];
        for &(rules, want) in cases {
            let errs = problems(&raw(rules));
            assert!(errs.iter().any(|e| e.contains(want)), "want {want:?} in {errs:?}");
        }
        let errs = problems(&raw(&[("", "", "http_status:404"); 1001]));
        assert!(errs[0].contains("more than the limit of 1000"), "{errs:?}");
    }

    #[test]
    fn all_problems_reported_together() {
        let rules = raw(&[
            ("bad host.com", "", "http://localhost:1"),
            ("ok.com", "[", "ftp://x"),
            ("", "", "hello_world"),
            ("last.com", "", "http_status:404"),
        ]);
        let err = Ingress::from_raw(&rules, &RawOriginRequest::default()).unwrap_err();
        let p = &err.problems;
        assert_eq!(p.len(), 5, "{p:?}");
        assert!(p[0].starts_with("rule #1: hostname `bad host.com`"));
        assert!(p[1].starts_with("rule #2: path"));
        assert!(p[2].starts_with("rule #2: service"));
        assert!(p[3].starts_with("rule #3 matches every request"));
        assert!(p[4].starts_with("rule #4: the last rule"));
        let shown = err.to_string();
        assert!(shown.starts_with("invalid ingress rules:\n  - rule #1: "), "{shown}");
        assert_eq!(shown.lines().count(), 6, "one line per problem: {shown}");
    }

    #[test]
    fn origin_request_inheritance() {
        let defaults: RawOriginRequest =
            serde_yaml_ng::from_str("connectTimeout: 5s\nnoTLSVerify: true\nhttpHostHeader: top.internal\n").unwrap();
        let mut rules = raw(&[("a.com", "", "https://localhost"), ("", "", "http_status:404")]);
        rules[0].origin_request =
            serde_yaml_ng::from_str("connectTimeout: 1m30s\nhttpHostHeader: rule.internal\nkeepAliveConnections: 7")
                .unwrap();
        let ing = Ingress::from_raw(&rules, &defaults).unwrap();

        let o = &ing.rules[0].origin;
        assert_eq!(o.connect_timeout, Duration::from_secs(90));
        assert_eq!(o.http_host_header.as_deref(), Some("rule.internal"));
        assert_eq!(o.keep_alive_connections, 7);
        assert!(o.no_tls_verify, "inherited from top level");
        assert_eq!(o.tls_timeout, Duration::from_secs(10), "built-in default");

        let o = &ing.rules[1].origin;
        assert_eq!(o.connect_timeout, Duration::from_secs(5));
        assert_eq!(o.http_host_header.as_deref(), Some("top.internal"));
        assert_eq!(o.keep_alive_connections, 1024);
        assert_eq!(RawOriginRequest::default().resolve(), OriginRequest::default());

        let err = serde_yaml_ng::from_str::<RawOriginRequest>("noTlsVerify: true").unwrap_err();
        assert!(
            err.to_string().contains("noTlsVerify"),
            "unknown keys are rejected by name: {err}"
        );
    }

    #[test]
    fn describe() {
        let ing = build(&[
            ("app.example.com", "^/api", "http://localhost:8000"),
            ("*.example.com", "", "unix:/run/a.sock"),
            ("", "", "http_status:404"),
        ]);
        let got: Vec<String> = ing.rules.iter().map(Rule::describe).collect();
        let want = [
            "rule #1 (hostname app.example.com, path ^/api) → http://localhost:8000",
            "rule #2 (hostname *.example.com) → unix:/run/a.sock",
            "rule #3 (catch-all) → http_status:404",
        ];
        assert_eq!(got, want);
    }
}
