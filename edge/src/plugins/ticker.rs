//! The epoch ticker behind plugin deadlines: a thread that advances the engine's epoch every
//! millisecond while plugin calls run, and parks once none has run for a while.
//!
//! Ticking unconditionally costs an edge a thousand wake-ups a second whether or not its plugins
//! are used; on a loaded two-core machine that preemption cost the origin next to it ~6 % of its
//! throughput (docs/performance.md). Parking only after [`IDLE_TICKS`] quiet ticks keeps back-to-
//! back requests from paying a wake-up (a syscall) each.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::Thread;
use std::time::Duration;

use wasmtime::Engine;

/// One epoch: the unit of plugin deadlines.
pub const TICK: Duration = Duration::from_millis(1);
/// Quiet ticks before the ticker parks.
const IDLE_TICKS: u32 = 100;

/// Owns the ticker thread; stops it when dropped.
pub struct EpochTicker {
    shared: Arc<Shared>,
    thread: Thread,
}

struct Shared {
    /// Plugin calls running now.
    running: AtomicUsize,
    /// The ticker is parked (or about to park): a call that starts must unpark it.
    parked: AtomicBool,
    stop: AtomicBool,
}

/// Held for the length of a plugin call: the epoch advances while any is held.
pub struct Running(Arc<Shared>);

impl EpochTicker {
    pub fn start(engine: Engine) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            running: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let state = shared.clone();
        let handle = std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || tick(&engine, &state))?;
        Ok(Self {
            shared,
            thread: handle.thread().clone(),
        })
    }

    /// Mark a call as running until the guard is dropped, waking the ticker if it sleeps.
    pub fn running(&self) -> Running {
        self.shared.running.fetch_add(1, Ordering::SeqCst);
        if self.shared.parked.swap(false, Ordering::SeqCst) {
            self.thread.unpark();
        }
        Running(self.shared.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.thread.unpark();
    }
}

fn tick(engine: &Engine, shared: &Shared) {
    let mut quiet = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(TICK);
        engine.increment_epoch();
        quiet = if shared.running.load(Ordering::SeqCst) == 0 {
            quiet + 1
        } else {
            0
        };
        if quiet >= IDLE_TICKS {
            // Announce the park before the last look: a call starting from here on either is
            // seen below or sees `parked` and unparks (a token that makes `park` return at once).
            shared.parked.store(true, Ordering::SeqCst);
            if shared.running.load(Ordering::SeqCst) == 0 && !shared.stop.load(Ordering::Relaxed) {
                std::thread::park();
            }
            shared.parked.store(false, Ordering::SeqCst);
            quiet = 0;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        Engine::new(&config).unwrap()
    }

    /// Waits until the ticker has parked (its `parked` flag set and the epoch no longer moving).
    fn wait_parked(ticker: &EpochTicker) {
        for _ in 0..2000 {
            if ticker.shared.parked.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(TICK);
        }
        panic!("the ticker never parked");
    }

    #[test]
    fn parks_when_idle_and_ticks_again_for_a_call() {
        let ticker = EpochTicker::start(engine()).unwrap();
        wait_parked(&ticker);
        let call = ticker.running();
        assert!(
            !ticker.shared.parked.load(Ordering::SeqCst),
            "a starting call wakes the ticker"
        );
        // While the call runs the ticker never parks, however long the call takes.
        std::thread::sleep(TICK * (IDLE_TICKS * 2));
        assert!(!ticker.shared.parked.load(Ordering::SeqCst));
        drop(call);
        wait_parked(&ticker);
    }
}
