//! The circuit breaker of one plugin: stop running a plugin that fails for everyone, without
//! letting a visitor who makes it fail on purpose take it down for the others.
//!
//! A breaker counts calls and failures over a window of [`WINDOW`]. It trips when, in the current
//! window, at least [`MIN_CALLS`] calls ran, at least [`TRIP_RATE_PERCENT`] % of them failed, and
//! the failures came from at least [`MIN_SOURCES`] client networks (an IPv4 address, an IPv6
//! /64): crafted requests from one source, or mixed with the normal traffic of others, never trip
//! it. While tripped, calls fail without running the plugin, except one probe every
//! [`PROBE_EVERY`]; a probe that succeeds closes the breaker at once.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::rate_limit::network;

pub const WINDOW: Duration = Duration::from_secs(10);
pub const MIN_CALLS: u32 = 20;
pub const TRIP_RATE_PERCENT: u32 = 90;
pub const MIN_SOURCES: usize = 3;
pub const PROBE_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, Default)]
pub struct Breaker(Mutex<State>);

#[derive(Debug)]
struct State {
    window_start: Instant,
    calls: u32,
    failures: u32,
    /// Distinct client networks that saw a failure in this window (at most [`MIN_SOURCES`]).
    sources: Vec<u64>,
    /// Tripped since, and when the last probe was let through.
    tripped: Option<(Instant, Instant)>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            window_start: Instant::now(),
            calls: 0,
            failures: 0,
            sources: Vec::new(),
            tripped: None,
        }
    }
}

impl Breaker {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a call may run now; `Err` says why not (tripped, and not this call's turn to probe).
    pub fn admit(&self, now: Instant) -> Result<(), String> {
        let mut state = self.state();
        let Some((since, last_probe)) = state.tripped else {
            return Ok(());
        };
        if now.saturating_duration_since(last_probe) >= PROBE_EVERY {
            state.tripped = Some((since, now));
            return Ok(());
        }
        Err(format!(
            "tripped {:?} ago: it failed for most calls from several clients; a call every {PROBE_EVERY:?} checks whether it works again",
            now.saturating_duration_since(since)
        ))
    }

    /// Count a call that ran for a client at `source`; `true` when this failure tripped it.
    pub fn record(&self, ok: bool, source: IpAddr, now: Instant) -> bool {
        let mut state = self.state();
        if ok && state.tripped.take().is_some() {
            *state = State::default();
        }
        if now.saturating_duration_since(state.window_start) >= WINDOW {
            let tripped = state.tripped;
            *state = State {
                window_start: now,
                tripped,
                ..State::default()
            };
        }
        state.calls = state.calls.saturating_add(1);
        if ok {
            return false;
        }
        state.failures = state.failures.saturating_add(1);
        let net = network(source);
        if state.sources.len() < MIN_SOURCES && !state.sources.contains(&net) {
            state.sources.push(net);
        }
        let trips = state.tripped.is_none()
            && state.calls >= MIN_CALLS
            && state.failures.saturating_mul(100) >= state.calls.saturating_mul(TRIP_RATE_PERCENT)
            && state.sources.len() >= MIN_SOURCES;
        if trips {
            state.tripped = Some((now, now));
        }
        trips
    }

    pub fn is_tripped(&self) -> bool {
        self.state().tripped.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    /// One visitor's crafted failures, alone or among the normal calls of others, never trip it.
    #[test]
    fn one_source_or_a_minority_of_failures_never_trips() {
        let breaker = Breaker::default();
        let now = Instant::now();
        for _ in 0..200 {
            assert!(!breaker.record(false, ip(1), now));
        }
        assert!(!breaker.is_tripped(), "one source");
        let breaker = Breaker::default();
        for i in 0..200 {
            breaker.record(i % 3 != 0, ip((i % 7) as u8), now);
        }
        assert!(!breaker.is_tripped(), "a third of the calls fail");
    }

    /// A plugin that fails for everyone trips; probes let one call through now and then, and
    /// the first that succeeds closes it.
    #[test]
    fn failing_for_everyone_trips_and_a_good_probe_closes_it() {
        let breaker = Breaker::default();
        let now = Instant::now();
        let tripped = (0..MIN_CALLS).map(|i| breaker.record(false, ip((i % 4) as u8), now));
        assert!(tripped.last().unwrap_or(false));
        assert!(breaker.admit(now).is_err(), "no call right after tripping");
        let later = now + PROBE_EVERY;
        assert!(breaker.admit(later).is_ok(), "a probe");
        assert!(breaker.admit(later).is_err(), "one probe at a time");
        breaker.record(true, ip(9), later);
        assert!(!breaker.is_tripped());
        assert!(breaker.admit(later).is_ok());
    }
}
