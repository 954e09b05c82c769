//! A cluster of edges on etcd, end to end: three real `burrow-edge` processes on a real etcd
//! cluster, the real `burrow` CLI and connector, real origins.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burrow_tests::etcd::EtcdCluster;
use burrow_tests::*;
use http::StatusCode;
use tokio_util::sync::CancellationToken;

const BURROW: &str = env!("CARGO_BIN_EXE_e2e-burrow");
const BURROW_EDGE: &str = env!("CARGO_BIN_EXE_e2e-burrow-edge");

/// One edge of the cluster: its ports, its data dir, its process.
struct Node {
    name: String,
    ports: Ports,
    peer: u16,
    dir: PathBuf,
    process: Option<Process>,
}

/// Edges `a`, `b`, `c`… on `etcd`, each with its own ports and data dir under `dir`.
struct Edges {
    store: String,
    nodes: Vec<Node>,
}

impl Edges {
    async fn start(etcd: &EtcdCluster, dir: &Path, names: &[&str]) -> Self {
        let mut edges = Self {
            store: etcd.store_url(),
            nodes: names
                .iter()
                .map(|name| Node {
                    name: (*name).to_owned(),
                    ports: Ports::default(),
                    peer: free_udp_port(),
                    dir: dir.join(name),
                    process: None,
                })
                .collect(),
        };
        for i in 0..names.len() {
            edges.spawn(i);
        }
        for node in &edges.nodes {
            node.process
                .as_ref()
                .unwrap()
                .wait_for_output("inter-edge link ready")
                .await;
        }
        edges
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let peer = format!("127.0.0.1:{}", node.peer);
        let args = [
            "--store",
            self.store.as_str(),
            "--node-name",
            node.name.as_str(),
            "--peer",
            peer.as_str(),
        ];
        node.process = Some(edge_process(BURROW_EDGE, &node.dir, &node.ports, &args));
    }

    /// What the running edges printed, for a failure's message.
    fn outputs(&self) -> String {
        let printed = self
            .nodes
            .iter()
            .filter_map(|n| Some((n, n.process.as_ref()?.output())));
        printed
            .map(|(n, out)| format!("--- edge {} (http {}):\n{out}", n.name, n.ports.http))
            .collect()
    }

    /// `burrow <args>` as `home`, which must succeed; the edges' output tells why not.
    async fn burrow(&self, home: &Path, args: &[&str]) -> String {
        let (code, output) = cli(BURROW, home, args).await;
        assert_eq!(code, Some(0), "{args:?}: {output}\n{}", self.outputs());
        output
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    /// `burrow-edge <args> --store …` against the cluster's store.
    async fn admin(&self, dir: &Path, args: &[&str]) -> String {
        let mut args = args.to_vec();
        args.extend(["--store", self.store.as_str()]);
        ok(BURROW_EDGE, dir, &args).await
    }
}

/// An account `alice` holding zone `test`, logged in at `<dir>/alice` through edge `via`.
async fn alice(edges: &Edges, dir: &Path, via: &str) -> PathBuf {
    let output = edges
        .admin(dir, &["account", "create", "alice", "--zone", "test"])
        .await;
    let home = dir.join("alice");
    std::fs::create_dir_all(&home).unwrap();
    let api = edges.node(via).ports.api();
    ok(
        BURROW,
        &home,
        &["login", "--api", &api, "--token", &shown_once(&output)],
    )
    .await;
    home
}

/// Ingress of the test connector: `/grpc` speaks HTTP/2 to the origin, the rest HTTP/1.1.
fn connector_config(dir: &Path, origin: SocketAddr) -> PathBuf {
    let path = dir.join("web.yml");
    let yaml = format!(
        "tunnel: web\ningress:\n  - path: ^/grpc\n    service: http://{origin}\n    originRequest:\n      \
         http2Origin: true\n  - service: http://{origin}\n"
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

/// `burrow tunnel run web` on the test's config, dialing `edge` first.
fn connector(home: &Path, config: &Path, edge: &Ports, ha: &str) -> Process {
    let edge = format!("127.0.0.1:{}", edge.tunnel);
    let config = config.to_str().unwrap();
    let args = [
        "tunnel",
        "run",
        "--config",
        config,
        "--edge",
        &edge,
        "--ha-connections",
        ha,
    ];
    Process::spawn(BURROW, &args, &[("BURROW_HOME", home)])
}

/// The edge nodes holding connections of tunnel `web`, as `burrow tunnel info` reports them.
async fn connection_nodes(home: &Path) -> Vec<String> {
    let info: serde_json::Value =
        serde_json::from_str(&ok(BURROW, home, &["tunnel", "info", "web", "-o", "json"]).await).unwrap();
    let mut nodes: Vec<String> = info["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["edge_node"].as_str().unwrap().to_owned())
        .collect();
    nodes.sort();
    nodes
}

/// A tunnel whose only connection is on edge `b` carries every kind of exchange through edges
/// `a`, `b` and `c`; names routed and tunnels deleted through edge `a` are seen by all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_edge_serves_a_tunnel_connected_to_another() {
    init_logging();
    let dir = TempDir::new();
    let etcd = EtcdCluster::start(1).await;
    let edges = Edges::start(&etcd, dir.path(), &["a", "b", "c"]).await;
    let home = alice(&edges, dir.path(), "a").await;
    ok(BURROW, &home, &["tunnel", "create", "web"]).await;
    ok(BURROW, &home, &["tunnel", "route", "dns", "web", "web.test"]).await;
    let origin = exchanges::every_kind_origin("web").await;
    let config = connector_config(dir.path(), origin);
    let connector = connector(&home, &config, &edges.node("b").ports, "1");
    eventually(Duration::from_secs(20), "the connector on edge b", || async {
        connection_nodes(&home).await == ["b"]
    })
    .await;
    for name in ["b", "a", "c"] {
        let ports = &edges.node(name).ports;
        eventually(
            Duration::from_secs(20),
            &format!("edge {name} to serve web.test"),
            || async { served(ports, "web.test").await == Some((StatusCode::OK, "web".into())) },
        )
        .await;
        exchanges::check_every_kind(ports.http(), "web.test", "web").await;
    }

    ok(BURROW, &home, &["tunnel", "route", "dns", "web", "more.test"]).await;
    for node in &edges.nodes {
        eventually(
            Duration::from_secs(10),
            &format!("edge {} to serve more.test", node.name),
            || async { served(&node.ports, "more.test").await == Some((StatusCode::OK, "web".into())) },
        )
        .await;
    }
    connector.signal("TERM");
    let _ = connector.wait(Duration::from_secs(40)).await;
    ok(BURROW, &home, &["tunnel", "delete", "web"]).await;
    for node in &edges.nodes {
        eventually(
            Duration::from_secs(10),
            &format!("edge {} to forget web.test", node.name),
            || async {
                served(&node.ports, "web.test")
                    .await
                    .is_some_and(|(status, _)| status == StatusCode::NOT_FOUND)
            },
        )
        .await;
    }
}

/// Requests from `workers` loops, each to one of the edges in `live` in turn, on a new
/// connection every time (as a load balancer in front of the edges would send them).
struct Load {
    live: Arc<Mutex<Vec<SocketAddr>>>,
    ok: Arc<AtomicUsize>,
    failed: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(live: Vec<SocketAddr>, workers: usize) -> Self {
        let live = Arc::new(Mutex::new(live));
        let (ok, failed, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(Mutex::new(Vec::new())),
            CancellationToken::new(),
        );
        let tasks = (0..workers)
            .map(|worker| {
                let (live, ok, failed, stop) = (live.clone(), ok.clone(), failed.clone(), stop.clone());
                tokio::spawn(async move {
                    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                        .pool_max_idle_per_host(0)
                        .build_http();
                    let mut turn = worker;
                    while !stop.is_cancelled() {
                        let edge = {
                            let live = live.lock().unwrap();
                            turn += 1;
                            live[turn % live.len()]
                        };
                        match get(&client, edge, "web.test", "/").await {
                            Ok(r) if r.status == StatusCode::OK => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => failed
                                .lock()
                                .unwrap()
                                .push(format!("{edge}: {} {}", r.status, r.text())),
                            Err(e) => failed.lock().unwrap().push(format!("{edge}: {e}")),
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Self {
            live,
            ok,
            failed,
            stop,
            tasks,
        }
    }

    fn set_live(&self, live: Vec<SocketAddr>) {
        *self.live.lock().unwrap() = live;
    }

    /// Requests answered 200 and the failures since the last call.
    fn take(&self) -> (usize, Vec<String>) {
        (
            self.ok.swap(0, Ordering::Relaxed),
            std::mem::take(&mut *self.failed.lock().unwrap()),
        )
    }

    async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            task.await.unwrap();
        }
    }
}

/// Four connections spread over at least two edges; under steady load, a rolling restart of
/// all three edges fails no request, and a `kill -9` of one fails at most those in flight on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tunnel_survives_a_rolling_restart_and_a_killed_edge() {
    init_logging();
    let dir = TempDir::new();
    let etcd = EtcdCluster::start(1).await;
    let mut edges = Edges::start(&etcd, dir.path(), &["a", "b", "c"]).await;
    let home = alice(&edges, dir.path(), "a").await;
    ok(BURROW, &home, &["tunnel", "create", "web"]).await;
    ok(BURROW, &home, &["tunnel", "route", "dns", "web", "web.test"]).await;
    let origin = exchanges::every_kind_origin("web").await;
    let config = connector_config(dir.path(), origin);
    let _connector = connector(&home, &config, &edges.node("a").ports, "4");
    eventually(
        Duration::from_secs(20),
        "four connections on at least two edges",
        || async {
            let nodes = connection_nodes(&home).await;
            let mut distinct = nodes.clone();
            distinct.dedup();
            nodes.len() == 4 && distinct.len() >= 2
        },
    )
    .await;
    let all: Vec<SocketAddr> = edges.nodes.iter().map(|n| n.ports.http()).collect();
    for edge in &all {
        eventually(
            Duration::from_secs(20),
            &format!("{edge} to serve web.test"),
            || async {
                get(&http1_client(), *edge, "web.test", "/")
                    .await
                    .is_ok_and(|r| r.status == StatusCode::OK)
            },
        )
        .await;
    }
    let load = Load::start(all.clone(), 4);

    for i in 0..edges.nodes.len() {
        let node_addr = edges.nodes[i].ports.http();
        // Out of the balancer first, as a health-checked one would take it out.
        load.set_live(all.iter().copied().filter(|a| *a != node_addr).collect());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let process = edges.nodes[i].process.take().unwrap();
        process.signal("TERM");
        let (code, output) = process.wait(Duration::from_secs(60)).await;
        assert_eq!(
            code,
            Some(0),
            "edge {} did not exit cleanly:\n{output}",
            edges.nodes[i].name
        );
        edges.spawn(i);
        let node = &edges.nodes[i];
        node.process
            .as_ref()
            .unwrap()
            .wait_for_output("inter-edge link ready")
            .await;
        eventually(Duration::from_secs(20), &format!("edge {} back", node.name), || async {
            served(&node.ports, "web.test").await == Some((StatusCode::OK, "web".into()))
        })
        .await;
        load.set_live(all.clone());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (served_ok, failed) = load.take();
    eprintln!(
        "rolling restart of 3 edges: {served_ok} requests answered, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "requests failed during a rolling restart: {failed:#?}\n{}",
        edges.outputs()
    );
    assert!(served_ok > 100, "too little load to tell: {served_ok} requests");

    // kill -9 of edge b, still in the balancer until it is found dead.
    let b = edges.nodes.iter().position(|n| n.name == "b").unwrap();
    let b_addr = edges.nodes[b].ports.http();
    edges.nodes[b].process.take().unwrap().kill9().await;
    load.set_live(all.iter().copied().filter(|a| *a != b_addr).collect());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (during_ok, during_failed) = load.take();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (after_ok, after_failed) = load.take();
    eprintln!(
        "kill -9 of one edge: {} failed ({during_ok} answered) in the 2 s after it, {} failed ({after_ok} answered) in the 3 s after that; failures: {during_failed:?}",
        during_failed.len(),
        after_failed.len()
    );
    assert!(
        after_failed.is_empty(),
        "the survivors failed requests: {after_failed:#?}"
    );
    assert!(after_ok > 20, "the survivors answered too little: {after_ok}");
    // What may fail: requests sent to the dead edge before the balancer let go of it. Those
    // another edge had forwarded to it are GETs: sent again, to another edge.
    assert!(
        during_failed.iter().all(|f| f.starts_with(&b_addr.to_string())),
        "only requests in flight on the dead edge may fail: {during_failed:#?}"
    );
    assert!(
        during_failed.len() <= 8,
        "more failed than were in flight: {during_failed:#?}"
    );
    eventually(Duration::from_secs(30), "the connector re-homed off edge b", || async {
        let nodes = connection_nodes(&home).await;
        nodes.len() == 4 && !nodes.iter().any(|n| n == "b")
    })
    .await;
    load.stop().await;
}

/// Three etcd members. One down: nothing visible changes. Two down (no quorum): both edges
/// serve every route, a known tunnel connects again, writes answer 503 `store_unavailable`.
/// Members back: writes work and reach both edges (their watches resumed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_ride_out_an_etcd_outage() {
    init_logging();
    let dir = TempDir::new();
    let mut etcd = EtcdCluster::start(3).await;
    let edges = Edges::start(&etcd, dir.path(), &["a", "b"]).await;
    let home = alice(&edges, dir.path(), "a").await;
    ok(BURROW, &home, &["tunnel", "create", "web"]).await;
    ok(BURROW, &home, &["tunnel", "route", "dns", "web", "web.test"]).await;
    let origin = named_origin("web").await;
    let config = connector_config(dir.path(), origin);
    let connector = connector(&home, &config, &edges.node("a").ports, "2");
    let serves = |host: &'static str| {
        let edges = &edges;
        async move {
            for node in &edges.nodes {
                eventually(
                    Duration::from_secs(20),
                    &format!("edge {} to serve {host}", node.name),
                    || async { served(&node.ports, host).await == Some((StatusCode::OK, "web".into())) },
                )
                .await;
            }
        }
    };
    serves("web.test").await;

    etcd.kill(0);
    edges
        .burrow(&home, &["tunnel", "route", "dns", "web", "one-down.test"])
        .await;
    serves("one-down.test").await;

    etcd.kill(1);
    let (code, output) = cli(BURROW, &home, &["tunnel", "route", "dns", "web", "no-quorum.test"]).await;
    assert_ne!(code, Some(0), "a write without quorum must fail: {output}");
    assert!(output.contains("store is unavailable"), "{output}");
    // Serving goes on from the last config, and a known tunnel registers again.
    connector.kill9().await;
    let connector = self::connector(&home, &config, &edges.node("b").ports, "2");
    connector.wait_for_output("registered tunnel connection").await;
    serves("web.test").await;
    serves("one-down.test").await;

    etcd.restart(0);
    etcd.restart(1);
    etcd.wait_healthy().await;
    eventually(Duration::from_secs(30), "writes to work again", || async {
        cli(BURROW, &home, &["tunnel", "route", "dns", "web", "back.test"])
            .await
            .0
            == Some(0)
    })
    .await;
    serves("back.test").await;
}
