//! The one retry policy: exponential delays with full jitter, capped. Every loop that retries
//! (reconnects, store watches, control-plane follows, plugin loads) takes its delays from a
//! [`Backoff`], so they all behave alike and a test can make them short.

use std::time::Duration;

/// Delays that start at `first`, double per attempt up to `max`, each a random fraction of that
/// (full jitter: many clients retrying after one outage spread out instead of arriving together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self { first, max }
    }

    /// The cap of attempt `attempt` (0-based): `first × 2^attempt`, at most `max`.
    pub fn cap(&self, attempt: u32) -> Duration {
        self.first.saturating_mul(1u32 << attempt.min(20)).min(self.max)
    }

    /// The delay before retry number `attempt`: a random duration up to its cap.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.cap(attempt).mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(3));
        assert_eq!(backoff.cap(0), Duration::from_millis(100));
        assert_eq!(backoff.cap(3), Duration::from_millis(800));
        assert_eq!(backoff.cap(10), Duration::from_secs(3));
        for attempt in [0, 5, 40, u32::MAX] {
            assert!(backoff.delay(attempt) <= backoff.cap(attempt));
        }
    }
}
