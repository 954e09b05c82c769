//! A cluster of edges on etcd, end to end: three real `burrow-edge` processes on a real etcd
//! cluster, the real `burrow` CLI and connector, real origins.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::path::{Path, PathBuf};
use std::time::Duration;

use burrow_tests::etcd::EtcdCluster;
use burrow_tests::*;
use http::StatusCode;

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

/// A request for `web.test` answers 200 `web` through every edge, while the tunnel's only
/// connector is connected to edge `b`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_edge_serves_a_tunnel_connected_to_another() {
    init_logging();
    let dir = TempDir::new();
    let etcd = EtcdCluster::start(1).await;
    let edges = Edges::start(&etcd, dir.path(), &["a", "b", "c"]).await;
    let home = alice(&edges, dir.path(), "a").await;
    ok(BURROW, &home, &["tunnel", "create", "web"]).await;
    ok(BURROW, &home, &["tunnel", "route", "dns", "web", "web.test"]).await;
    let origin = named_origin("web").await;
    let b = format!("127.0.0.1:{}", edges.node("b").ports.tunnel);
    let url = format!("http://{origin}");
    let _connector = Process::spawn(
        BURROW,
        &[
            "tunnel",
            "run",
            "web",
            "--url",
            &url,
            "--edge",
            &b,
            "--ha-connections",
            "1",
        ],
        &[("BURROW_HOME", &home)],
    );
    for name in ["b", "a", "c"] {
        let ports = &edges.node(name).ports;
        eventually(
            Duration::from_secs(20),
            &format!("edge {name} to serve web.test"),
            || async { served(ports, "web.test").await == Some((StatusCode::OK, "web".into())) },
        )
        .await;
    }
}
