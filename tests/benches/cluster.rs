//! A cluster at scale: one etcd member, three `burrow-edge` processes (release build) on it,
//! and N tunnels with one route each, written through the control plane (the documents the API
//! writes, without N HTTP round trips):
//!
//! - full resync: from an edge's start until it routes the last of the N hostnames, and each
//!   edge's resident memory then;
//! - route-change propagation: a route set through edge 1's API until all three edges route it
//!   (the answer is no longer 404 `unknown_host`), p50 and p99 over many changes.
//!
//! `cargo bench -p burrow-tests --bench cluster -- 10000 100000` (the tunnel counts; default
//! 10000). Needs `etcd` on the PATH.
#![allow(clippy::unwrap_used, reason = "a benchmark")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_connector::api_client::{ApiClient, Login};
use burrow_edge::control::resources::{ControlPlane, RouteTo};
use burrow_edge::control::zones::ZoneSource;
use burrow_tests::etcd::EtcdCluster;
use burrow_tests::*;
use http::{Method, StatusCode};
use serde_json::json;

const BURROW_EDGE: &str = env!("CARGO_BIN_EXE_e2e-burrow-edge");
/// Route changes measured per run.
const ROUTE_CHANGES: usize = 100;
/// Tunnels and routes written at once while filling the store.
const WRITERS: usize = 64;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Whether the edge at `http` routes `host` (anything but 404: the tunnels have no connector,
/// so a routed name answers 502).
async fn routes(http: SocketAddr, host: &str) -> bool {
    get(&http1_client(), http, host, "/")
        .await
        .is_ok_and(|r| r.status != StatusCode::NOT_FOUND)
}

async fn run(tunnels: usize) {
    let dir = TempDir::new();
    let etcd = EtcdCluster::start(1).await;
    let cp = ControlPlane::new(etcd.store("burrow/").await);
    let (account, token) = cp.create_account("bench").await.unwrap();
    cp.add_zone(account.id, "bench.test", ZoneSource::Operator)
        .await
        .unwrap();

    let started = Instant::now();
    let cp = Arc::new(cp);
    for chunk in (0..tunnels).collect::<Vec<_>>().chunks(WRITERS) {
        let writes = chunk.iter().map(|i| {
            let cp = cp.clone();
            async move {
                let name = format!("t{i}");
                cp.create_tunnel(account.id, &name).await.unwrap();
                let host = format!("h{i}.bench.test");
                cp.route(account.id, &host, RouteTo::Tunnel(&name), false, None)
                    .await
                    .unwrap();
            }
        });
        futures_util::future::join_all(writes).await;
    }
    let filled_in = started.elapsed();

    // Three edges start on the full store; each is timed until it routes the last hostname.
    let last = format!("h{}.bench.test", tunnels - 1);
    let store = etcd.store_url();
    let mut edges = Vec::new();
    for name in ["e1", "e2", "e3"] {
        let ports = Ports::default();
        let peer = format!("127.0.0.1:{}", free_udp_port());
        let data = dir.path().join(name);
        let args = ["--store", store.as_str(), "--node-name", name, "--peer", peer.as_str()];
        let started = Instant::now();
        let process = edge_process(BURROW_EDGE, &data, &ports, &args);
        edges.push((ports, process, started));
    }
    let mut resync = Vec::new();
    for (ports, _, started) in &edges {
        eventually(Duration::from_secs(600), "an edge to route every hostname", || {
            routes(ports.http(), &last)
        })
        .await;
        resync.push(started.elapsed());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss: Vec<u64> = edges
        .iter()
        .map(|(_, process, _)| rss_kib(process.pid()) / 1024)
        .collect();

    // Route changes through edge 1's API, until all three route the name.
    let api = ApiClient::new(Login {
        api: edges[0].0.api(),
        token,
        api_ca: None,
    })
    .unwrap();
    let mut times = Vec::with_capacity(ROUTE_CHANGES);
    for i in 0..ROUTE_CHANGES {
        let host = format!("new{i}.bench.test");
        let body = json!({ "tunnel": format!("t{i}") });
        let started = Instant::now();
        api_json(&api, Method::PUT, &format!("/v1/routes/{host}"), Some(body))
            .await
            .unwrap();
        for (ports, _, _) in &edges {
            while !routes(ports.http(), &host).await {
                assert!(started.elapsed() < Duration::from_secs(30), "{host} never routed");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        times.push(started.elapsed());
    }
    times.sort();
    let secs = |d: &Duration| format!("{:.1} s", d.as_secs_f64());
    println!(
        "| {tunnels} | {} | {} | {} MiB | {:.1} ms | {:.1} ms |",
        secs(&filled_in),
        resync.iter().map(secs).collect::<Vec<_>>().join(", "),
        rss.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
        percentile(&times, 0.5).as_secs_f64() * 1000.0,
        percentile(&times, 0.99).as_secs_f64() * 1000.0,
    );
}

fn main() {
    let counts: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let counts = if counts.is_empty() { vec![10_000] } else { counts };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| tunnels and routes | written (64 at a time) | full resync per edge | RSS per edge | route change to all 3 edges p50 | p99 |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for tunnels in counts {
        runtime.block_on(run(tunnels));
    }
}
