//! Route-table cost: lookup per request and a whole rebuild, at 10k and 100k routes; and the
//! cost of steering one request over a pool of tunnels, per policy.
//! Run: `cargo bench -p burrow-edge --bench route_table`.

use std::hint::black_box;
use std::sync::Arc;

use burrow_edge::pool::{self, PoolOrigin, PoolSpec, Steering};
use burrow_edge::route_table::{PoolDef, Route, RouteTable, Target, TunnelRecord};
use burrow_protocol::{AccountId, TunnelId};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use uuid::Uuid;

fn inputs(n: usize) -> (Vec<TunnelRecord>, Vec<Route>) {
    let tunnels: Vec<TunnelRecord> = (0..n / 10)
        .map(|i| TunnelRecord {
            id: TunnelId(Uuid::from_u128(i as u128)),
            account: AccountId(Uuid::from_u128(1)),
            name: format!("t{i}"),
            secret_sha256: [0; 32],
        })
        .collect();
    let routes = (0..n)
        .map(|i| Route {
            // Every tenth route is a wildcard, the way sites mix apex and subdomain routes.
            hostname: if i % 10 == 0 {
                format!("*.site{i}.example.com")
            } else {
                format!("app{i}.example.com")
            },
            target: Target::Tunnel(tunnels[i % tunnels.len()].id),
            plugins: Arc::new([]),
        })
        .collect();
    (tunnels, routes)
}

fn route_table(c: &mut Criterion) {
    let mut group = c.benchmark_group("route table");
    for n in [10_000usize, 100_000] {
        let (tunnels, routes) = inputs(n);
        group.bench_with_input(BenchmarkId::new("build", n), &n, |b, _| {
            b.iter(|| black_box(RouteTable::build(tunnels.clone(), routes.clone(), vec![]).expect("builds")))
        });
        let table = RouteTable::build(tunnels.clone(), routes.clone(), vec![]).expect("builds");
        group.bench_with_input(BenchmarkId::new("lookup exact", n), &n, |b, _| {
            b.iter(|| black_box(table.lookup(black_box("app77.example.com"))))
        });
        group.bench_with_input(BenchmarkId::new("lookup wildcard", n), &n, |b, _| {
            b.iter(|| black_box(table.lookup(black_box("www.site70.example.com"))))
        });
        group.bench_with_input(BenchmarkId::new("lookup miss", n), &n, |b, _| {
            b.iter(|| black_box(table.lookup(black_box("nothing.here.example.org"))))
        });
    }
    group.finish();
}

/// Steering one request over a pool of 4 connected tunnels (weights 1:2:1:1): the per-request
/// price of a pool route over a plain tunnel route.
fn steering(c: &mut Criterion) {
    let mut group = c.benchmark_group("steering");
    let account = AccountId(Uuid::from_u128(1));
    let tunnels: Vec<TunnelRecord> = (0..4)
        .map(|i| TunnelRecord {
            id: TunnelId(Uuid::from_u128(i + 10)),
            account,
            name: format!("t{i}"),
            secret_sha256: [0; 32],
        })
        .collect();
    let headers = HeaderMap::new();
    let client = std::net::IpAddr::from([203, 0, 113, 7]);
    for steering in [
        Steering::Random,
        Steering::RoundRobin,
        Steering::LeastOutstanding,
        Steering::Hash,
    ] {
        let spec = PoolSpec {
            origins: tunnels
                .iter()
                .zip([1, 2, 1, 1])
                .map(|(t, weight)| PoolOrigin {
                    tunnel: t.id,
                    weight,
                    enabled: true,
                })
                .collect(),
            steering,
            ..Default::default()
        };
        let def = PoolDef {
            account,
            name: "p".into(),
            spec,
        };
        let table = RouteTable::build(tunnels.clone(), vec![], vec![def]).expect("builds");
        let load = |_: &TunnelId| Some(3usize);
        group.bench_function(format!("{steering:?}"), |b| {
            b.iter(|| {
                let key = table.pools()[0].request_key(black_box(&headers), client);
                black_box(pool::choose(table.pools(), 0, &load, &key, None))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, route_table, steering);
criterion_main!(benches);
