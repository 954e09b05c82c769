//! Instances kept warm for bindings that opt into reuse (`reuse: N`): an instance serves up to
//! N calls, then is dropped; idle ones are bounded per binding and for the whole edge.

use super::chain::arm_deadline;
use super::*;

/// An instance kept between requests of one reuse-mode binding.
pub(super) struct Warm<E = Exports> {
    pub(super) store: Store<HostState>,
    pub(super) exports: E,
    pub(super) served: u32,
}

/// What a kept instance exports: a binding's plugin is of one world, so a binding only ever
/// keeps instances of that one.
pub(super) enum Exports {
    Hooks(bindings::Plugin),
    Balancer(balancer_bindings::Balancer),
}

impl Exports {
    pub(super) fn hooks(self) -> Option<bindings::Plugin> {
        match self {
            Self::Hooks(hooks) => Some(hooks),
            Self::Balancer(_) => None,
        }
    }

    pub(super) fn balancer(self) -> Option<balancer_bindings::Balancer> {
        match self {
            Self::Balancer(balancer) => Some(balancer),
            Self::Hooks(_) => None,
        }
    }
}

/// The idle instances of one binding, at most [`MAX_IDLE_PER_BINDING`] (so one busy route cannot
/// take the whole global cap). Clones share them; a binding read anew (any route-table rebuild)
/// starts with none.
#[derive(Clone, Default)]
pub struct WarmInstances(Arc<std::sync::Mutex<Vec<(Warm, IdleSlot)>>>);

/// One unit of the global idle-instance cap, given back when the idle instance leaves the list
/// (taken for a call, or dropped with its binding).
pub(super) struct IdleSlot(Arc<AtomicUsize>);

impl IdleSlot {
    pub(super) fn acquire(idle: &Arc<AtomicUsize>) -> Option<Self> {
        if idle.fetch_add(1, Ordering::Relaxed) < MAX_WARM_INSTANCES {
            Some(Self(idle.clone()))
        } else {
            idle.fetch_sub(1, Ordering::Relaxed);
            None
        }
    }
}

impl Drop for IdleSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl WarmInstances {
    pub(super) fn take(&self) -> Option<Warm> {
        self.0.lock().ok()?.pop().map(|(warm, _slot)| warm)
    }

    /// Keep `warm` for the next request, unless a cap is reached (then it is dropped).
    pub(super) fn put(&self, warm: Warm, idle: &Arc<AtomicUsize>) {
        let Ok(mut list) = self.0.lock() else { return };
        if list.len() < MAX_IDLE_PER_BINDING
            && let Some(slot) = IdleSlot::acquire(idle)
        {
            list.push((warm, slot));
        }
    }
}

impl std::fmt::Debug for WarmInstances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle = self.0.lock().map_or(0, |list| list.len());
        write!(f, "WarmInstances({idle} idle)")
    }
}

/// Idle instances are a cache, not part of what a binding is.
impl PartialEq for WarmInstances {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for WarmInstances {}

impl PluginHost {
    /// Keep an instance of `binding` that has served one more call, unless that was its last.
    pub(super) fn keep_warm(&self, binding: &Binding, store: Store<HostState>, exports: Exports, served: u32) {
        let served = served + 1;
        if served < binding.reuse.min(MAX_REUSE) {
            binding.warm.put(Warm { store, exports, served }, &self.warm_idle);
        }
    }
}

/// A kept instance of a reuse-mode `binding` with the exports `pick` takes, armed with the
/// binding's deadline.
pub(super) fn warm<E>(binding: &Binding, pick: impl FnOnce(Exports) -> Option<E>) -> Option<Warm<E>> {
    if binding.reuse == 0 {
        return None;
    }
    let Warm {
        mut store,
        exports,
        served,
    } = binding.warm.take()?;
    arm_deadline(&mut store, binding);
    Some(Warm {
        store,
        exports: pick(exports)?,
        served,
    })
}
