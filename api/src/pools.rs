//! Load-balanced pools: how one is configured (`PUT /v1/pools/{name}`, the tunnels file), and how
//! `GET /v1/pools` shows one with its origins' health.

use burrow_protocol::TunnelId;
use http::{HeaderName, StatusCode};
use serde::{Deserialize, Serialize};

use crate::plugins::PluginBinding;

pub const MAX_ORIGINS_PER_POOL: usize = 64;
pub const MAX_WEIGHT: u32 = 1000;
/// How many fallback hops a request may take (pools may chain, never loop).
pub const MAX_FALLBACK_DEPTH: usize = 4;
/// Cookie that pins a client to one origin of a pool with session affinity.
pub const AFFINITY_COOKIE: &str = "burrow-affinity";
const MAX_AFFINITY_TTL_SECS: u64 = 7 * 24 * 3600;

/// A pool as configured. `T` names an origin's tunnel: a name or UUID as a user typed it (API
/// bodies, the tunnels file), a [`TunnelId`] once resolved (the store, the route table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "kebab-case",
    bound(deserialize = "T: Deserialize<'de>")
)]
pub struct PoolSpec<T> {
    #[serde(default)]
    pub origins: Vec<PoolOrigin<T>>,
    #[serde(default)]
    pub steering: Steering,
    /// For `hash` steering: `client-ip` (default), `header:NAME` or `cookie:NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashKey>,
    /// For `plugin` steering: the balancer plugin that picks the origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balancer: Option<PluginBinding>,
    /// Active health checks sent through each tunnel; without one, only passive health applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<Monitor>,
    /// Pool (of the same account) that serves when this one has no healthy origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Pin each client to the origin it first got, with the `burrow-affinity` cookie, this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_ttl_secs: Option<u64>,
}

impl<T> Default for PoolSpec<T> {
    fn default() -> Self {
        Self {
            origins: Vec::new(),
            steering: Steering::default(),
            hash_on: None,
            balancer: None,
            monitor: None,
            fallback: None,
            affinity_ttl_secs: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PoolOrigin<T> {
    pub tunnel: T,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Steering {
    /// Weighted random.
    #[default]
    Random,
    /// Weighted round robin.
    RoundRobin,
    /// Fewest streams in flight per unit of weight.
    LeastOutstanding,
    /// Weighted rendezvous hashing on `hash-on`: one key stays on one origin while it is healthy.
    Hash,
    /// A balancer plugin decides.
    Plugin,
}

/// What `hash` steering hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum HashKey {
    ClientIp,
    Header(HeaderName),
    Cookie(String),
}

impl TryFrom<String> for HashKey {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if text == "client-ip" {
            return Ok(HashKey::ClientIp);
        }
        if let Some(name) = text.strip_prefix("header:") {
            return HeaderName::try_from(name)
                .map(HashKey::Header)
                .map_err(|_| format!("{name:?} is not a header name"));
        }
        if let Some(name) = text.strip_prefix("cookie:")
            && !name.is_empty()
            && name.len() <= 256
            && name.bytes().all(|b| b.is_ascii_graphic() && !b"=;,".contains(&b))
        {
            return Ok(HashKey::Cookie(name.to_owned()));
        }
        Err(format!(
            "hash-on {text:?}: expected client-ip, header:NAME or cookie:NAME"
        ))
    }
}

impl From<HashKey> for String {
    fn from(key: HashKey) -> String {
        match key {
            HashKey::ClientIp => "client-ip".into(),
            HashKey::Header(name) => format!("header:{name}"),
            HashKey::Cookie(name) => format!("cookie:{name}"),
        }
    }
}

/// An active health check: a request sent through the tunnel (so the connector's ingress rules
/// apply) every `interval-secs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Monitor {
    #[serde(default, rename = "type")]
    pub kind: MonitorType,
    #[serde(default = "default_method")]
    pub method: String,
    #[serde(default = "default_path")]
    pub path: String,
    /// Status codes that count as healthy: `200`, `200-299`, `2xx`, comma-separated.
    #[serde(default = "default_codes")]
    pub expected_codes: String,
    /// The response body must contain this text (the first 64 KiB are read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_body: Option<String>,
    /// Host header of the probe; by default a hostname routed to the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Consecutive passing probes that bring an origin back.
    #[serde(default = "default_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failing probes that take an origin out.
    #[serde(default = "default_threshold")]
    pub unhealthy_threshold: u32,
}

impl Default for Monitor {
    fn default() -> Self {
        Self {
            kind: MonitorType::Http,
            method: default_method(),
            path: default_path(),
            expected_codes: default_codes(),
            expected_body: None,
            host: None,
            interval_secs: default_interval(),
            timeout_secs: default_timeout(),
            healthy_threshold: default_threshold(),
            unhealthy_threshold: default_threshold(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MonitorType {
    #[default]
    Http,
    Https,
}

fn default_method() -> String {
    "GET".into()
}
fn default_path() -> String {
    "/".into()
}
fn default_codes() -> String {
    "2xx".into()
}
fn default_interval() -> u64 {
    15
}
fn default_timeout() -> u64 {
    5
}
fn default_threshold() -> u32 {
    2
}

impl Monitor {
    /// Whether `status` is one of `expected-codes` (validated when the pool was accepted).
    pub fn expects(&self, status: StatusCode) -> bool {
        parse_codes(&self.expected_codes).is_ok_and(|ranges| ranges.iter().any(|r| r.contains(&status.as_u16())))
    }

    fn validate(&self) -> Result<(), String> {
        if http::Method::from_bytes(self.method.as_bytes()).is_err() || self.method.len() > 32 {
            return Err(format!("monitor.method {:?} is not an HTTP method", self.method));
        }
        if !self.path.starts_with('/')
            || self.path.len() > 2048
            || http::uri::PathAndQuery::try_from(self.path.as_str()).is_err()
        {
            return Err(format!("monitor.path {:?} must be a path starting with '/'", self.path));
        }
        parse_codes(&self.expected_codes)?;
        if self
            .expected_body
            .as_ref()
            .is_some_and(|b| b.is_empty() || b.len() > 1024)
        {
            return Err("monitor.expected-body must be 1 to 1024 bytes".into());
        }
        if self.expected_body.is_some() && self.method.eq_ignore_ascii_case("HEAD") {
            return Err("monitor.expected-body cannot be checked with method HEAD (no body)".into());
        }
        if let Some(host) = &self.host {
            crate::hostnames::validate_hostname(host).map_err(|e| format!("monitor.host: {e}"))?;
        }
        if !(1..=3600).contains(&self.interval_secs) {
            return Err("monitor.interval-secs must be 1 to 3600".into());
        }
        if !(1..=60).contains(&self.timeout_secs) {
            return Err("monitor.timeout-secs must be 1 to 60".into());
        }
        for (name, n) in [
            ("healthy", self.healthy_threshold),
            ("unhealthy", self.unhealthy_threshold),
        ] {
            if !(1..=10).contains(&n) {
                return Err(format!("monitor.{name}-threshold must be 1 to 10"));
            }
        }
        Ok(())
    }
}

/// `200,301-302,2xx` → inclusive ranges.
fn parse_codes(text: &str) -> Result<Vec<std::ops::RangeInclusive<u16>>, String> {
    let bad = || format!("monitor.expected-codes {text:?}: expected codes like 200, 200-299 or 2xx, comma-separated");
    let code = |s: &str| s.trim().parse::<u16>().ok().filter(|c| (100..=599).contains(c));
    let mut ranges = Vec::new();
    for part in text.split(',').map(str::trim) {
        let range = if let Some(class) = part.strip_suffix("xx") {
            let c = class
                .parse::<u16>()
                .ok()
                .filter(|c| (1..=5).contains(c))
                .ok_or_else(bad)?;
            c * 100..=c * 100 + 99
        } else if let Some((lo, hi)) = part.split_once('-') {
            let (lo, hi) = (code(lo).ok_or_else(bad)?, code(hi).ok_or_else(bad)?);
            if lo > hi {
                return Err(bad());
            }
            lo..=hi
        } else {
            let c = code(part).ok_or_else(bad)?;
            c..=c
        };
        ranges.push(range);
    }
    if ranges.is_empty() || ranges.len() > 32 {
        return Err(bad());
    }
    Ok(ranges)
}

impl<T> PoolSpec<T> {
    /// Resolve each origin's tunnel reference (stops at the first that does not resolve).
    pub fn resolve<U, E>(self, mut f: impl FnMut(&T) -> Result<U, E>) -> Result<PoolSpec<U>, E> {
        let mut origins = Vec::with_capacity(self.origins.len());
        for o in self.origins {
            origins.push(PoolOrigin {
                tunnel: f(&o.tunnel)?,
                weight: o.weight,
                enabled: o.enabled,
            });
        }
        Ok(PoolSpec {
            origins,
            steering: self.steering,
            hash_on: self.hash_on,
            balancer: self.balancer,
            monitor: self.monitor,
            fallback: self.fallback,
            affinity_ttl_secs: self.affinity_ttl_secs,
        })
    }
}

impl PoolSpec<TunnelId> {
    /// Check limits and consistency; the message names the field to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.origins.len() > MAX_ORIGINS_PER_POOL {
            return Err(format!("a pool has at most {MAX_ORIGINS_PER_POOL} origins"));
        }
        for o in &self.origins {
            if !(1..=MAX_WEIGHT).contains(&o.weight) {
                return Err(format!(
                    "origin {}: weight must be 1 to {MAX_WEIGHT} (disable an origin with enabled: false)",
                    o.tunnel
                ));
            }
            if self.origins.iter().filter(|p| p.tunnel == o.tunnel).count() > 1 {
                return Err(format!("tunnel {} is listed twice", o.tunnel));
            }
        }
        if self.hash_on.is_some() && self.steering != Steering::Hash {
            return Err("hash-on only applies to steering: hash".into());
        }
        match (&self.balancer, self.steering) {
            (None, Steering::Plugin) => return Err("steering: plugin needs a balancer plugin".into()),
            (Some(_), s) if s != Steering::Plugin => return Err("balancer only applies to steering: plugin".into()),
            _ => {}
        }
        if let Some(b) = &self.balancer
            && b.config.len() > crate::plugins::MAX_PLUGIN_CONFIG
        {
            return Err("balancer.config is too long".into());
        }
        if let Some(m) = &self.monitor {
            m.validate()?;
        }
        if self
            .affinity_ttl_secs
            .is_some_and(|t| !(1..=MAX_AFFINITY_TTL_SECS).contains(&t))
        {
            return Err(format!("affinity-ttl-secs must be 1 to {MAX_AFFINITY_TTL_SECS}"));
        }
        Ok(())
    }
}

/// A pool as `GET /v1/pools/{name}` shows it: its spec, and each origin's health as each edge sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolView {
    pub name: String,
    pub created: u64,
    pub spec: PoolSpec<TunnelId>,
    pub origins: Vec<OriginView>,
    /// For `If-Match` when changing it (single-pool answers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OriginView {
    pub tunnel: TunnelId,
    /// The tunnel's name, when the edge answering knows it.
    pub name: Option<String>,
    pub weight: u32,
    pub enabled: bool,
    /// This edge's view first, then every other edge's last report.
    pub health: Vec<OriginHealthView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OriginHealthView {
    pub edge: String,
    /// `None`: not known (not applied on that edge yet, or its report is stale).
    pub healthy: Option<bool>,
    pub reason: Option<String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn spec_validation_names_the_field() {
        let mut spec: PoolSpec<TunnelId> = PoolSpec::default();
        spec.origins.push(PoolOrigin {
            tunnel: TunnelId(Uuid::from_u128(1)),
            weight: 0,
            enabled: true,
        });
        assert!(spec.validate().unwrap_err().contains("weight"));
        spec.origins[0].weight = 3;
        spec.monitor = Some(Monitor {
            expected_codes: "2xx,301-302,404".into(),
            ..Default::default()
        });
        spec.validate().unwrap();
        let m = spec.monitor.as_ref().unwrap();
        assert!(
            m.expects(StatusCode::NO_CONTENT) && m.expects(StatusCode::FOUND) && !m.expects(StatusCode::BAD_GATEWAY)
        );
        spec.monitor = Some(Monitor {
            expected_codes: "7xx".into(),
            ..Default::default()
        });
        assert!(spec.validate().unwrap_err().contains("expected-codes"));
        spec.monitor = None;
        spec.steering = Steering::Plugin;
        assert!(spec.validate().unwrap_err().contains("balancer"));
        let parsed: PoolSpec<String> =
            serde_json::from_str(r#"{"origins":[{"tunnel":"web"}],"steering":"hash","hash-on":"cookie:sid"}"#).unwrap();
        assert_eq!(parsed.origins[0].weight, 1);
        assert_eq!(parsed.hash_on, Some(HashKey::Cookie("sid".into())));
        assert!(serde_json::from_str::<PoolSpec<String>>(r#"{"hash-on":"nope"}"#).is_err());
    }
}
