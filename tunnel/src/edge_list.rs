//! The edges a tunnel's connections dial: the configured ones (`--edge`, the config file, the
//! credentials), then the ones an edge named at registration — the other nodes of its cluster —
//! so that the connections spread over several nodes and move on when one drains or dies.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// At most this many learned addresses are kept (an edge's answer is outside input).
const MAX_LEARNED: usize = 32;
/// A learned address longer than this is ignored.
const MAX_ADDR_BYTES: usize = 255;

pub struct EdgeList {
    configured: Vec<String>,
    inner: Mutex<Inner>,
    learned: tokio::sync::watch::Sender<bool>,
}

struct Inner {
    /// `configured`, then the learned addresses not among them.
    all: Vec<String>,
    /// Connections dialing or connected, per address.
    used: HashMap<String, usize>,
}

/// An edge a connection dials or is connected to; counted as used until dropped.
pub struct Picked<'a> {
    list: &'a EdgeList,
    pub addr: String,
}

impl Drop for Picked<'_> {
    fn drop(&mut self) {
        let mut inner = self.list.lock();
        if let Some(n) = inner.used.get_mut(&self.addr) {
            *n = n.saturating_sub(1);
        }
    }
}

impl EdgeList {
    /// `configured` must not be empty.
    pub fn new(configured: Vec<String>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                all: configured.clone(),
                used: HashMap::new(),
            }),
            configured,
            learned: tokio::sync::watch::channel(false).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The edge for connection `index` on its `attempt`-th try: the one with the fewest of this
    /// tunnel's connections, other than `avoid` (the edge that just failed or drained) when there
    /// is another; among equals, connections start on different ones and a retry moves on.
    pub fn pick(&self, index: usize, attempt: usize, avoid: Option<&str>) -> Picked<'_> {
        let mut inner = self.lock();
        let len = inner.all.len();
        let start = index.wrapping_add(attempt) % len;
        let addr = (0..len)
            .map(|i| &inner.all[(start + i) % len])
            .enumerate()
            .min_by_key(|(order, addr)| {
                let avoided = len > 1 && avoid == Some(addr.as_str());
                (avoided, inner.used.get(*addr).copied().unwrap_or(0), *order)
            })
            .map(|(_, addr)| addr.clone())
            .unwrap_or_default();
        *inner.used.entry(addr.clone()).or_default() += 1;
        Picked { list: self, addr }
    }

    /// Take the addresses an edge named at registration; they replace those learned before
    /// (nodes that left the cluster are dropped). Malformed ones are ignored.
    pub fn learn(&self, named: &[String]) {
        let mut all = self.configured.clone();
        let valid = named.iter().filter(|addr| is_host_port(addr)).take(MAX_LEARNED);
        for addr in valid {
            if !all.contains(addr) {
                all.push(addr.clone());
            }
        }
        self.lock().all = all;
        self.learned.send_replace(true);
    }

    /// Wait until an edge has named the others, or `at_most`: connections after the first
    /// start once they know where to spread.
    pub async fn wait_learned(&self, at_most: Duration) {
        let mut learned = self.learned.subscribe();
        let _ = tokio::time::timeout(at_most, learned.wait_for(|known| *known)).await;
    }
}

fn is_host_port(addr: &str) -> bool {
    let (host, port) = burrow_shared::host_port::split(addr);
    addr.len() <= MAX_ADDR_BYTES && !host.is_empty() && port.is_some_and(|p| p.parse::<u16>().is_ok_and(|p| p != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(picked: &[Picked<'_>]) -> Vec<String> {
        picked.iter().map(|p| p.addr.clone()).collect()
    }

    #[test]
    fn connections_spread_over_configured_then_learned_edges() {
        let list = EdgeList::new(vec!["b:7844".into()]);
        let first = list.pick(0, 0, None);
        assert_eq!(first.addr, "b:7844");
        list.learn(&["b:7844".into(), "a:7844".into(), "c:7844".into()]);
        let others: Vec<Picked<'_>> = (1..4).map(|i| list.pick(i, 0, None)).collect();
        assert_eq!(addrs(&others), ["a:7844", "c:7844", "b:7844"]);
    }

    #[test]
    fn a_drained_connection_moves_to_the_least_used_other_edge() {
        let list = EdgeList::new(vec!["a:1".into(), "b:1".into(), "c:1".into()]);
        let mut picked: Vec<Picked<'_>> = (0..4).map(|i| list.pick(i, 0, None)).collect();
        assert_eq!(addrs(&picked), ["a:1", "b:1", "c:1", "a:1"]);
        // Both connections on `a` drain, one after the other: they go to `b` and `c`.
        picked.remove(3);
        picked.push(list.pick(3, 0, Some("a:1")));
        picked.remove(0);
        picked.push(list.pick(0, 0, Some("a:1")));
        assert_eq!(addrs(&picked), ["b:1", "c:1", "b:1", "c:1"]);
        // With one edge, there is nowhere else to go.
        let single = EdgeList::new(vec!["a:1".into()]);
        assert_eq!(single.pick(0, 0, Some("a:1")).addr, "a:1");
    }

    #[test]
    fn learned_edges_are_replaced_and_checked() {
        let list = EdgeList::new(vec!["b:7844".into()]);
        list.learn(&["a:7844".into(), "c:7844".into()]);
        list.learn(&[
            "a:7844".into(),
            "no-port".into(),
            "x:0".into(),
            "[::1]:7844".into(),
            format!("{}:1", "h".repeat(300)),
        ]);
        let picked: Vec<Picked<'_>> = (0..3).map(|i| list.pick(i, 0, None)).collect();
        assert_eq!(addrs(&picked), ["b:7844", "a:7844", "[::1]:7844"]);
    }
}
