//! Health of pool origins as this edge sees it. Three signals, one verdict per (pool, origin):
//!
//! - **connected**: a tunnel with no live connection is down at once (the registry says so);
//! - **active**: the pool's monitor (run by the control plane's health monitor), sent *through
//!   the tunnel*; `unhealthy-threshold` failures in a row take the origin out, `healthy-threshold`
//!   passes bring it back;
//! - **passive**: [`PASSIVE_FAILURES`] failed requests in a row (tunnel or connection errors,
//!   502/503/504) eject the origin for [`PASSIVE_EJECTION`].
//!
//! The state lives in [`OriginHealth`] objects that table swaps carry over.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Failed requests in a row that eject an origin.
pub const PASSIVE_FAILURES: u32 = 5;
/// How long a passively ejected origin stays out (then it gets traffic again).
pub const PASSIVE_EJECTION: Duration = Duration::from_secs(10);

static CLOCK: LazyLock<Instant> = LazyLock::new(Instant::now);

pub(crate) fn now_ms() -> u64 {
    CLOCK.elapsed().as_millis() as u64
}

/// The health state of one origin of one pool.
#[derive(Debug, Default)]
pub struct OriginHealth {
    /// The monitor's verdict; origins start up so that a new pool serves at once.
    probe_down: AtomicBool,
    probe_passes: AtomicU32,
    probe_failures: AtomicU32,
    pub(crate) probing: AtomicBool,
    pub(crate) next_probe_ms: AtomicU64,
    passive_failures: AtomicU32,
    /// Passive ejection ends at this time (ms on [`CLOCK`]); 0 = not ejected.
    ejected_until_ms: AtomicU64,
    /// Smoothed time to response head in µs (EWMA, α = 1/5); 0 until measured.
    latency_us: AtomicU64,
    /// Last reported verdict: 0 none yet, 1 up, 2 down.
    pub(crate) reported: AtomicU8,
    /// Why the last probe failed, for `burrow pool show`.
    last_error: Mutex<Option<String>>,
}

impl OriginHealth {
    /// Not taken out by the monitor or by passive ejection (connection state is the registry's).
    pub fn is_up(&self) -> bool {
        if self.probe_down.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until == 0 || now_ms() >= until
    }

    /// Smoothed time to response head in µs; 0 until measured.
    pub fn latency_us(&self) -> u64 {
        self.latency_us.load(Ordering::Relaxed)
    }

    /// The outcome of one proxied request (passive health), and how long its head took.
    pub fn record_request(&self, ok: bool, elapsed: Duration) {
        if ok {
            let sample = (elapsed.as_micros() as u64).max(1);
            let old = self.latency_us.load(Ordering::Relaxed);
            // Racy read-modify-write on purpose: a lost sample does not matter for an estimate.
            let new = if old == 0 { sample } else { (old * 4 + sample) / 5 };
            self.latency_us.store(new, Ordering::Relaxed);
            if self.passive_failures.load(Ordering::Relaxed) != 0 {
                self.passive_failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        if self.passive_failures.fetch_add(1, Ordering::Relaxed) + 1 >= PASSIVE_FAILURES {
            self.passive_failures.store(0, Ordering::Relaxed);
            let until = now_ms() + PASSIVE_EJECTION.as_millis() as u64;
            self.ejected_until_ms.store(until, Ordering::Relaxed);
        }
    }

    pub(crate) fn forget_passive(&self) {
        self.passive_failures.store(0, Ordering::Relaxed);
        self.ejected_until_ms.store(0, Ordering::Relaxed);
    }

    /// The outcome of one monitor probe.
    pub(crate) fn record_probe(&self, result: Result<(), String>, healthy_threshold: u32, unhealthy_threshold: u32) {
        match result {
            Ok(()) => {
                self.probe_failures.store(0, Ordering::Relaxed);
                if self.probe_passes.fetch_add(1, Ordering::Relaxed) + 1 >= healthy_threshold {
                    self.probe_down.store(false, Ordering::Relaxed);
                    self.set_error(None);
                }
            }
            Err(reason) => {
                self.probe_passes.store(0, Ordering::Relaxed);
                if self.probe_failures.fetch_add(1, Ordering::Relaxed) + 1 >= unhealthy_threshold {
                    self.probe_down.store(true, Ordering::Relaxed);
                }
                self.set_error(Some(reason));
            }
        }
    }

    fn set_error(&self, error: Option<String>) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = error;
        }
    }

    /// Why the origin is down, in words (`None` when it is up).
    pub fn reason(&self, enabled: bool, connected: bool) -> Option<String> {
        if !enabled {
            return Some("disabled".into());
        }
        if !connected {
            return Some("tunnel has no live connection".into());
        }
        if self.probe_down.load(Ordering::Relaxed) {
            let last = self.last_error.lock().ok().and_then(|e| e.clone());
            return Some(format!("monitor failing: {}", last.unwrap_or_default()));
        }
        if !self.is_up() {
            return Some(format!("ejected after {PASSIVE_FAILURES} failed requests in a row"));
        }
        None
    }

    #[cfg(test)]
    pub fn force_down_for_test(&self) {
        self.probe_down.store(true, Ordering::Relaxed);
    }
}
