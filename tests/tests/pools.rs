//! Load-balanced pools end to end: a real edge, real connectors (in this process, and as child
//! processes for kill -9), real origins. Steering, health, failover, affinity.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use burrow_edge::control::tunnels_file::{PoolEntry, RouteEntry, TunnelsFile};
use burrow_edge::plugins::binding::PluginBinding;
use burrow_edge::pools::pool::{Monitor, PoolOrigin, PoolSpec, Steering};
use burrow_tests::*;
use burrow_tunnel::credentials::CredentialsFile;
use http::{Response, StatusCode};

const BURROW: &str = env!("CARGO_BIN_EXE_e2e-burrow");

/// An origin answering its name, with a `/health` whose status the test sets.
async fn origin(name: &'static str) -> (SocketAddr, Arc<AtomicU16>) {
    slow_origin(name, Duration::ZERO).await
}

/// [`origin`] that takes `delay` to answer.
async fn slow_origin(name: &'static str, delay: Duration) -> (SocketAddr, Arc<AtomicU16>) {
    let status = Arc::new(AtomicU16::new(200));
    let health = status.clone();
    let addr = serve_origin(move |req| {
        let health = health.clone();
        async move {
            if req.uri().path() == "/health" {
                let code = StatusCode::from_u16(health.load(Ordering::Relaxed)).unwrap();
                return Response::builder().status(code).body(full("health")).unwrap();
            }
            tokio::time::sleep(delay).await;
            Response::new(full(name))
        }
    })
    .await;
    (addr, status)
}

/// A monitor that reacts in about two seconds (tests only; the default interval is 15 s).
fn quick_monitor() -> Monitor {
    Monitor {
        path: "/health".into(),
        interval_secs: 1,
        timeout_secs: 1,
        healthy_threshold: 1,
        unhealthy_threshold: 2,
        ..Default::default()
    }
}

fn spec(origins: &[(&str, u32)], steering: Steering) -> PoolSpec<String> {
    PoolSpec {
        origins: origins
            .iter()
            .map(|(tunnel, weight)| PoolOrigin {
                tunnel: (*tunnel).into(),
                weight: *weight,
                enabled: true,
            })
            .collect(),
        steering,
        ..Default::default()
    }
}

/// Tunnels of one account (a pool's origins must share its account).
fn same_account(names: &[&str]) -> Vec<TestTunnel> {
    let mut tunnels: Vec<TestTunnel> = names.iter().map(|n| TestTunnel::new(n)).collect();
    let account = tunnels[0].account;
    for t in &mut tunnels {
        t.account = account;
    }
    tunnels
}

/// One tunnel, origin and in-process connector per name; `pools` and `routes` (hostname → pool)
/// in the edge's tunnels file.
struct Lab {
    edge: TestEdge,
    file: TunnelsFile,
    health: HashMap<&'static str, Arc<AtomicU16>>,
    _connectors: Vec<TestConnector>,
}

async fn lab(names: &[&'static str], pools: Vec<(&str, PoolSpec<String>)>, routes: &[(&str, &str)]) -> Lab {
    lab_with(names, pools, routes, EdgeOptions::default(), &HashMap::new()).await
}

/// [`lab`] with edge options and per-origin answer delays.
async fn lab_with(
    names: &[&'static str],
    pools: Vec<(&str, PoolSpec<String>)>,
    routes: &[(&str, &str)],
    options: EdgeOptions,
    delays: &HashMap<&str, Duration>,
) -> Lab {
    init_logging();
    let tunnels = same_account(names);
    let mut file = tunnels_file(&tunnels.iter().collect::<Vec<_>>(), &[]);
    file.pools = pools
        .into_iter()
        .map(|(name, spec)| PoolEntry {
            name: name.into(),
            spec,
        })
        .collect();
    file.routes = routes
        .iter()
        .map(|(hostname, pool)| RouteEntry {
            hostname: (*hostname).into(),
            tunnel: None,
            pool: Some((*pool).into()),
            plugins: Vec::new(),
        })
        .collect();
    let edge = TestEdge::start_with(&file, options).await;
    let mut health = HashMap::new();
    let mut connectors = Vec::new();
    for (name, tunnel) in names.iter().zip(&tunnels) {
        let delay = delays.get(name).copied().unwrap_or_default();
        let (addr, status) = slow_origin(name, delay).await;
        health.insert(*name, status);
        connectors.push(TestConnector::to_url(
            edge.credentials(tunnel),
            &format!("http://{addr}"),
            1,
        ));
    }
    for tunnel in &tunnels {
        edge.wait_connections(tunnel, 1).await;
    }
    Lab {
        edge,
        file,
        health,
        _connectors: connectors,
    }
}

/// Send `n` GETs from `workers` concurrent clients; count answers by body ("503" for errors).
async fn spread(edge: SocketAddr, host: &str, n: usize, workers: usize) -> HashMap<String, usize> {
    let sent = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (sent, host) = (sent.clone(), host.to_owned());
        tasks.push(tokio::spawn(async move {
            let client = http1_client();
            let mut seen: HashMap<String, usize> = HashMap::new();
            while sent.fetch_add(1, Ordering::Relaxed) < n {
                let response = get(&client, edge, &host, "/").await.unwrap();
                let key = match response.status {
                    StatusCode::OK => response.text(),
                    other => other.as_u16().to_string(),
                };
                *seen.entry(key).or_default() += 1;
            }
            seen
        }));
    }
    let mut total = HashMap::new();
    for task in tasks {
        for (k, v) in task.await.unwrap() {
            *total.entry(k).or_default() += v;
        }
    }
    total
}

#[tokio::test]
async fn weights_1_2_1_split_3000_requests_within_5_percent() {
    let pools = vec![
        ("rr", spec(&[("a", 1), ("b", 2), ("c", 1)], Steering::RoundRobin)),
        ("random", spec(&[("a", 1), ("b", 2), ("c", 1)], Steering::Random)),
    ];
    let lab = lab(&["a", "b", "c"], pools, &[("rr.test", "rr"), ("random.test", "random")]).await;
    for host in ["rr.test", "random.test"] {
        let seen = spread(lab.edge.http, host, 3000, 8).await;
        for (name, want) in [("a", 750.0), ("b", 1500.0), ("c", 750.0)] {
            let got = seen.get(name).copied().unwrap_or_default() as f64;
            // Round robin is exact; random is held to ±5 points of the share (≈ 6 σ at n = 3000).
            let tolerance = if host == "rr.test" { want * 0.05 } else { 150.0 };
            assert!(
                (got - want).abs() <= tolerance,
                "{host}: {name} got {got}, want {want}: {seen:?}"
            );
        }
        assert_eq!(seen.values().sum::<usize>(), 3000, "{host}: only 200s: {seen:?}");
    }
}

#[tokio::test]
async fn failing_monitor_takes_origins_out_then_fallback_then_503() {
    let mut main = spec(&[("a", 1), ("b", 1)], Steering::RoundRobin);
    main.monitor = Some(quick_monitor());
    main.fallback = Some("backup".into());
    let mut backup = spec(&[("d", 1)], Steering::Random);
    backup.monitor = Some(quick_monitor());
    let lab = lab(
        &["a", "b", "d"],
        vec![("backup", backup), ("main", main)],
        &[("lb.test", "main")],
    )
    .await;
    let seen = spread(lab.edge.http, "lb.test", 20, 1).await;
    assert_eq!((seen["a"], seen["b"]), (10, 10), "both serve while healthy: {seen:?}");

    // a's monitor path fails: it is taken out within interval × threshold (+ a probe timeout).
    lab.health["a"].store(500, Ordering::Relaxed);
    let started = Instant::now();
    eventually(Duration::from_secs(5), "a to be taken out", || async {
        !spread(lab.edge.http, "lb.test", 10, 1).await.contains_key("a")
    })
    .await;
    let taken_out = started.elapsed();
    let seen = spread(lab.edge.http, "lb.test", 30, 3).await;
    assert_eq!(seen.get("b"), Some(&30), "traffic goes to the healthy origin: {seen:?}");
    let metrics = lab.edge.state.metrics.encode();
    assert!(metrics.contains(r#",pool="main",origin="a"} 0"#), "{metrics}");
    assert!(taken_out <= Duration::from_secs(4), "took {taken_out:?}");

    // All of main down → the fallback pool serves.
    lab.health["b"].store(503, Ordering::Relaxed);
    eventually(Duration::from_secs(5), "the fallback pool to serve", || async {
        spread(lab.edge.http, "lb.test", 5, 1).await.get("d") == Some(&5)
    })
    .await;

    // Fallback down too → 503 naming the pool.
    lab.health["d"].store(500, Ordering::Relaxed);
    let client = http1_client();
    eventually(Duration::from_secs(5), "503 no_healthy_origin", || async {
        get(&client, lab.edge.http, "lb.test", "/").await.unwrap().status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let response = get(&client, lab.edge.http, "lb.test", "/").await.unwrap();
    assert_eq!(response.headers["burrow-error"], "no_healthy_origin");
    assert!(
        !response.text().contains("main"),
        "the pool's name stays off the page: {}",
        response.text()
    );

    // a recovers → it serves again (healthy threshold 1).
    lab.health["a"].store(200, Ordering::Relaxed);
    eventually(Duration::from_secs(5), "a to come back", || async {
        spread(lab.edge.http, "lb.test", 5, 1).await.get("a") == Some(&5)
    })
    .await;
}

#[tokio::test]
async fn hash_keeps_a_client_on_one_origin_and_affinity_survives_a_table_swap() {
    let mut hashed = spec(&[("a", 1), ("b", 1), ("c", 1)], Steering::Hash);
    hashed.hash_on = Some("header:x-user".to_owned().try_into().unwrap());
    let mut sticky = spec(&[("a", 1), ("b", 1), ("c", 1)], Steering::RoundRobin);
    sticky.affinity_ttl_secs = Some(600);
    let mut lab = lab(
        &["a", "b", "c"],
        vec![("hashed", hashed), ("sticky", sticky)],
        &[("hash.test", "hashed"), ("sticky.test", "sticky")],
    )
    .await;
    let client = http1_client();
    let edge = lab.edge.http;
    let send_as = |user: String| get_with(&client, edge, "hash.test", ("x-user", user));
    let mut used = std::collections::HashSet::new();
    for user in 0..20 {
        let (first, _) = send_as(format!("user-{user}")).await;
        for _ in 0..5 {
            assert_eq!(send_as(format!("user-{user}")).await.0, first, "user-{user} moved");
        }
        used.insert(first);
    }
    assert!(used.len() > 1, "20 users spread over more than one origin: {used:?}");

    // Affinity: the first answer sets the cookie; with it, every request lands on that origin.
    let first = get(&client, lab.edge.http, "sticky.test", "/").await.unwrap();
    let set_cookie = first.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set_cookie.starts_with("burrow-affinity=") && set_cookie.contains("Max-Age=600"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let pinned = first.text();
    let with_cookie = || async {
        let (body, set_cookie) = get_with(&client, edge, "sticky.test", ("cookie", cookie.clone())).await;
        assert!(set_cookie.is_none(), "no new pin while the cookie is valid");
        body
    };
    for _ in 0..10 {
        assert_eq!(with_cookie().await, pinned);
    }
    // A config change swaps the table: the pin holds.
    lab.file.routes.push(RouteEntry {
        hostname: "other.test".into(),
        tunnel: Some("a".into()),
        pool: None,
        plugins: Vec::new(),
    });
    lab.edge.state.swap_routes(lab.file.to_table().unwrap());
    assert!(lab.edge.state.routes.load().lookup("other.test").is_some());
    for _ in 0..10 {
        assert_eq!(with_cookie().await, pinned, "pinned across the swap");
    }
}

#[tokio::test]
async fn a_balancer_plugin_chooses_the_origin() {
    let mut fast_first = spec(&[("slow", 1), ("fast", 1)], Steering::Plugin);
    fast_first.balancer = Some(PluginBinding {
        plugin: "latency".into(),
        config: r#"{"explore-percent": 0}"#.into(),
        ..PluginBinding::default()
    });
    let options = EdgeOptions {
        plugins: vec![("latency", env!("PLUGIN_BALANCER_LATENCY"))],
        ..Default::default()
    };
    let delays = HashMap::from([("slow", Duration::from_millis(40))]);
    let lab = lab_with(
        &["slow", "fast"],
        vec![("web", fast_first)],
        &[("lb.test", "web")],
        options,
        &delays,
    )
    .await;
    // Both get measured first (the plugin tries unmeasured origins), then the fast one wins.
    let warmup = spread(lab.edge.http, "lb.test", 4, 1).await;
    assert!(warmup.contains_key("slow") && warmup.contains_key("fast"), "{warmup:?}");
    let seen = spread(lab.edge.http, "lb.test", 40, 2).await;
    assert_eq!(
        seen.get("fast"),
        Some(&40),
        "the plugin sends everything to the fast origin: {seen:?}"
    );
}

/// balancer-hash keeps each key on one origin and spreads keys over all of them, in a fresh
/// instance per request and with instances reused (a failing call would fall back to a random
/// choice and move users).
#[tokio::test]
async fn a_hash_balancer_keeps_each_user_on_one_origin() {
    for reuse in [0, 50] {
        let mut by_user = spec(&[("a", 1), ("b", 1)], Steering::Plugin);
        by_user.balancer = Some(PluginBinding {
            plugin: "hash".into(),
            config: r#"{"key": "header:x-user"}"#.into(),
            reuse,
            ..PluginBinding::default()
        });
        let options = EdgeOptions {
            plugins: vec![("hash", env!("PLUGIN_BALANCER_HASH"))],
            ..Default::default()
        };
        let lab = lab_with(
            &["a", "b"],
            vec![("web", by_user)],
            &[("lb.test", "web")],
            options,
            &HashMap::new(),
        )
        .await;
        let client = http1_client();
        let mut placed: HashMap<String, usize> = HashMap::new();
        for user in 0..20 {
            let mut seen = Vec::new();
            for _ in 0..4 {
                let header = ("x-user", format!("user-{user}"));
                let (origin, _) = get_with(&client, lab.edge.http, "lb.test", header).await;
                seen.push(origin);
            }
            assert!(
                seen.iter().all(|o| *o == seen[0]),
                "reuse {reuse}: user-{user} moved: {seen:?}"
            );
            *placed.entry(seen[0].clone()).or_default() += 1;
        }
        assert_eq!(
            placed.len(),
            2,
            "reuse {reuse}: keys spread over both origins: {placed:?}"
        );
        let metrics = get(&client, lab.edge.admin, "localhost", "/metrics")
            .await
            .unwrap()
            .text();
        let ok = r#"burrow_plugin_calls_total{plugin="hash",account="",result="ok"} 80"#;
        assert!(
            metrics.contains(ok),
            "reuse {reuse}: every choice made by the plugin:\n{metrics}"
        );
    }
}

type Client = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, TestBody>;

/// GET `/` of `host` with one more header; the body and the Set-Cookie header, if any.
async fn get_with(client: &Client, edge: SocketAddr, host: &str, header: (&str, String)) -> (String, Option<String>) {
    let request = http::Request::get(format!("http://{edge}/"))
        .header("host", host)
        .header(header.0, header.1)
        .body(empty())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let set_cookie = response
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap();
    (String::from_utf8(body.to_bytes().to_vec()).unwrap(), set_cookie)
}

/// `burrow tunnel run` as a child process, one connection.
fn connector_process(dir: &std::path::Path, edge: &TestEdge, tunnel: &TestTunnel, url: &str) -> Process {
    let path = dir.join(format!("{}.json", tunnel.name));
    edge.credentials(tunnel).save(&path).unwrap();
    let args = [
        "tunnel",
        "run",
        "--credentials-file",
        path.to_str().unwrap(),
        "--url",
        url,
        "--ha-connections",
        "1",
    ];
    Process::spawn(BURROW, &args, &[("BURROW_HOME", dir)])
}

#[tokio::test]
async fn killing_a_connector_under_load_fails_no_idempotent_request() {
    init_logging();
    let dir = TempDir::new();
    let tunnels = same_account(&["a", "b", "c"]);
    let mut file = tunnels_file(&tunnels.iter().collect::<Vec<_>>(), &[]);
    let mut pool = spec(&[("a", 1), ("b", 1), ("c", 1)], Steering::RoundRobin);
    pool.monitor = Some(quick_monitor());
    file.pools = vec![PoolEntry {
        name: "web".into(),
        spec: pool,
    }];
    file.routes = vec![RouteEntry {
        hostname: "lb.test".into(),
        tunnel: None,
        pool: Some("web".into()),
        plugins: Vec::new(),
    }];
    let edge = TestEdge::start(&file).await;
    let mut urls = Vec::new();
    let mut processes = Vec::new();
    for tunnel in &tunnels {
        let name: &'static str = Box::leak(tunnel.name.clone().into_boxed_str());
        let (addr, _) = origin(name).await;
        let url = format!("http://{addr}");
        processes.push(Some(connector_process(dir.path(), &edge, tunnel, &url)));
        urls.push(url);
    }
    for tunnel in &tunnels {
        edge.wait_connections(tunnel, 1).await;
    }

    // Bounded load: 4 clients, one request at a time each, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, http) = (stop.clone(), edge.http);
        load.push(tokio::spawn(async move {
            let client = http1_client();
            let (mut ok, mut failed) = (HashMap::<String, usize>::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match get(&client, http, "lb.test", "/").await {
                    Ok(r) if r.status == StatusCode::OK => *ok.entry(r.text()).or_default() += 1,
                    Ok(r) => failed.push(format!("{} {}", r.status, r.text())),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed_at = Instant::now();
    let _ = processes[1].take().unwrap().kill9().await;
    let healthy = || edge.state.metrics.encode();
    eventually(Duration::from_secs(10), "b to be marked unhealthy", || async {
        healthy().contains(r#",pool="web",origin="b"} 0"#)
    })
    .await;
    let marked_down = killed_at.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // b returns: it is marked healthy and serves again.
    processes[1] = Some(connector_process(dir.path(), &edge, &tunnels[1], &urls[1]));
    edge.wait_connections(&tunnels[1], 1).await;
    eventually(Duration::from_secs(10), "b to be healthy again", || async {
        healthy().contains(r#",pool="web",origin="b"} 1"#)
    })
    .await;
    let returned = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut served = HashMap::<String, usize>::new();
    let mut failures = Vec::new();
    for task in load {
        let (ok, failed) = task.await.unwrap();
        for (k, v) in ok {
            *served.entry(k).or_default() += v;
        }
        failures.extend(failed);
    }
    assert!(failures.is_empty(), "idempotent requests never fail: {failures:?}");
    assert!(
        served.get("b").is_some_and(|n| *n > 0),
        "b served before and after: {served:?}"
    );
    // Down within the QUIC idle timeout (3 s in tests) or interval × threshold + a probe timeout.
    assert!(
        marked_down <= Duration::from_secs(5),
        "marked down after {marked_down:?}"
    );
    let after_return = spread(edge.http, "lb.test", 30, 1).await;
    assert_eq!(
        after_return.get("b"),
        Some(&10),
        "b takes its share again: {after_return:?}"
    );
    tracing::info!(?marked_down, since_return = ?returned.elapsed(), ?served, "kill -9 under load");
}

/// A connector killed with kill -9 while its origin takes a share of a pool's traffic: with the
/// edge's usual idle timeout (10 s), no request waits more than 3 s, none fails, and the pool
/// never stalls as a whole — the edge notices the silent connection, steers around it and moves
/// the requests waiting on it to the other origin.
#[tokio::test]
async fn a_killed_connector_stalls_neither_its_requests_nor_the_pool() {
    init_logging();
    let dir = TempDir::new();
    let tunnels = same_account(&["a", "b"]);
    let mut file = tunnels_file(&tunnels.iter().collect::<Vec<_>>(), &[]);
    file.pools = vec![PoolEntry {
        name: "web".into(),
        spec: spec(&[("a", 1), ("b", 1)], Steering::RoundRobin),
    }];
    file.routes = vec![RouteEntry {
        hostname: "lb.test".into(),
        tunnel: None,
        pool: Some("web".into()),
        plugins: Vec::new(),
    }];
    let options = EdgeOptions {
        tunnel_idle_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let edge = TestEdge::start_with(&file, options).await;
    let mut processes = Vec::new();
    for tunnel in &tunnels {
        let name: &'static str = Box::leak(tunnel.name.clone().into_boxed_str());
        let (addr, _) = slow_origin(name, Duration::from_millis(20)).await;
        processes.push(Some(connector_process(
            dir.path(),
            &edge,
            tunnel,
            &format!("http://{addr}"),
        )));
    }
    for tunnel in &tunnels {
        edge.wait_connections(tunnel, 1).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, http) = (stop.clone(), edge.http);
        load.push(tokio::spawn(async move {
            let client = http1_client();
            // (sent, took, answer) per request
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let sent = started.elapsed();
                let answer = match get(&client, http, "lb.test", "/").await {
                    Ok(r) if r.status == StatusCode::OK => r.text(),
                    Ok(r) => format!("{} {}", r.status, r.text()),
                    Err(e) => e.to_string(),
                };
                seen.push((sent, started.elapsed() - sent, answer));
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = started.elapsed();
    let _ = processes[1].take().unwrap().kill9().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for task in load {
        seen.extend(task.await.unwrap());
    }
    let failed: Vec<_> = seen.iter().filter(|(_, _, a)| a != "a" && a != "b").collect();
    assert!(failed.is_empty(), "idempotent requests never fail: {failed:?}");
    let slowest = seen.iter().map(|(_, took, _)| *took).max().unwrap();
    assert!(slowest <= Duration::from_secs(3), "a request waited {slowest:?}");
    // Completions in every second after the kill: the pool never stalls as a whole.
    for second in 0..4 {
        let (from, to) = (
            killed + Duration::from_secs(second),
            killed + Duration::from_secs(second + 1),
        );
        let done = seen
            .iter()
            .filter(|(sent, took, _)| (from..to).contains(&(*sent + *took)))
            .count();
        assert!(done > 0, "nothing completed between {from:?} and {to:?}");
    }
    let waited: Vec<_> = seen
        .iter()
        .filter(|(_, took, _)| *took > Duration::from_millis(200))
        .collect();
    tracing::info!(
        ?slowest,
        ?waited,
        requests = seen.len(),
        "a connector killed under load"
    );
    edge.stop().await;
}

/// Send raw bytes to `edge` and read until it closes (at most 2 s); with `abort`, leave without
/// reading (an upload left unfinished).
async fn raw_request(edge: SocketAddr, request: &[u8], abort: bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(edge).await.unwrap();
    stream.write_all(request).await.unwrap();
    if abort {
        // The visitor leaves in the middle of its upload.
        tokio::time::sleep(Duration::from_millis(50)).await;
        return;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut answer)).await;
}

/// Nothing a visitor can send at will counts against a pool's origins: after ten of each of a
/// malformed chunked body, `GET *`, `OPTIONS *` and an aborted upload, both origins of the pool still serve (5 failures in a row would eject
/// one for 10 s).
#[tokio::test]
async fn visitors_cannot_eject_a_pools_origins() {
    let lab = lab(
        &["a", "b"],
        vec![("web", spec(&[("a", 1), ("b", 1)], Steering::RoundRobin))],
        &[("lb.test", "web")],
    )
    .await;
    let http = lab.edge.http;
    let chunked =
        b"POST / HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n".to_vec();
    let aborted = b"POST / HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 100000\r\n\r\npartial upload".to_vec();
    let triggers: Vec<(Vec<u8>, bool)> = vec![
        (chunked, false),
        (b"GET * HTTP/1.1\r\nHost: lb.test\r\n\r\n".to_vec(), false),
        (
            b"OPTIONS * HTTP/1.1\r\nHost: lb.test\r\nConnection: close\r\n\r\n".to_vec(),
            false,
        ),
        (aborted, true),
    ];
    for (request, abort) in &triggers {
        for _ in 0..10 {
            raw_request(http, request, *abort).await;
        }
    }
    let metrics = lab.edge.state.metrics.encode();
    assert!(!metrics.contains(r#"pool="web",origin="a"} 0"#), "{metrics}");
    assert!(!metrics.contains(r#"pool="web",origin="b"} 0"#), "{metrics}");
    let seen = spread(http, "lb.test", 20, 1).await;
    assert_eq!(
        (seen.get("a"), seen.get("b")),
        (Some(&10), Some(&10)),
        "both still serve: {seen:?}"
    );
    lab.edge.stop().await;
}
