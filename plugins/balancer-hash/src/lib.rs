//! `balancer-hash`: consistent hashing with bounded loads. Requests with the same key (a header,
//! a cookie or the client's IP address) go to the same origin while it is healthy and not
//! overloaded; adding or removing an origin moves only the keys that must move.
//!
//! Each key ranks the healthy origins by weighted rendezvous hashing (highest score wins). An
//! origin is skipped while its in-flight requests exceed `load-factor` × its weighted share of
//! all in-flight requests (plus one), so one hot key cannot pile onto a single origin
//! (Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded Loads", 2018).
//! See README.md for the configuration.

use std::hash::{DefaultHasher, Hash, Hasher};

use burrow_plugin::{Balancer, Candidate, Level, Request};

#[derive(serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Config {
    /// `client-ip` (default), `header:NAME` or `cookie:NAME`.
    #[serde(default = "default_key")]
    key: String,
    /// How far above its share of the load an origin may go before keys spill to the next one.
    #[serde(default = "default_load_factor")]
    load_factor: f64,
}

fn default_key() -> String {
    "client-ip".into()
}

fn default_load_factor() -> f64 {
    1.25
}

struct HashBalancer;

impl Balancer for HashBalancer {
    fn select_origin(req: &Request, candidates: Vec<Candidate>) -> Option<u32> {
        let config: Config = burrow_plugin::config_or_log()?;
        if config.load_factor.is_nan() || config.load_factor < 1.0 {
            burrow_plugin::log(Level::Error, "bad config: load-factor must be at least 1");
            return None;
        }
        let key = match config.key.split_once(':') {
            None if config.key == "client-ip" => Some(req.client_addr()),
            Some(("header", name)) => req.header_str(name),
            Some(("cookie", name)) => req.cookie(name),
            _ => {
                burrow_plugin::log(
                    Level::Error,
                    "bad config: key must be client-ip, header:NAME or cookie:NAME",
                );
                return None;
            }
        };
        // No key: nothing to be consistent about, the edge chooses.
        choose(&key?, &candidates, config.load_factor)
    }
}

/// The candidate for `key`: the best-ranked healthy one that is under its load bound.
fn choose(key: &str, candidates: &[Candidate], load_factor: f64) -> Option<u32> {
    let healthy: Vec<&Candidate> = candidates.iter().filter(|c| c.healthy && c.weight > 0).collect();
    let total_weight: f64 = healthy.iter().map(|c| f64::from(c.weight)).sum();
    let in_flight: f64 = healthy.iter().map(|c| f64::from(c.in_flight)).sum();
    let mut ranked: Vec<(f64, &Candidate)> = healthy.iter().map(|c| (score(key, c), *c)).collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let bound = |c: &Candidate| (load_factor * (in_flight + 1.0) * f64::from(c.weight) / total_weight).ceil();
    ranked
        .iter()
        .find(|(_, c)| f64::from(c.in_flight) < bound(c))
        .or(ranked.first())
        .map(|(_, c)| c.index)
}

/// Weighted rendezvous score of `candidate` for `key`: `-weight / ln(u)`, `u` uniform in (0, 1)
/// from a hash of both. The tunnel's UUID is hashed, so the ranking is the same on every edge.
fn score(key: &str, candidate: &Candidate) -> f64 {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    candidate.tunnel.hash(&mut hasher);
    let u = ((hasher.finish() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(candidate.weight) / u.ln()
}

burrow_plugin::export_balancer!(HashBalancer);
