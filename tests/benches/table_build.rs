//! Does rebuilding a 100k-route table delay requests? An in-process edge serves requests through
//! a real tunnel while its control runtime rebuilds and swaps a table of 100,000 routes (as
//! config sync does on every change) every 250 ms; request latency is compared with a quiet run
//! in the same process.
//!
//! `cargo bench -p burrow-tests --bench table_build [-- SECONDS SHARDS]` (default 8 s per run,
//! 2 traffic shards).
//!
//! The traffic shards run on threads of their own; the control runtime is this benchmark's main
//! thread, as in `burrow-edge run`. The connector and its origin run on a thread of their own,
//! and requests come from one more (two at a time, keep-alive). If a build ran on a traffic
//! shard, a request arriving during it would wait for the rest of the build.
#![allow(clippy::unwrap_used, reason = "a benchmark")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_edge::route_table::{Route, RouteTable, Target, TunnelRecord};
use burrow_tests::*;
use http::{Response, StatusCode};

const ROUTES: usize = 100_000;
const CLIENTS: usize = 2;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let seconds: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(8);
    let shards: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(Duration::from_secs(seconds), shards));
}

async fn run(duration: Duration, shards: usize) {
    let tunnel = TestTunnel::new("bench");
    let file = tunnels_file(&[&tunnel], &[("bench.test", "bench")]);
    let options = EdgeOptions {
        shards,
        ..Default::default()
    };
    let edge = TestEdge::start_with(&file, options).await;

    // The connector and its origin, away from the edge's threads and this one.
    let credentials = edge.credentials(&tunnel);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let origin = serve_origin(|_| async { Response::new(full("ok")) }).await;
            let connector = TestConnector::to_url(credentials, &format!("http://{origin}"), 2);
            let _ = connector.join().await;
        });
    });
    edge.wait_connections(&tunnel, 2).await;

    let (tunnels, routes) = big_table(&tunnel);
    let build = || RouteTable::build(tunnels.clone(), routes.clone(), vec![]).unwrap();
    let started = Instant::now();
    let table = build();
    println!("one build of {ROUTES} routes: {:?}", started.elapsed());
    edge.state.routes.store(Arc::new(table));

    let quiet = load(edge.http, duration).await;
    let measuring = tokio::spawn(load(edge.http, duration));
    let deadline = Instant::now() + duration;
    let mut build_times = Vec::new();
    while Instant::now() < deadline {
        // Inline on the control runtime, as config sync builds.
        let started = Instant::now();
        let table = build();
        build_times.push(started.elapsed());
        edge.state.routes.store(Arc::new(table));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let busy = measuring.await.unwrap();
    build_times.sort();

    println!(
        "\n{shards} traffic shard(s), {CLIENTS} clients, {:?} per run; {} builds, median {:?}",
        duration,
        build_times.len(),
        build_times[build_times.len() / 2]
    );
    println!("| run | requests | p50 | p99 | p99.9 | max |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (name, mut latencies) in [("quiet", quiet), ("100k-route build every 250 ms", busy)] {
        latencies.sort();
        let at = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
        println!(
            "| {name} | {} | {:?} | {:?} | {:?} | {:?} |",
            latencies.len(),
            at(0.5),
            at(0.99),
            at(0.999),
            latencies[latencies.len() - 1]
        );
    }
    edge.stop().await;
}

/// `bench.test` to the tunnel, and 100k other routes (a tenth of them wildcards) over 10k
/// tunnels.
fn big_table(bench: &TestTunnel) -> (Vec<TunnelRecord>, Vec<Route>) {
    let (mut tunnels, mut routes) = burrow_edge::route_table::synthetic(ROUTES);
    tunnels.push(TunnelRecord {
        id: bench.id,
        account: bench.account,
        name: bench.name.clone(),
        secret_sha256: burrow_edge::route_table::hash_secret(&bench.secret),
    });
    routes.push(Route {
        hostname: "bench.test".into(),
        target: Target::Tunnel(bench.id),
        plugins: Arc::new([]),
    });
    (tunnels, routes)
}

/// Requests to `bench.test` from a thread of their own for `duration`: every latency.
async fn load(edge: std::net::SocketAddr, duration: Duration) -> Vec<Duration> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let latencies = runtime.block_on(async move {
            let deadline = Instant::now() + duration;
            let clients = (0..CLIENTS).map(|_| async move {
                let client = http1_client();
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let started = Instant::now();
                    let response = get(&client, edge, "bench.test", "/").await.unwrap();
                    assert_eq!(response.status, StatusCode::OK);
                    latencies.push(started.elapsed());
                }
                latencies
            });
            futures_util::future::join_all(clients).await.concat()
        });
        let _ = tx.send(latencies);
    });
    rx.await.unwrap()
}
