//! Limits per client network and per API token: tunnel registrations, failed API
//! authentications. Counting is governor's (GCRA, a bucket that refills steadily); keys are
//! networks, not addresses ([`network`]), so one IPv6 host cannot walk around a limit.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// The network a client address counts as for limits: an IPv4 address, or an IPv6 /64 (one
/// IPv6 host may hold a whole /64, so counting single addresses would limit nothing).
pub fn network(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u64::from(u32::from(v4)),
            None => ((u128::from(v6) >> 64) as u64) | (1 << 63),
        },
    }
}

/// At most `per_minute` events per key, refilled steadily (a burst of that many is allowed).
pub struct Limiter {
    limiter: DefaultKeyedRateLimiter<u64>,
    clock: DefaultClock,
}

impl Limiter {
    pub fn per_minute(per_minute: u32) -> Self {
        let quota = Quota::per_minute(NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN));
        Self {
            limiter: RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
        }
    }

    /// Count one event for `key`: `Err(wait)` when it is over the limit (until the next fits).
    pub fn hit(&self, key: u64) -> Result<(), Duration> {
        self.limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forget keys whose bucket is full again (called now and then, not per event).
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

/// Failed API authentications, counted per client network and per token id. A network over
/// its limit gets 429 for its failures only: valid tokens behind the same address (a proxy in
/// front of the API) keep working. A token id over its limit is refused before its secret is
/// checked until it cools down: someone is guessing that token's secret.
pub struct AuthFailures {
    networks: Limiter,
    tokens: Limiter,
    /// Token ids refused until the given time.
    cooling: DashMap<u64, Instant>,
}

/// Failed authentications a network or a token id may have per minute.
pub const AUTH_FAILURES_PER_MINUTE: u32 = 10;
/// Token ids cooling down at once (a spray of random ids cannot grow the map past this).
const MAX_COOLING: usize = 100_000;

impl Default for AuthFailures {
    fn default() -> Self {
        Self {
            networks: Limiter::per_minute(AUTH_FAILURES_PER_MINUTE),
            tokens: Limiter::per_minute(AUTH_FAILURES_PER_MINUTE),
            cooling: DashMap::new(),
        }
    }
}

/// A key for a token id (the public `burrow_<id>_` part).
fn token_key(token_id: &str) -> u64 {
    u64::from_str_radix(token_id, 16).unwrap_or(0)
}

impl AuthFailures {
    /// `Some(wait)` when `token_id` is cooling down: refuse it without checking the secret.
    pub fn cooling(&self, token_id: Option<&str>) -> Option<Duration> {
        let until = *self.cooling.get(&token_key(token_id?))?;
        until.checked_duration_since(Instant::now())
    }

    /// Count a failure from `client` presenting `token_id`; `Some(wait)` when it went over a
    /// limit (answer 429 instead of 401).
    pub fn failed(&self, client: IpAddr, token_id: Option<&str>) -> Option<Duration> {
        let by_network = self.networks.hit(network(client)).err();
        let by_token = token_id.and_then(|id| {
            let wait = self.tokens.hit(token_key(id)).err()?;
            if self.cooling.len() < MAX_COOLING {
                self.cooling.insert(token_key(id), Instant::now() + wait);
            }
            Some(wait)
        });
        by_network.max(by_token)
    }

    /// Forget what no longer limits anyone.
    pub fn prune(&self) {
        self.networks.prune();
        self.tokens.prune();
        let now = Instant::now();
        self.cooling.retain(|_, until| *until > now);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn limits_per_network() {
        let limiter = Limiter::per_minute(3);
        let (a, b) = (network([10, 0, 0, 1].into()), network([10, 0, 0, 2].into()));
        assert!((0..3).all(|_| limiter.hit(a).is_ok()));
        let wait = limiter.hit(a).unwrap_err();
        assert!(
            wait > Duration::from_secs(10) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(limiter.hit(b).is_ok(), "another address has its own budget");
    }

    #[test]
    fn an_ipv6_host_counts_as_its_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap_or([0, 0, 0, 0].into());
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap_or([0, 0, 0, 0].into());
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap_or([0, 0, 0, 0].into());
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap_or([0, 0, 0, 0].into());
        assert_eq!(network(a), network(b));
        assert_ne!(network(a), network(c));
        assert_eq!(network(mapped), network([10, 0, 0, 1].into()));
    }

    /// A network's failures never refuse a token id that has none; a guessed token id cools down.
    #[test]
    fn failures_cool_a_token_id_down_not_its_network() {
        let failures = AuthFailures::default();
        let proxy: IpAddr = [10, 0, 0, 1].into();
        for i in 0..AUTH_FAILURES_PER_MINUTE {
            assert!(failures.failed(proxy, Some(&format!("{i:016x}"))).is_none());
        }
        assert!(
            failures.failed(proxy, Some("00000000000000ff")).is_some(),
            "the network is over"
        );
        assert!(
            failures.cooling(Some("00000000000000aa")).is_none(),
            "other token ids are not refused"
        );
        for _ in 0..AUTH_FAILURES_PER_MINUTE {
            failures.failed([10, 9, 9, 9].into(), Some("0123456789abcdef"));
        }
        assert!(
            failures
                .failed([10, 9, 9, 8].into(), Some("0123456789abcdef"))
                .is_some()
        );
        assert!(
            failures.cooling(Some("0123456789abcdef")).is_some(),
            "a guessed token id cools down"
        );
    }
}
