//! `balancer-latency`: send each request to the healthy origin that has been answering fastest.
//!
//! The edge keeps a smoothed time-to-response-head per origin and passes it with each candidate.
//! Origins not measured yet are tried first; a small share of requests (`explore-percent`, default
//! 5) goes to another healthy origin so that a slow origin that got faster is noticed.
//!
//! Config (JSON, optional): `{"explore-percent": 5}`.

use burrow_plugin::{Balancer, Candidate, Request};

#[derive(serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Config {
    #[serde(default = "default_explore")]
    explore_percent: u32,
}

fn default_explore() -> u32 {
    5
}

struct LatencyBalancer;

impl Balancer for LatencyBalancer {
    fn select_origin(req: &Request, candidates: Vec<Candidate>) -> Option<u32> {
        let config: Config = burrow_plugin::config_or_log()?;
        let healthy: Vec<&Candidate> = candidates.iter().filter(|c| c.healthy).collect();
        if let Some(unmeasured) = healthy.iter().filter(|c| c.latency_us == 0).min_by_key(|c| c.in_flight) {
            return Some(unmeasured.index);
        }
        // The request id is random: its low bits decide exploration without a random import.
        let roll = u32::from_str_radix(req.request_id().get(28..).unwrap_or("0"), 16).unwrap_or(0) % 100;
        let fastest = healthy.iter().min_by_key(|c| (c.latency_us, c.in_flight))?;
        if roll < config.explore_percent && healthy.len() > 1 {
            let others: Vec<&&Candidate> = healthy.iter().filter(|c| c.index != fastest.index).collect();
            return others.get(roll as usize % others.len()).map(|c| c.index);
        }
        Some(fastest.index)
    }
}

burrow_plugin::export_balancer!(LatencyBalancer);
