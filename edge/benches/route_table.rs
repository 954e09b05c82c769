//! Route-table cost: lookup per request and a whole rebuild, at 10k and 100k routes; and the
//! cost of steering one request over a pool of tunnels, per policy.
//! Run: `cargo bench -p burrow-edge --bench route_table`.

use std::hint::black_box;

use burrow_edge::control::resources::ControlPlane;
use burrow_edge::control::store::sqlite::SqliteStore;
use burrow_edge::control::store::{Event, KeyValue, Op, Store};
use burrow_edge::pools::pool::{self, PoolOrigin, PoolSpec, Steering};
use burrow_edge::route_table::{PoolDef, Route, RouteTable, TunnelRecord};
use burrow_protocol::{AccountId, TunnelId};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use uuid::Uuid;

fn inputs(n: usize) -> (Vec<TunnelRecord>, Vec<Route>) {
    burrow_edge::route_table::synthetic(n)
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
            balancer: None,
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

/// What a route change costs an edge before the swap, at 10k tunnels and 10k routes: reading the
/// whole config from a real SQLite file (`ControlPlane::snapshot`), and building the table from it.
fn propagation(c: &mut Criterion) {
    const N: usize = 10_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = std::env::temp_dir().join(format!("burrow-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let store = {
        let _runtime = rt.enter(); // the store spawns its lease-expiry task
        SqliteStore::open(&dir.join("store.db")).expect("store")
    };
    let account = AccountId(Uuid::from_u128(1));
    let json = |v: serde_json::Value| serde_json::to_vec(&v).expect("json");
    rt.block_on(async {
        for chunk in (0..N).collect::<Vec<_>>().chunks(500) {
            let mut ops = Vec::new();
            for &i in chunk {
                let id = Uuid::from_u128(i as u128 + 100);
                let tunnel = json(serde_json::json!({
                    "id": id, "account": account, "name": format!("t{i}"),
                    "secret_sha256": "00".repeat(32), "created": 0,
                }));
                let route = json(serde_json::json!({
                    "hostname": format!("app{i}.example.com"), "account": account, "tunnel": id, "created": 0,
                }));
                ops.push(Op::Put {
                    key: format!("tunnels/{account}/{id}"),
                    value: tunnel,
                    lease: None,
                });
                ops.push(Op::Put {
                    key: format!("routes/app{i}.example.com"),
                    value: route,
                    lease: None,
                });
            }
            store.txn(vec![], ops).await.expect("write");
        }
    });
    let cp = ControlPlane::new(store);
    let read = || async {
        let config = cp.read_config().await.expect("read");
        cp.snapshot(&config).await.expect("snapshot")
    };
    let snapshot = rt.block_on(read());
    assert_eq!((snapshot.tunnels.len(), snapshot.routes.len()), (N, N));
    let mut group = c.benchmark_group("route change at 10k tunnels and routes");
    group.sample_size(20);
    group.bench_function("read the whole config from the store", |b| {
        b.iter(|| black_box(rt.block_on(read())))
    });
    // What an edge does instead once it follows the store: one watch event into the config it
    // keeps, then the snapshot of it.
    let mut config = rt.block_on(cp.read_config()).expect("read");
    let tunnel = Uuid::from_u128(100);
    let change = Event::Put(KeyValue {
        key: "routes/app0.example.com".into(),
        value: json(serde_json::json!({
            "hostname": "app0.example.com", "account": account, "tunnel": tunnel, "created": 1,
        })),
        create_revision: 1,
        mod_revision: config.revision() + 1,
        lease: None,
    });
    group.bench_function("apply one watch event to the kept config and snapshot it", |b| {
        b.iter(|| {
            config.apply(std::slice::from_ref(&change)).expect("decodes");
            black_box(rt.block_on(cp.snapshot(&config)).expect("snapshot"))
        })
    });
    group.bench_function("build the table from it", |b| {
        b.iter(|| black_box(snapshot.to_table(None).expect("builds")))
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, route_table, steering, propagation);
criterion_main!(benches);
