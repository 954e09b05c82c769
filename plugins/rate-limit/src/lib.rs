//! `rate-limit`: a token bucket per client (IP address or a header's value), kept in the edge's
//! key-value store so that it holds across requests and instances. Over the limit: `429` with
//! `Retry-After`. See README.md for the configuration.
//!
//! The bucket is stored as its "theoretical arrival time" (GCRA): one number per client, updated
//! with compare-and-swap so that concurrent requests of one client cannot both take the last
//! token.

use std::time::{SystemTime, UNIX_EPOCH};

use burrow_plugin::{Action, Level, Plugin, Request, kv};

#[derive(serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Config {
    /// Tokens added per `per-secs` (the sustained rate).
    rate: u32,
    #[serde(default = "one")]
    per_secs: u32,
    /// Requests a client may make at once (the bucket's size). Default: `rate`.
    burst: Option<u32>,
    /// `client-ip` (default) or `header:NAME`.
    #[serde(default = "default_key")]
    key: String,
}

fn one() -> u32 {
    1
}

fn default_key() -> String {
    "client-ip".into()
}

/// Attempts before giving up on a contended bucket (and letting the request through).
const CAS_ATTEMPTS: usize = 8;

struct RateLimit;

impl Plugin for RateLimit {
    fn on_request_headers(req: &Request) -> Action {
        let config: Config = match burrow_plugin::config::<Config>() {
            Ok(c) if c.rate > 0 && c.per_secs > 0 && c.burst != Some(0) => c,
            Ok(_) => return misconfigured("rate, per-secs and burst must be at least 1"),
            Err(e) => return misconfigured(&e),
        };
        let client = match config.key.split_once(':') {
            None if config.key == "client-ip" => client_network(&req.client_addr()),
            // Requests without the header share one bucket.
            Some(("header", name)) => req.header_str(name).unwrap_or_default(),
            _ => return misconfigured("key must be client-ip or header:NAME"),
        };
        let interval_us = u64::from(config.per_secs) * 1_000_000 / u64::from(config.rate);
        let burst = u64::from(config.burst.unwrap_or(config.rate));
        // The store keeps an entry at most 24 hours: a longer bucket would be forgotten early.
        if interval_us.max(1).saturating_mul(burst) > MAX_WINDOW_US {
            return misconfigured("burst x per-secs / rate must be at most 24 hours");
        }
        // One bucket per route and client: routes of one account share the store.
        match take_token(&bucket_key(&req.route(), &client), interval_us.max(1), burst) {
            Ok(None) => Action::Continue,
            Ok(Some(retry_after_secs)) => {
                burrow_plugin::metrics::counter_add("limited", 1);
                burrow_plugin::respond_with(
                    429,
                    vec![
                        ("content-type".into(), b"text/plain; charset=utf-8".to_vec()),
                        ("retry-after".into(), retry_after_secs.to_string().into_bytes()),
                    ],
                    "too many requests",
                )
            }
            Err(e) => {
                // A full or contended store must not lock everyone out: let it through.
                burrow_plugin::metrics::counter_add("not_applied", 1);
                burrow_plugin::log(Level::Warn, &format!("rate limit not applied: {e}"));
                Action::Continue
            }
        }
    }
}

/// The longest bucket the store can hold (its TTL limit), in microseconds.
const MAX_WINDOW_US: u64 = 24 * 3600 * 1_000_000;

/// An IPv4 address as is; an IPv6 address by its /64, since one client usually holds a whole
/// /64 and could otherwise take a fresh bucket per address (and fill the store).
fn client_network(addr: &str) -> String {
    match addr.parse::<std::net::Ipv6Addr>() {
        Ok(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        _ => addr.to_owned(),
    }
}

/// Take one token from the bucket under `key`: `None` if there was one, else the seconds until
/// there will be.
fn take_token(key: &str, interval_us: u64, burst: u64) -> Result<Option<u64>, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_micros() as u64;
    let window = interval_us.saturating_mul(burst);
    for _ in 0..CAS_ATTEMPTS {
        let stored = kv::get(key);
        let tat = stored
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
            .map_or(now, |t| t.max(now));
        let next = tat + interval_us;
        if next - now > window {
            return Ok(Some((next - now - window).div_ceil(1_000_000).max(1)));
        }
        // The entry is useless once the bucket is full again.
        let ttl = u32::try_from((next - now).div_ceil(1000)).unwrap_or(u32::MAX);
        if kv::compare_and_swap(key, stored.as_deref(), next.to_string().as_bytes(), ttl)? {
            return Ok(None);
        }
    }
    Err("the bucket was contended; try again".into())
}

/// The store's key for a client's bucket. Long values (a header can be kilobytes) are hashed to
/// fit the store's key limit, rather than failing the write and so escaping the limit.
fn bucket_key(route: &str, client: &str) -> String {
    let key = format!("{route} {client}");
    if key.len() <= 200 {
        return key;
    }
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&key, &mut hasher);
    format!("h:{:016x}", std::hash::Hasher::finish(&hasher))
}

fn misconfigured(reason: &str) -> Action {
    burrow_plugin::log(Level::Error, &format!("bad config: {reason}"));
    burrow_plugin::respond(500, "plugin misconfigured")
}

burrow_plugin::export_plugin!(RateLimit);
