//! The key-value store plugins import (`burrow:plugin/kv`): one space per plugin and account on
//! this edge, shared by every call, bounded in keys, bytes and time. Kept in memory only: a
//! restart or another edge starts empty, which suits what it is for (rate limits, caches).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use burrow_protocol::AccountId;

pub const MAX_KEY: usize = 256;
pub const MAX_VALUE: usize = 4096;
pub const MAX_ENTRIES: usize = 50_000;
pub const MAX_BYTES: usize = 4 * 1024 * 1024;
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// All spaces of the edge together: many accounts each filling theirs cannot exhaust memory.
pub const MAX_TOTAL_BYTES: usize = 256 * 1024 * 1024;
/// What an entry costs besides its key and value, so that many tiny entries are bounded too.
const ENTRY_OVERHEAD: usize = 64;

/// Every space of the edge, created on first use.
#[derive(Default)]
pub struct KvStores {
    spaces: DashMap<(AccountId, Arc<str>), Arc<Mutex<Space>>>,
    /// Bytes held by all spaces, bounded by [`MAX_TOTAL_BYTES`].
    total: Arc<AtomicUsize>,
}

impl KvStores {
    pub fn space(&self, account: AccountId, plugin: &Arc<str>) -> Arc<Mutex<Space>> {
        let total = &self.total;
        self.spaces
            .entry((account, plugin.clone()))
            .or_insert_with(|| Arc::new(Mutex::new(Space::new(total.clone()))))
            .clone()
    }
}

struct Entry {
    value: Vec<u8>,
    expires: Instant,
}

impl Entry {
    fn cost(key: &str, value: &[u8]) -> usize {
        key.len() + value.len() + ENTRY_OVERHEAD
    }
}

/// One plugin's entries for one account.
pub struct Space {
    entries: HashMap<String, Entry>,
    bytes: usize,
    /// The edge-wide count this space's bytes are part of.
    total: Arc<AtomicUsize>,
    /// When expired entries were last dropped: a full space is swept at most every
    /// [`SWEEP_INTERVAL`], so a flood of writes to a full store does not scan it on every write.
    last_sweep: Option<Instant>,
}

const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

impl Space {
    fn new(total: Arc<AtomicUsize>) -> Self {
        Self {
            entries: HashMap::new(),
            bytes: 0,
            total,
            last_sweep: None,
        }
    }

    pub fn get(&mut self, key: &str, now: Instant) -> Option<Vec<u8>> {
        self.live(key, now).map(|e| e.value.clone())
    }

    pub fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: u32, now: Instant) -> Result<(), String> {
        check(&key, &value)?;
        let expires = now + ttl(ttl_ms);
        self.put(key, value, expires, now)
    }

    pub fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<&[u8]>,
        value: Vec<u8>,
        ttl_ms: u32,
        now: Instant,
    ) -> Result<bool, String> {
        check(&key, &value)?;
        if self.live(&key, now).map(|e| e.value.as_slice()) != expected {
            return Ok(false);
        }
        let expires = now + ttl(ttl_ms);
        self.put(key, value, expires, now).map(|()| true)
    }

    /// Counters are stored as decimal text, so `get` reads them too.
    pub fn increment(&mut self, key: String, delta: i64, ttl_ms: u32, now: Instant) -> Result<i64, String> {
        let (current, expires) = match self.live(&key, now) {
            Some(entry) => {
                let text = std::str::from_utf8(&entry.value).map_err(|_| format!("{key:?} is not a counter"))?;
                let n: i64 = text.parse().map_err(|_| format!("{key:?} is not a counter"))?;
                (n, entry.expires)
            }
            None => (0, now + ttl(ttl_ms)),
        };
        let next = current
            .checked_add(delta)
            .ok_or_else(|| format!("counter {key:?} would overflow"))?;
        check(&key, &[])?;
        self.put(key, next.to_string().into_bytes(), expires, now)?;
        Ok(next)
    }

    pub fn delete(&mut self, key: &str) {
        if let Some(old) = self.entries.remove(key) {
            self.release(Entry::cost(key, &old.value));
        }
    }

    fn release(&mut self, bytes: usize) {
        self.bytes -= bytes;
        self.total.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn live(&self, key: &str, now: Instant) -> Option<&Entry> {
        self.entries.get(key).filter(|e| e.expires > now)
    }

    fn put(&mut self, key: String, value: Vec<u8>, expires: Instant, now: Instant) -> Result<(), String> {
        let cost = Entry::cost(&key, &value);
        let replaced = self.entries.get(&key).map_or(0, |e| Entry::cost(&key, &e.value));
        let fits = |s: &Self| {
            s.bytes - replaced + cost <= MAX_BYTES && s.entries.len() + usize::from(replaced == 0) <= MAX_ENTRIES
        };
        if !fits(self) && self.last_sweep.is_none_or(|t| now.duration_since(t) >= SWEEP_INTERVAL) {
            self.drop_expired(now);
        }
        // Dropping expired entries may have removed the one being replaced.
        let replaced = self.entries.get(&key).map_or(0, |e| Entry::cost(&key, &e.value));
        if self.bytes - replaced + cost > MAX_BYTES || self.entries.len() + usize::from(replaced == 0) > MAX_ENTRIES {
            return Err(format!(
                "the key-value store is full ({MAX_ENTRIES} entries or {MAX_BYTES} bytes per plugin and account)"
            ));
        }
        let grows = cost.saturating_sub(replaced);
        if grows > 0 && self.total.fetch_add(grows, Ordering::Relaxed) + grows > MAX_TOTAL_BYTES {
            self.total.fetch_sub(grows, Ordering::Relaxed);
            return Err(format!(
                "the edge's key-value stores are full ({MAX_TOTAL_BYTES} bytes in all)"
            ));
        }
        self.total.fetch_sub(replaced.saturating_sub(cost), Ordering::Relaxed);
        self.bytes = self.bytes - replaced + cost;
        self.entries.insert(key, Entry { value, expires });
        Ok(())
    }

    fn drop_expired(&mut self, now: Instant) {
        self.last_sweep = Some(now);
        let mut freed = 0;
        self.entries.retain(|key, e| {
            let keep = e.expires > now;
            if !keep {
                freed += Entry::cost(key, &e.value);
            }
            keep
        });
        self.release(freed);
    }
}

fn check(key: &str, value: &[u8]) -> Result<(), String> {
    if key.len() > MAX_KEY {
        return Err(format!("key over {MAX_KEY} bytes"));
    }
    if value.len() > MAX_VALUE {
        return Err(format!("value over {MAX_VALUE} bytes"));
    }
    Ok(())
}

fn ttl(ttl_ms: u32) -> Duration {
    match Duration::from_millis(u64::from(ttl_ms)) {
        Duration::ZERO => MAX_TTL,
        d => d.min(MAX_TTL),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_counters_count() {
        let mut space = Space::new(Arc::default());
        let t0 = Instant::now();
        space.set("a".into(), b"1".to_vec(), 1000, t0).unwrap();
        assert_eq!(space.get("a", t0), Some(b"1".to_vec()));
        assert_eq!(space.get("a", t0 + Duration::from_millis(1001)), None);
        assert_eq!(space.increment("n".into(), 2, 1000, t0), Ok(2));
        assert_eq!(space.increment("n".into(), 3, 5, t0), Ok(5), "the first TTL is kept");
        assert_eq!(space.get("n", t0), Some(b"5".to_vec()));
        assert_eq!(space.increment("n".into(), 1, 1000, t0 + Duration::from_secs(2)), Ok(1));
        space.set("text".into(), b"x".to_vec(), 0, t0).unwrap();
        assert!(space.increment("text".into(), 1, 0, t0).is_err(), "not a number");
    }

    #[test]
    fn compare_and_swap_sees_changes() {
        let mut space = Space::new(Arc::default());
        let now = Instant::now();
        assert_eq!(
            space.compare_and_swap("k".into(), None, b"1".to_vec(), 0, now),
            Ok(true)
        );
        assert_eq!(
            space.compare_and_swap("k".into(), None, b"2".to_vec(), 0, now),
            Ok(false)
        );
        assert_eq!(
            space.compare_and_swap("k".into(), Some(b"1"), b"2".to_vec(), 0, now),
            Ok(true)
        );
        assert_eq!(space.get("k", now), Some(b"2".to_vec()));
    }

    #[test]
    fn a_full_space_refuses_writes_until_entries_expire() {
        let mut space = Space::new(Arc::default());
        let now = Instant::now();
        let value = vec![0u8; MAX_VALUE];
        let fit = MAX_BYTES / Entry::cost("key-00000", &value);
        for i in 0..fit {
            space.set(format!("key-{i:05}"), value.clone(), 1000, now).unwrap();
        }
        let error = space.set("one-more".into(), value.clone(), 1000, now).unwrap_err();
        assert!(error.contains("full"), "{error}");
        // Overwriting an existing key still fits.
        space.set("key-00000".into(), value.clone(), 1000, now).unwrap();
        let later = now + Duration::from_secs(2);
        space.set("one-more".into(), value, 1000, later).unwrap();
        assert_eq!(space.entries.len(), 1, "the expired entries were dropped");
        assert!(space.set("x".repeat(MAX_KEY + 1), Vec::new(), 0, now).is_err());
        assert!(space.set("big".into(), vec![0; MAX_VALUE + 1], 0, now).is_err());
    }

    #[test]
    fn all_spaces_together_are_bounded() {
        let total = Arc::new(AtomicUsize::new(MAX_TOTAL_BYTES - 200));
        let (mut a, mut b) = (Space::new(total.clone()), Space::new(total.clone()));
        let now = Instant::now();
        a.set("k".into(), vec![0; 100], 0, now).unwrap();
        let error = b.set("k".into(), vec![0; 100], 0, now).unwrap_err();
        assert!(error.contains("in all"), "{error}");
        a.delete("k");
        b.set("k".into(), vec![0; 100], 0, now).unwrap();
        assert_eq!(
            total.load(Ordering::Relaxed),
            MAX_TOTAL_BYTES - 200 + Entry::cost("k", &[0; 100])
        );
    }
}
