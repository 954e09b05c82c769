//! Route-table cost: lookup per request and a whole rebuild, at 10k and 100k routes.
//! Run: `cargo bench -p burrow-edge`.

use std::hint::black_box;
use std::sync::Arc;

use burrow_edge::route_table::{Route, RouteTable, TunnelRecord};
use burrow_protocol::{AccountId, TunnelId};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
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
            tunnel: tunnels[i % tunnels.len()].id,
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
            b.iter(|| black_box(RouteTable::build(tunnels.clone(), routes.clone()).expect("builds")))
        });
        let table = RouteTable::build(tunnels.clone(), routes.clone()).expect("builds");
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

criterion_group!(benches, route_table);
criterion_main!(benches);
