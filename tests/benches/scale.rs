//! Scale runs against the real `burrow-edge` binary (release build):
//!
//! - N idle tunnels, one connection each, registered with one edge: the edge's resident memory
//!   per connection (from `/proc/PID/status`, before and after);
//! - route change propagation: `PUT /v1/routes/...` on the API until the edge serves the new
//!   hostname, p50 and p99 over many changes, with those N tunnels in the table.
//!
//! `cargo bench -p burrow-tests --bench scale -- 1000 10000` (the tunnel counts; default 1000);
//! add `etcd` to run the edge on an etcd member instead of SQLite (needs `etcd` on the PATH).
//! The tunnels' connections come from this process and cost the edge what a connector's do: a
//! QUIC connection registered on its control stream and kept alive. All but the few that serve
//! the route changes share 16 client endpoints (a full connector per tunnel would need ~2 MiB of
//! socket buffers each here).
#![allow(clippy::unwrap_used, reason = "a benchmark")]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_connector::api_client::{ApiClient, Login};
use burrow_protocol::{ConnectorId, ControlMessage, Frame, Limits, PROTOCOL_VERSION, Register, TunnelCodec};
use burrow_tests::*;
use burrow_tunnel::credentials::Credentials;
use futures_util::StreamExt;
use http::{Method, StatusCode};
use serde_json::json;
use tokio_util::codec::{Encoder, FramedRead};

const BURROW_EDGE: &str = env!("CARGO_BIN_EXE_e2e-burrow-edge");
/// Route changes measured per run.
const ROUTE_CHANGES: usize = 200;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(tunnels: usize, on_etcd: bool) {
    let dir = TempDir::new();
    let etcd = match on_etcd {
        true => Some(burrow_tests::etcd::EtcdCluster::start(1).await),
        false => None,
    };
    let store = etcd.as_ref().map(|e| e.store_url());
    let (http, tunnel_port, admin, api_port) = (free_tcp_port(), free_udp_port(), free_tcp_port(), free_tcp_port());
    let data = dir.path().join("edge");
    let args = [
        "run",
        "--http",
        &format!("127.0.0.1:{http}"),
        "--https",
        "off",
        "--tunnel",
        &format!("127.0.0.1:{tunnel_port}"),
        "--admin",
        &format!("127.0.0.1:{admin}"),
        "--api",
        &format!("127.0.0.1:{api_port}"),
        "--advertise",
        &format!("127.0.0.1:{tunnel_port}"),
        "--data-dir",
        data.to_str().unwrap(),
        "--registrations-per-minute",
        "1000000",
    ];
    let mut args = args.map(String::from).to_vec();
    args.extend(store.iter().flat_map(|url| ["--store".to_owned(), url.clone()]));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let warn = Path::new("warn");
    let edge = Process::spawn(BURROW_EDGE, &args, &[("BURROW_HOME", dir.path()), ("RUST_LOG", warn)]);
    // Nothing is logged at warn when the edge is up: wait for its API instead.
    let api_addr: std::net::SocketAddr = ([127, 0, 0, 1], admin).into();
    eventually(Duration::from_secs(20), "the edge's API", || async {
        get(&http1_client(), api_addr, "localhost", "/ready").await.is_ok()
    })
    .await;
    let mut account = vec![
        "account",
        "create",
        "scale",
        "--zone",
        "test",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    account.extend(store.iter().flat_map(|url| ["--store", url.as_str()]));
    let (code, output) = Process::spawn(BURROW_EDGE, &account, &[("BURROW_HOME", dir.path())])
        .wait(Duration::from_secs(30))
        .await;
    assert_eq!(code, Some(0), "{output}");
    let token = output
        .lines()
        .find_map(|l| l.split("keep it secret): ").nth(1))
        .unwrap()
        .trim()
        .to_owned();
    let api = Arc::new(
        ApiClient::new(Login {
            api: format!("http://127.0.0.1:{api_port}"),
            token,
            api_ca: None,
        })
        .unwrap(),
    );

    // The tunnels, through the API (8 at a time).
    let started = Instant::now();
    let mut credentials: Vec<Credentials> = Vec::with_capacity(tunnels);
    for chunk in (0..tunnels).collect::<Vec<_>>().chunks(8) {
        let created = chunk.iter().map(|i| {
            let api = api.clone();
            let body = json!({ "name": format!("t{i}") });
            async move {
                burrow_tests::api_json(&api, Method::POST, "/v1/tunnels", Some(body))
                    .await
                    .unwrap()
            }
        });
        for body in futures_util::future::join_all(created).await {
            credentials.push(serde_json::from_value(body["credentials"].clone()).unwrap());
        }
    }
    let created_in = started.elapsed();
    let origin = named_origin("scale").await;
    let url = format!("http://{origin}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kib(edge.pid());

    // One connection per tunnel, then let them settle into idleness. Real connectors serve the
    // tunnels the route changes use.
    let started = Instant::now();
    let serving = tunnels.min(SERVING);
    let connectors: Vec<TestConnector> = credentials[..serving]
        .iter()
        .map(|c| TestConnector::to_url(c.clone(), &url, 1))
        .collect();
    // Connectors have a socket each; a few here, so that one socket's buffer does not drop
    // the handshakes of 64 at once.
    let endpoints: Vec<quinn::Endpoint> = (0..16).map(|_| idle_endpoint(&credentials[0])).collect();
    let edge_addr: std::net::SocketAddr = ([127, 0, 0, 1], tunnel_port).into();
    let mut idle = Vec::with_capacity(tunnels);
    for chunk in credentials[serving..].chunks(64) {
        let registered =
            (chunk.iter().enumerate()).map(|(i, c)| register_idle(&endpoints[i % endpoints.len()], edge_addr, c));
        idle.extend(futures_util::future::join_all(registered).await);
    }
    eventually(Duration::from_secs(60), "every tunnel registered", || async {
        connectors.iter().all(|c| c.status.ready_connections() == 1)
    })
    .await;
    let connected_in = started.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = rss_kib(edge.pid());
    let per_connection = (after.saturating_sub(before) as f64) * 1024.0 / tunnels as f64;

    // Route changes: API write → the edge serves the hostname.
    let client = http1_client();
    let edge_http: std::net::SocketAddr = ([127, 0, 0, 1], http).into();
    let mut times = Vec::with_capacity(ROUTE_CHANGES);
    for i in 0..ROUTE_CHANGES {
        let host = format!("r{i}.scale.test");
        let body = json!({ "tunnel": format!("t{}", i % serving) });
        let started = Instant::now();
        burrow_tests::api_json(&api, Method::PUT, &format!("/v1/routes/{host}"), Some(body))
            .await
            .unwrap();
        loop {
            let served = get(&client, edge_http, &host, "/").await;
            if matches!(served, Ok(r) if r.status == StatusCode::OK) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "{host} never served");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "| {tunnels} | {:.1} s | {:.1} s | {:.0} MiB → {:.0} MiB | {:.1} KiB | {:.1} ms | {:.1} ms |",
        created_in.as_secs_f64(),
        connected_in.as_secs_f64(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        per_connection / 1024.0,
        percentile(&times, 0.5).as_secs_f64() * 1000.0,
        percentile(&times, 0.99).as_secs_f64() * 1000.0,
    );
    for connector in connectors {
        connector.stop().await.ok();
    }
    drop(idle);
    drop(edge);
}

/// Tunnels served by real connectors (the route changes point at them).
const SERVING: usize = 8;

/// The client endpoint the idle connections share, configured like a connector's.
fn idle_endpoint(credentials: &Credentials) -> quinn::Endpoint {
    let mut quic = burrow_tunnel::tls::edge_client_config(credentials.edge_ca.as_deref()).unwrap();
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(2)));
    transport.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(10_000))));
    quic.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).unwrap();
    endpoint.set_default_client_config(quic);
    endpoint
}

/// What keeps an idle registered connection open: the connection and its control stream.
type Idle = (
    quinn::Connection,
    quinn::SendStream,
    FramedRead<quinn::RecvStream, TunnelCodec>,
);

/// Connect and register as the tunnel of `credentials`, as a connector does, and stay idle. A
/// tunnel the edge's table does not hold yet (just created) is tried again, as connectors do.
async fn register_idle(endpoint: &quinn::Endpoint, edge: std::net::SocketAddr, c: &Credentials) -> Idle {
    for _ in 0..240 {
        if let Some(idle) = try_register(endpoint, edge, c).await {
            return idle;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("tunnel {} never registered", c.tunnel_name)
}

async fn try_register(endpoint: &quinn::Endpoint, edge: std::net::SocketAddr, c: &Credentials) -> Option<Idle> {
    let conn = endpoint.connect(edge, "localhost").unwrap().await.unwrap();
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let register = Register {
        protocol: PROTOCOL_VERSION,
        account: c.account,
        tunnel_id: c.tunnel_id,
        secret: c.secret.clone(),
        conn_index: 0,
        connector_id: ConnectorId::new_random(),
        version: "scale-bench".into(),
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
    };
    let mut buf = bytes::BytesMut::new();
    TunnelCodec::new(Limits::default())
        .encode(Frame::Control(ControlMessage::Register(register)), &mut buf)
        .unwrap();
    send.write_all(&buf).await.unwrap();
    let mut control = FramedRead::new(recv, TunnelCodec::new(Limits::default()));
    match control.next().await {
        Some(Ok(Frame::Control(ControlMessage::Registered(_)))) => Some((conn, send, control)),
        Some(Ok(Frame::Control(ControlMessage::Rejected(_)))) => None,
        other => panic!("registration of {}: {other:?}", c.tunnel_name),
    }
}

fn main() {
    let counts: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let on_etcd = std::env::args().any(|a| a == "etcd");
    let counts = if counts.is_empty() { vec![1000] } else { counts };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("| tunnels | created (API) | connected | edge RSS | RSS per idle connection | route change p50 | p99 |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for tunnels in counts {
        runtime.block_on(run(tunnels, on_etcd));
    }
}
