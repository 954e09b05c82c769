//! Fixed-window counters per client address: API authentication failures, tunnel registrations.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

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

/// Addresses tracked before old windows are pruned (bounds memory under a spray of sources).
const MAX_TRACKED: usize = 100_000;

pub struct WindowLimiter {
    limit: u32,
    window: Duration,
    counts: DashMap<IpAddr, (Instant, u32)>,
}

impl WindowLimiter {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            counts: DashMap::new(),
        }
    }

    /// Whether `ip` is over its limit in the current window (without counting).
    pub fn is_limited(&self, ip: IpAddr) -> bool {
        self.counts
            .get(&ip)
            .is_some_and(|e| e.0.elapsed() < self.window && e.1 >= self.limit)
    }

    /// Count one event for `ip`; returns whether it is still within the limit.
    pub fn hit(&self, ip: IpAddr) -> bool {
        if self.counts.len() > MAX_TRACKED {
            self.counts.retain(|_, (start, _)| start.elapsed() < self.window);
        }
        let mut entry = self.counts.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= self.window {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
        entry.1 <= self.limit
    }

    /// How long until `ip`'s window resets.
    pub fn retry_after(&self, ip: IpAddr) -> Duration {
        self.counts
            .get(&ip)
            .map_or(Duration::ZERO, |e| self.window.saturating_sub(e.0.elapsed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_address_and_window() {
        let limiter = WindowLimiter::new(3, Duration::from_millis(200));
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        assert!((0..3).all(|_| limiter.hit(a)));
        assert!(!limiter.hit(a));
        assert!(limiter.is_limited(a));
        assert!(limiter.hit(b), "another address has its own budget");
        std::thread::sleep(Duration::from_millis(250));
        assert!(!limiter.is_limited(a));
        assert!(limiter.hit(a), "a new window starts afresh");
    }
}
