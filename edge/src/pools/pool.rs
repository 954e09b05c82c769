//! Load-balanced pools of tunnels: how a pool is configured, and which tunnel serves a request.
//!
//! A hostname routed to a pool is spread over the pool's tunnels "as if each tunnel were one
//! origin"; inside the chosen tunnel the registry still picks the least busy connection. The
//! choice, in order: a valid affinity cookie, else the steering policy over the origins that are
//! enabled, connected and healthy ([`crate::pools::health`]); with none left, the fallback pool; with
//! none there either, `503 no_healthy_origin`.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use burrow_protocol::{AccountId, TunnelId};
use http::{HeaderMap, header};

pub use burrow_api::pools::{
    AFFINITY_COOKIE, HashKey, MAX_FALLBACK_DEPTH, MAX_ORIGINS_PER_POOL, MAX_WEIGHT, Monitor, MonitorType, PoolOrigin,
    PoolSpec, Steering,
};

use crate::plugins::binding::Binding;
use crate::plugins::host::Candidate;
use crate::pools::health::OriginHealth;

/// A pool in a route table, with the health state of each origin (carried over table swaps).
#[derive(Debug)]
pub struct Pool {
    pub account: AccountId,
    pub name: String,
    pub spec: PoolSpec<TunnelId>,
    /// The balancer plugin of `plugin` steering, resolved to what it runs.
    pub balancer: Option<Binding>,
    /// Per origin, in `spec.origins` order.
    pub origin_names: Vec<String>,
    pub health: Vec<Arc<OriginHealth>>,
    /// Index of the fallback pool in the same table.
    pub fallback: Option<usize>,
    /// Host of monitor probes when the monitor names none: a hostname routed to the pool.
    pub probe_host: Option<String>,
    /// Rotates round robin, and tie-breaks for least-outstanding.
    next: AtomicUsize,
}

impl Pool {
    pub fn new(
        account: AccountId,
        name: String,
        spec: PoolSpec<TunnelId>,
        origin_names: Vec<String>,
        fallback: Option<usize>,
    ) -> Self {
        let health = spec.origins.iter().map(|_| Arc::new(OriginHealth::default())).collect();
        Self {
            account,
            name,
            spec,
            balancer: None,
            origin_names,
            health,
            fallback,
            probe_host: None,
            next: AtomicUsize::new(rand::random::<u32>() as usize),
        }
    }

    /// Whether origin `i` may take requests now: enabled, connected, not marked down.
    pub fn usable(&self, i: usize, load: &Load<'_>) -> bool {
        self.load_if_usable(i, load).is_some()
    }

    /// Origin `i`'s streams in flight, if it may take requests now.
    fn load_if_usable(&self, i: usize, load: &Load<'_>) -> Option<u64> {
        let origin = &self.spec.origins[i];
        if !origin.enabled || !self.health[i].is_up() {
            return None;
        }
        load(&origin.tunnel).map(|n| n as u64)
    }

    /// What steering needs from the request, read before its headers move into the tunnel head.
    pub fn request_key(&self, headers: &HeaderMap, client: IpAddr) -> RequestKey {
        let pinned = self.spec.affinity_ttl_secs.and_then(|_| {
            cookie(headers, AFFINITY_COOKIE)
                .and_then(|v| uuid::Uuid::try_parse(v).ok())
                .map(TunnelId)
        });
        let hash = (self.spec.steering == Steering::Hash).then(|| match &self.spec.hash_on {
            None | Some(HashKey::ClientIp) => hash_of(&client),
            Some(HashKey::Header(name)) => match headers.get(name) {
                Some(v) => hash_of(v.as_bytes()),
                None => hash_of(&client),
            },
            Some(HashKey::Cookie(name)) => match cookie(headers, name) {
                Some(v) => hash_of(v.as_bytes()),
                None => hash_of(&client),
            },
        });
        RequestKey {
            pinned,
            hash,
            preferred: None,
        }
    }

    /// Every enabled origin as a balancer plugin sees it (`index` = position in the pool).
    pub fn candidates(&self, load: &Load<'_>, exclude: Option<TunnelId>) -> Vec<Candidate> {
        self.spec
            .origins
            .iter()
            .enumerate()
            .filter(|(_, o)| o.enabled && Some(o.tunnel) != exclude)
            .map(|(i, o)| {
                let in_flight = load(&o.tunnel);
                Candidate {
                    index: i as u32,
                    name: self.origin_names[i].clone(),
                    tunnel: o.tunnel.to_string(),
                    weight: o.weight,
                    healthy: self.usable(i, load),
                    in_flight: in_flight.unwrap_or_default() as u32,
                    latency_us: self.health[i].latency_us(),
                }
            })
            .collect()
    }

    /// Usable origins other than `exclude`, with their streams in flight.
    fn usable_origins(&self, load: &Load<'_>, exclude: Option<TunnelId>) -> smallvec::SmallVec<[(usize, u64); 8]> {
        (0..self.spec.origins.len())
            .filter(|&i| Some(self.spec.origins[i].tunnel) != exclude)
            .filter_map(|i| Some((i, self.load_if_usable(i, load)?)))
            .collect()
    }

    /// Steer among this pool's usable origins; `None` when none is usable.
    fn steer(&self, load: &Load<'_>, key: &RequestKey, exclude: Option<TunnelId>) -> Option<Pick> {
        let usable = self.usable_origins(load, exclude);
        if usable.is_empty() {
            return None;
        }
        let find = |tunnel: Option<TunnelId>| {
            let tunnel = tunnel?;
            usable
                .iter()
                .find(|&&(i, _)| self.spec.origins[i].tunnel == tunnel)
                .map(|&(i, _)| i)
        };
        if let Some(i) = find(key.pinned) {
            return Some(Pick { origin: i, pin: false });
        }
        let pin = self.spec.affinity_ttl_secs.is_some();
        if let Some(i) = find(key.preferred) {
            return Some(Pick { origin: i, pin });
        }
        let candidates: smallvec::SmallVec<[usize; 8]> = usable.iter().map(|&(i, _)| i).collect();
        let weight = |i: usize| u64::from(self.spec.origins[i].weight);
        let origin = match self.spec.steering {
            // Plugin steering falls back to weighted random when the plugin gives no answer.
            Steering::Random | Steering::Plugin => {
                let total: u64 = candidates.iter().map(|&i| weight(i)).sum();
                weighted_nth(&candidates, weight, rand::random::<u64>() % total)
            }
            Steering::RoundRobin => {
                let total: u64 = candidates.iter().map(|&i| weight(i)).sum();
                let n = self.next.fetch_add(1, Ordering::Relaxed) as u64;
                weighted_nth(&candidates, weight, n % total)
            }
            Steering::LeastOutstanding => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                let n = usable.len();
                // Compare in_flight/weight as a cross product to stay in integers.
                (0..n)
                    .map(|k| usable[(start + k) % n])
                    .min_by(|&(a, load_a), &(b, load_b)| (load_a * weight(b)).cmp(&(load_b * weight(a))))
                    .map_or(candidates[0], |(i, _)| i)
            }
            Steering::Hash => {
                let h = key.hash.unwrap_or_default();
                // Weighted rendezvous: score = weight / -ln(u), u uniform in (0, 1] from hash(key, origin).
                candidates
                    .iter()
                    .copied()
                    .max_by(|&a, &b| {
                        let score = |i: usize| {
                            let u = (mix(h ^ hash_of(&self.spec.origins[i].tunnel)) >> 11) as f64 + 1.0;
                            let u = u / (1u64 << 53) as f64;
                            weight(i) as f64 / -u.ln().min(-f64::MIN_POSITIVE)
                        };
                        score(a).total_cmp(&score(b))
                    })
                    .unwrap_or(candidates[0])
            }
        };
        Some(Pick { origin, pin })
    }
}

/// The steering inputs of one request.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestKey {
    /// The origin named by a valid-looking affinity cookie.
    pub pinned: Option<TunnelId>,
    /// Hash of the `hash-on` value, for hash steering.
    pub hash: Option<u64>,
    /// The origin a balancer plugin chose (used when usable).
    pub preferred: Option<TunnelId>,
}

/// Streams in flight on a tunnel's live connections; `None` when it has none.
pub type Load<'a> = dyn Fn(&TunnelId) -> Option<usize> + 'a;

/// An origin chosen for one request.
#[derive(Debug, Clone, Copy)]
pub struct Choice {
    /// Index of the pool in the route table (the route's pool or a fallback).
    pub pool: usize,
    pub origin: usize,
    /// Set the affinity cookie on the response.
    pub pin: bool,
}

struct Pick {
    origin: usize,
    pin: bool,
}

/// Choose an origin for a request to `pools[start]`, following fallbacks. `Err` carries the
/// name of the pool the request was routed to, for the 503.
pub fn choose(
    pools: &[Pool],
    start: usize,
    load: &Load<'_>,
    key: &RequestKey,
    exclude: Option<TunnelId>,
) -> Option<Choice> {
    let mut current = start;
    for _ in 0..=MAX_FALLBACK_DEPTH {
        let pool = &pools[current];
        if let Some(pick) = pool.steer(load, key, exclude) {
            return Some(Choice {
                pool: current,
                origin: pick.origin,
                pin: pick.pin,
            });
        }
        current = pool.fallback?;
    }
    None
}

/// The `Set-Cookie` value that pins a client to `tunnel`.
pub fn affinity_cookie(tunnel: TunnelId, ttl_secs: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{AFFINITY_COOKIE}={}; Max-Age={ttl_secs}; Path=/; HttpOnly; SameSite=Lax{secure}",
        tunnel.0.simple()
    )
}

/// The first `name=value` in the request's Cookie headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// The `n`th unit of weight among `candidates` (n < total weight).
fn weighted_nth(candidates: &[usize], weight: impl Fn(usize) -> u64, mut n: u64) -> usize {
    for &i in candidates {
        let w = weight(i);
        if n < w {
            return i;
        }
        n -= w;
    }
    candidates[candidates.len() - 1]
}

/// A stable 64-bit hash (SipHash with fixed keys: the same on every edge running this build).
fn hash_of<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// splitmix64's finaliser: spreads `hash ^ origin` over all bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn connected(_: &TunnelId) -> Option<usize> {
        Some(0)
    }

    fn pool(weights: &[u32], steering: Steering) -> Pool {
        let spec = PoolSpec {
            origins: weights
                .iter()
                .enumerate()
                .map(|(i, &weight)| PoolOrigin {
                    tunnel: TunnelId(Uuid::from_u128(i as u128 + 1)),
                    weight,
                    enabled: true,
                })
                .collect(),
            steering,
            ..Default::default()
        };
        let names = weights.iter().enumerate().map(|(i, _)| format!("t{i}")).collect();
        Pool::new(AccountId(Uuid::nil()), "p".into(), spec, names, None)
    }

    fn pick(pool: &Pool, key: &RequestKey) -> Choice {
        choose(std::slice::from_ref(pool), 0, &connected, key, None).unwrap()
    }

    fn counts(pool: &Pool, n: usize, key: impl Fn(usize) -> RequestKey) -> Vec<usize> {
        let mut counts = vec![0; pool.spec.origins.len()];
        for i in 0..n {
            let choice = pick(pool, &key(i));
            counts[choice.origin] += 1;
        }
        counts
    }

    #[test]
    fn weights_shape_the_split() {
        for steering in [Steering::Random, Steering::RoundRobin, Steering::Hash] {
            let pool = pool(&[1, 2, 1], steering);
            let key = |i: usize| RequestKey {
                hash: Some(hash_of(&i)),
                ..Default::default()
            };
            let got = counts(&pool, 40_000, key);
            for (c, want) in got.iter().zip([0.25, 0.5, 0.25]) {
                let share = *c as f64 / 40_000.0;
                assert!((share - want).abs() < 0.02, "{steering:?}: {got:?}");
            }
        }
    }

    #[test]
    fn hash_keeps_a_key_on_its_origin_and_moves_only_the_lost_ones() {
        let pool = pool(&[1, 1, 1, 1], Steering::Hash);
        let key = |i: usize| RequestKey {
            hash: Some(hash_of(&i)),
            ..Default::default()
        };
        let before = (0..1000).map(|i| pick(&pool, &key(i)).origin).collect::<Vec<_>>();
        let again = (0..1000).map(|i| pick(&pool, &key(i)).origin).collect::<Vec<_>>();
        assert_eq!(before, again);
        // Origin 2 goes away: only its keys move.
        pool.health[2].force_down_for_test();
        for (i, &was) in before.iter().enumerate() {
            let now = pick(&pool, &key(i)).origin;
            if was != 2 {
                assert_eq!(now, was, "key {i} moved needlessly");
            } else {
                assert_ne!(now, 2);
            }
        }
    }

    #[test]
    fn affinity_cookie_pins_and_falls_back_when_its_origin_is_down() {
        let mut pool = pool(&[1, 1, 1], Steering::Random);
        pool.spec.affinity_ttl_secs = Some(60);
        let tunnel = pool.spec.origins[1].tunnel;
        let mut headers = HeaderMap::new();
        let cookie = format!("a=b; {AFFINITY_COOKIE}={}", tunnel.0.simple());
        headers.insert(header::COOKIE, cookie.parse().unwrap());
        let key = pool.request_key(&headers, IpAddr::from([127, 0, 0, 1]));
        for _ in 0..50 {
            let c = pick(&pool, &key);
            assert_eq!((c.origin, c.pin), (1, false));
        }
        pool.health[1].force_down_for_test();
        let c = pick(&pool, &key);
        assert!(c.origin != 1 && c.pin, "re-pinned elsewhere");
    }

    #[test]
    fn fallback_then_nothing() {
        let mut main = pool(&[1], Steering::Random);
        let backup = pool(&[1, 1], Steering::Random);
        main.spec.origins[0].enabled = false;
        main.fallback = Some(1);
        let pools = vec![main, backup];
        let c = choose(&pools, 0, &connected, &RequestKey::default(), None).unwrap();
        assert_eq!(c.pool, 1);
        pools[1].health[0].force_down_for_test();
        pools[1].health[1].force_down_for_test();
        assert!(choose(&pools, 0, &connected, &RequestKey::default(), None).is_none());
    }
}
