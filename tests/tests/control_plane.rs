//! The control plane end to end: the real `burrow-edge` with its SQLite store and API, the real
//! `burrow` CLI, real origins.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use burrow_edge::control::resources::RouteTo;
use burrow_tests::*;
use burrow_tunnel::credentials::CredentialsFile;
use http::StatusCode;

const BURROW: &str = env!("CARGO_BIN_EXE_e2e-burrow");
const BURROW_EDGE: &str = env!("CARGO_BIN_EXE_e2e-burrow-edge");

fn edge(dir: &Path, ports: &Ports) -> Process {
    edge_with(dir, ports, &[])
}

fn edge_with(dir: &Path, ports: &Ports, extra: &[&str]) -> Process {
    edge_process(BURROW_EDGE, dir, ports, extra)
}

/// `burrow-edge account create --zone ZONE` then `burrow login` into `home`.
async fn account(dir: &Path, ports: &Ports, name: &str, zone: &str, home: &Path) {
    let output = ok(
        BURROW_EDGE,
        dir,
        &[
            "account",
            "create",
            name,
            "--zone",
            zone,
            "--data-dir",
            dir.join("edge").to_str().unwrap(),
        ],
    )
    .await;
    let token = shown_once(&output);
    std::fs::create_dir_all(home).unwrap();
    ok(BURROW, home, &["login", "--api", &ports.api(), "--token", &token]).await;
}

/// An edge process on fresh ports with an account "alice" logged in at `<dir>/alice`.
async fn edge_with_alice(dir: &Path) -> (Ports, std::path::PathBuf, Process) {
    let ports = Ports::default();
    let alice = dir.join("alice");
    let edge = edge(dir, &ports);
    edge.wait_for_output("tunnel listener ready").await;
    account(dir, &ports, "alice", "test", &alice).await;
    (ports, alice, edge)
}

/// The status of `GET /` for `host`, with `x-api-key: key` if given.
async fn key_status(ports: &Ports, host: &str, key: Option<&str>) -> Option<u16> {
    let mut request = http::Request::get(format!("http://{}/", ports.http())).header("host", host);
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    let response = http1_client().request(request.body(empty()).unwrap()).await.ok()?;
    Some(response.status().as_u16())
}

#[tokio::test]
async fn tunnel_lifecycle_through_the_cli() {
    init_logging();
    let dir = TempDir::new();
    let (ports, alice, edge) = edge_with_alice(dir.path()).await;

    let created = ok(BURROW, &alice, &["tunnel", "create", "web"]).await;
    assert!(created.contains("Created tunnel web with id"), "{created}");
    let id = created
        .split("with id ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    ok(BURROW, &alice, &["tunnel", "route", "dns", "web", "web.test"]).await;

    let origin = named_origin("web").await;
    let url = format!("http://{origin}");
    // Restart the connector 5 times: the tunnel and its route never change, and nothing that
    // routing depends on is written (the edge's snapshot keeps its revision).
    let snapshot_path = dir.path().join("edge").join("snapshot.json");
    let routing_state =
        || serde_json::from_slice::<serde_json::Value>(&std::fs::read(&snapshot_path).unwrap()).unwrap();
    let mut before = None;
    for _ in 0..5 {
        let connector = Process::spawn(
            BURROW,
            &["tunnel", "run", "web", "--url", &url, "--grace-period", "5s"],
            &[("BURROW_HOME", &alice)],
        );
        eventually(Duration::from_secs(20), "web.test to be served", || async {
            served(&ports, "web.test").await == Some((StatusCode::OK, "web".into()))
        })
        .await;
        let list = ok(BURROW, &alice, &["tunnel", "list", "--output", "json"]).await;
        let tunnels: serde_json::Value = serde_json::from_str(&list).unwrap();
        assert_eq!(tunnels.as_array().unwrap().len(), 1, "{list}");
        assert_eq!(tunnels[0]["id"], id.as_str(), "the tunnel keeps its UUID");
        // Written beside the swap, a moment after it.
        eventually(
            Duration::from_secs(5),
            "the snapshot on disk to hold the route",
            || async { routing_state()["routes"].as_array().is_some_and(|r| r.len() == 1) },
        )
        .await;
        let state = routing_state();
        assert_eq!(
            before.get_or_insert_with(|| state.clone()),
            &state,
            "no routing write across restarts"
        );
        connector.signal("TERM");
        let (code, output) = connector.wait(Duration::from_secs(20)).await;
        assert_eq!(code, Some(0), "{output}");
    }

    // The last run uses a token instead of the credentials file (as in a container).
    let token = ok(BURROW, &alice, &["tunnel", "token", "web"]).await.trim().to_owned();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let run = ["tunnel", "run", "--token", token.as_str(), "--url", url.as_str()];
    let connector = Process::spawn(BURROW, &run, &[("BURROW_HOME", &elsewhere)]);
    connector.wait_for_output("registered tunnel connection").await;
    eventually(Duration::from_secs(20), "4 connections in `tunnel list`", || async {
        let list = ok(BURROW, &alice, &["tunnel", "list"]).await;
        list.contains("4x")
    })
    .await;
    let list = ok(BURROW, &alice, &["tunnel", "list", "--output", "json"]).await;
    assert!(!list.contains("secret"), "no secret material in list output: {list}");
    let info = ok(BURROW, &alice, &["tunnel", "info", "web"]).await;
    assert!(info.contains("CONNECTOR ID") && info.contains("127.0.0.1"), "{info}");

    // Routes: listed with their tunnel's name; a deleted one stops serving, the tunnel stays.
    ok(BURROW, &alice, &["tunnel", "route", "dns", "web", "more.test"]).await;
    let routes = ok(BURROW, &alice, &["tunnel", "route", "list"]).await;
    assert!(
        routes.contains("web.test") && routes.contains("more.test") && routes.contains("tunnel web"),
        "{routes}"
    );
    ok(BURROW, &alice, &["tunnel", "route", "delete", "more.test"]).await;
    let routes = ok(BURROW, &alice, &["tunnel", "route", "list", "-o", "json"]).await;
    assert!(routes.contains("web.test") && !routes.contains("more.test"), "{routes}");
    eventually(Duration::from_secs(5), "more.test to stop serving", || async {
        matches!(served(&ports, "more.test").await, Some((StatusCode::NOT_FOUND, _)))
    })
    .await;
    let (code, output) = cli(BURROW, &alice, &["tunnel", "route", "delete", "more.test"]).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("not found"), "{output}");

    let (code, refused) = cli(BURROW, &alice, &["tunnel", "delete", "web"]).await;
    assert_eq!(code, Some(1), "{refused}");
    assert!(refused.contains("live connection"), "{refused}");
    ok(BURROW, &alice, &["tunnel", "delete", "web", "--force"]).await;
    eventually(Duration::from_secs(5), "the route to disappear", || async {
        matches!(served(&ports, "web.test").await, Some((StatusCode::NOT_FOUND, _)))
    })
    .await;
    let routes = ok(BURROW, &alice, &["tunnel", "route", "list"]).await;
    assert!(routes.contains("No routes yet"), "{routes}");
    let (code, output) = connector.wait(Duration::from_secs(10)).await;
    assert_eq!(code, Some(1), "the connector stops: its tunnel is gone: {output}");
    assert!(output.contains("was deleted"), "{output}");
    drop(edge);
}

#[tokio::test]
async fn accounts_are_isolated() {
    init_logging();
    let dir = TempDir::new();
    let ports = Ports::default();
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let edge = edge(dir.path(), &ports);
    edge.wait_for_output("tunnel listener ready").await;
    account(dir.path(), &ports, "alice", "test", &alice).await;
    account(dir.path(), &ports, "bob", "example", &bob).await;
    ok(BURROW, &alice, &["tunnel", "create", "web"]).await;
    ok(BURROW, &alice, &["tunnel", "route", "dns", "web", "shop.test"]).await;
    ok(BURROW, &bob, &["tunnel", "create", "other"]).await;

    let list = ok(BURROW, &bob, &["tunnel", "list", "--output", "json"]).await;
    assert!(!list.contains("\"web\""), "bob does not see alice's tunnels: {list}");
    let (code, output) = cli(BURROW, &bob, &["tunnel", "info", "web"]).await;
    assert_eq!(code, Some(1));
    assert!(output.contains("not found"), "{output}");
    let (code, output) = cli(BURROW, &bob, &["tunnel", "delete", "web", "--force"]).await;
    assert_eq!(code, Some(1));
    assert!(output.contains("not found"), "{output}");
    let (code, output) = cli(BURROW, &bob, &["tunnel", "route", "dns", "other", "shop.test"]).await;
    assert_eq!(code, Some(1));
    assert!(
        output.contains("not under a zone of your account"),
        "a hostname in alice's zone cannot be taken: {output}"
    );

    // Bob cannot serve alice's tunnel with his own account and a forged secret.
    let alice_creds = std::fs::read_dir(&alice)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json") && !p.ends_with("cert.json"))
        .unwrap();
    let mut forged = burrow_tunnel::credentials::Credentials::load(&alice_creds).unwrap();
    let bob_creds = std::fs::read_dir(&bob)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json") && !p.ends_with("cert.json"))
        .unwrap();
    forged.account = burrow_tunnel::credentials::Credentials::load(&bob_creds)
        .unwrap()
        .account;
    let forged_path = bob.join("forged.json");
    forged.save(&forged_path).unwrap();
    let (code, output) = cli(
        BURROW,
        &bob,
        &[
            "tunnel",
            "run",
            "--credentials-file",
            forged_path.to_str().unwrap(),
            "--url",
            "http://127.0.0.1:9",
        ],
    )
    .await;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("refused the tunnel"), "{output}");

    // Every mutating call is in the audit trail, with who and what; secrets are not.
    let log = edge.output();
    let audit: Vec<&str> = log.lines().filter(|l| l.contains("audit")).collect();
    assert!(
        audit
            .iter()
            .any(|l| l.contains("method=PUT") && l.contains("/v1/routes/shop.test") && l.contains("status=200")),
        "{log}"
    );
    assert!(
        audit
            .iter()
            .any(|l| l.contains("/v1/routes/shop.test") && l.contains("status=403")),
        "refused calls too: {log}"
    );
    for home in [&alice, &bob] {
        let login: serde_json::Value = serde_json::from_slice(&std::fs::read(home.join("cert.json")).unwrap()).unwrap();
        assert!(
            !log.contains(login["token"].as_str().unwrap()),
            "an API token is in the edge log"
        );
    }
    drop(edge);
}

/// Failed authentications are limited per client and per token id, never so that a valid
/// token stops working: behind a proxy in front of the API (trusted, so its X-Forwarded-For
/// names the client) one guesser does not lock everyone out, and a guessed token id cools down.
#[tokio::test]
async fn api_token_guessing_is_rate_limited() {
    init_logging();
    let dir = TempDir::new();
    let options = EdgeOptions {
        trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
        ..Default::default()
    };
    let (edge, control) = TestEdge::start_with_store_options(dir.path(), options).await;
    let (_account, token) = account_in_test_zone(&control, "alice").await;
    let client = http1_client();
    let call = |token: String, from: &'static str| {
        let client = client.clone();
        let admin = edge.api;
        async move {
            let request = http::Request::get(format!("http://{admin}/v1/account"))
                .header("authorization", format!("Bearer {token}"))
                .header("x-forwarded-for", from)
                .body(empty())
                .unwrap();
            client.request(request).await.unwrap().status()
        }
    };
    let (guesser, user) = ("203.0.113.7", "203.0.113.8");
    assert_eq!(call(token.clone(), user).await, StatusCode::OK);
    for i in 0..10 {
        let guess = format!("burrow_{:016x}_guess{i}", i);
        assert_eq!(call(guess, guesser).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        call("burrow_0000000000000abc_more".into(), guesser).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        call("burrow_0000000000000abd_typo".into(), user).await,
        StatusCode::UNAUTHORIZED,
        "another client behind the same proxy has its own budget"
    );
    // The right token works, from the proxy's other clients and from the guesser's network too.
    assert_eq!(call(token.clone(), user).await, StatusCode::OK);
    assert_eq!(call(token.clone(), guesser).await, StatusCode::OK);
    // Guessing one token id's secret: that id cools down, checked or not.
    let id = token.split('_').nth(1).unwrap();
    for i in 0..11 {
        let _ = call(format!("burrow_{id}_wrong{i}"), "198.51.100.1").await;
    }
    assert_eq!(call(token, user).await, StatusCode::TOO_MANY_REQUESTS);
    edge.stop().await;
}

/// API bodies are bounded: an oversized one is refused with 413 before it is parsed, and nothing
/// is created; the same call at a sane size still works.
#[tokio::test]
async fn oversized_api_bodies_get_a_413_and_change_nothing() {
    init_logging();
    let dir = TempDir::new();
    let (edge, control) = TestEdge::start_with_store(dir.path()).await;
    let (account, token) = account_in_test_zone(&control, "alice").await;
    let client = http1_client();
    let (client, token, admin) = (&client, &token, edge.api);
    let create = move |name: String| async move {
        let body = serde_json::json!({ "name": name });
        let response = api_call(client, admin, token, "POST", "/v1/tunnels", body)
            .await
            .unwrap();
        (response.status, response.text())
    };
    let (status, body) = create("x".repeat(100 * 1024)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body.contains("body_too_large") && body.contains("65536"), "{body}");
    assert!(control.list_tunnels(account.id, None, 10).await.unwrap().is_empty());
    let (status, body) = create("web".into()).await;
    assert!(status.is_success(), "{status}: {body}");
    edge.stop().await;
}

#[tokio::test]
async fn edge_serves_from_its_snapshot_when_the_store_is_gone() {
    init_logging();
    let dir = TempDir::new();
    let (ports, alice, first) = edge_with_alice(dir.path()).await;
    ok(BURROW, &alice, &["tunnel", "create", "web"]).await;
    ok(BURROW, &alice, &["tunnel", "route", "dns", "web", "web.test"]).await;
    let origin = named_origin("web").await;
    let url = format!("http://{origin}");
    let connector = Process::spawn(
        BURROW,
        &["tunnel", "run", "web", "--url", &url],
        &[("BURROW_HOME", &alice)],
    );
    eventually(Duration::from_secs(20), "web.test to be served", || async {
        served(&ports, "web.test").await == Some((StatusCode::OK, "web".into()))
    })
    .await;

    // The control plane goes away for good: the store file is replaced by something unreadable.
    let _ = first.kill9().await;
    let store = dir.path().join("edge").join("store.db");
    std::fs::rename(&store, dir.path().join("store.db.gone")).unwrap();
    std::fs::create_dir(&store).unwrap();

    // The restarted edge serves from its snapshot; the connector re-registers against it.
    let second = edge(dir.path(), &ports);
    second.wait_for_output("serving the last config snapshot").await;
    eventually(Duration::from_secs(30), "web.test served from the snapshot", || async {
        served(&ports, "web.test").await == Some((StatusCode::OK, "web".into()))
    })
    .await;
    drop(connector);
    drop(second);
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    init_logging();
    let dir = TempDir::new();
    let (ports, alice, first) = edge_with_alice(dir.path()).await;
    ok(BURROW, &alice, &["tunnel", "create", "web"]).await;
    let login: serde_json::Value = serde_json::from_slice(&std::fs::read(alice.join("cert.json")).unwrap()).unwrap();
    let token = login["token"].as_str().unwrap().to_owned();

    // A stream of route writes; kill -9 the edge in the middle of it.
    let api = ports.api();
    let writer = tokio::spawn(async move {
        let client = http1_client();
        let mut acknowledged = Vec::new();
        for i in 0..10_000 {
            let host = format!("h{i}.test");
            let request = http::Request::put(format!("{api}/v1/routes/{host}"))
                .header("authorization", format!("Bearer {token}"))
                .body(full(r#"{"tunnel":"web"}"#))
                .unwrap();
            match client.request(request).await {
                Ok(response) if response.status().is_success() => acknowledged.push(host),
                _ => break,
            }
        }
        acknowledged
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _ = first.kill9().await;
    let acknowledged = writer.await.unwrap();
    assert!(
        acknowledged.len() > 5,
        "the writer made progress before the kill: {}",
        acknowledged.len()
    );

    let second = edge(dir.path(), &ports);
    second.wait_for_output("tunnel listener ready").await;
    let routes = ok(BURROW, &alice, &["tunnel", "list", "--output", "json"]).await;
    assert!(routes.contains("\"web\""), "{routes}");
    let client = http1_client();
    let login: serde_json::Value = serde_json::from_slice(&std::fs::read(alice.join("cert.json")).unwrap()).unwrap();
    let request = http::Request::get(format!("{}/v1/routes", ports.api()))
        .header("authorization", format!("Bearer {}", login["token"].as_str().unwrap()))
        .body(empty())
        .unwrap();
    let response = client.request(request).await.unwrap();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let stored: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let stored: Vec<&str> = stored["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["hostname"].as_str().unwrap())
        .collect();
    let lost: Vec<_> = acknowledged.iter().filter(|h| !stored.contains(&h.as_str())).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    drop(second);
}

/// Deleting a tunnel closes its connections with a code that tells the connector to stop. The
/// close ends the control stream and the wait for request streams at the same instant; whichever
/// the connector notices first, it must stop with "was deleted" instead of retrying a tunnel
/// that is gone (CI once saw all four connections of a connector take the wrong branch).
#[tokio::test]
async fn a_deleted_tunnels_connector_stops_whichever_stream_sees_the_close() {
    init_logging();
    let dir = TempDir::new();
    let (edge, control) = TestEdge::start_with_store(dir.path()).await;
    let (account, _token) = account_in_test_zone(&control, "alice").await;
    let origin = named_origin("ok").await;
    // One connection per round, so each round is one draw of the race.
    for round in 0..8 {
        let name = format!("web{round}");
        let (tunnel, secret) = control.create_tunnel(account.id, &name).await.unwrap();
        let connector = edge
            .serve_store_tunnel(&tunnel, secret, &format!("http://{origin}"), 1)
            .await;
        control.delete_tunnel(account.id, &name, true).await.unwrap();
        let Ok(ended) = tokio::time::timeout(Duration::from_secs(10), connector.join()).await else {
            panic!("round {round}: the connector kept retrying a deleted tunnel");
        };
        let err = ended.unwrap_err();
        assert!(format!("{err:#}").contains("was deleted"), "round {round}: {err:#}");
    }
    edge.stop().await;
}

#[tokio::test]
async fn route_changes_apply_live_without_failing_requests() {
    init_logging();
    let dir = TempDir::new();
    let (edge, control) = TestEdge::start_with_store(dir.path()).await;
    let (account, _token) = account_in_test_zone(&control, "alice").await;
    let (tunnel, secret) = control.create_tunnel(account.id, "web").await.unwrap();
    control
        .route(account.id, "stable.test", RouteTo::Tunnel("web"), false, None)
        .await
        .unwrap();
    let origin = named_origin("ok").await;
    let connector = edge
        .serve_store_tunnel(&tunnel, secret, &format!("http://{origin}"), 2)
        .await;
    let http = edge.http;
    eventually(Duration::from_secs(10), "the first table from the store", || async {
        matches!(get(&http1_client(), http, "stable.test", "/").await, Ok(r) if r.status == StatusCode::OK)
    })
    .await;

    // A bounded load on one hostname while 100 other routes change.
    let load = Load::start(http, "stable.test", &[], 1);
    for i in 0..100 {
        control
            .route(account.id, &format!("h{i}.test"), RouteTo::Tunnel("web"), false, None)
            .await
            .unwrap();
    }
    // The last change is served.
    eventually(Duration::from_secs(5), "the 100th route to be served", || async {
        matches!(get(&http1_client(), http, "h99.test", "/").await, Ok(r) if r.status == StatusCode::OK)
    })
    .await;
    load.finish_without_failures(1).await;
    assert!(
        dir.path().join("snapshot.json").exists(),
        "the applied config is kept on disk"
    );
    connector.stop().await.unwrap();
    edge.stop().await;
}

#[tokio::test]
async fn edge_only_node_survives_a_control_plane_outage() {
    init_logging();
    let dir = TempDir::new();
    let (cp_dir, node_dir) = (dir.path().join("cp"), dir.path().join("node"));
    let (cp_ports, node_ports) = (Ports::default(), Ports::default());
    let alice = dir.path().join("alice");
    let control_plane = edge(&cp_dir, &cp_ports);
    control_plane.wait_for_output("tunnel listener ready").await;
    account(&cp_dir, &cp_ports, "alice", "test", &alice).await;
    let output = ok(
        BURROW_EDGE,
        &cp_dir,
        &[
            "node-token",
            "create",
            "node-b",
            "--data-dir",
            cp_dir.join("edge").to_str().unwrap(),
        ],
    )
    .await;
    let node_token = shown_once(&output);

    // The edge-only node shares the control-plane node's certificate (as operators would).
    let (cert, key) = (cp_dir.join("edge/edge-cert.pem"), cp_dir.join("edge/edge-key.pem"));
    let node_args = [
        "--node-name",
        "node-b",
        "--control-plane",
        &cp_ports.api(),
        "--node-token",
        &node_token,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let node = edge_with(&node_dir, &node_ports, &node_args);
    node.wait_for_output("tunnel listener ready").await;

    ok(BURROW, &alice, &["tunnel", "create", "web"]).await;
    ok(BURROW, &alice, &["tunnel", "route", "dns", "web", "web.test"]).await;
    let origin = named_origin("web").await;
    let url = format!("http://{origin}");
    let node_edge = format!("127.0.0.1:{}", node_ports.tunnel);
    let run = [
        "tunnel",
        "run",
        "web",
        "--url",
        url.as_str(),
        "--edge",
        node_edge.as_str(),
        "--ha-connections",
        "2",
    ];
    let connector = Process::spawn(BURROW, &run, &[("BURROW_HOME", &alice)]);
    let serves = || async { served(&node_ports, "web.test").await == Some((StatusCode::OK, "web".into())) };
    eventually(Duration::from_secs(20), "the edge-only node to serve web.test", serves).await;

    // `pool show` prints each origin's health as each edge sees it: the connector is connected
    // to the edge-only node only.
    ok(BURROW, &alice, &["tunnel", "route", "lb", "web", "lb.test", "web-pool"]).await;
    eventually(Duration::from_secs(20), "both edges' views in pool show", || async {
        let show = ok(BURROW, &alice, &["pool", "show", "web-pool"]).await;
        let line = |needle: &str| show.lines().find(|l| l.contains(needle)).unwrap_or_default().to_owned();
        line("node-b").trim_end().ends_with(" healthy") && line("unhealthy").contains("tunnel has no live connection")
    })
    .await;

    // A plugin uploaded and bound with the CLI reaches the edge-only node, which fetches the
    // component with its node token.
    let config = dir.path().join("gate.json");
    std::fs::write(&config, r#"{"keys": ["k2"]}"#).unwrap();
    let out = ok(
        BURROW,
        &alice,
        &["plugin", "upload", "gate", env!("PLUGIN_HEADER_AUTH")],
    )
    .await;
    assert!(out.contains("Uploaded gate@1 (hooks"), "{out}");
    ok(BURROW, &alice, &["tunnel", "route", "dns", "web", "gate.test"]).await;
    let add = [
        "route",
        "plugin",
        "add",
        "gate.test",
        "gate",
        "--config",
        config.to_str().unwrap(),
    ];
    let out = ok(BURROW, &alice, &add).await;
    assert!(out.contains("gate.test now runs gate@1"), "{out}");
    let out = ok(BURROW, &alice, &["plugin", "list"]).await;
    assert!(out.contains("route gate.test"), "{out}");
    let out = ok(BURROW, &alice, &["route", "plugin", "list", "gate.test"]).await;
    assert!(
        out.lines().any(|l| l.split_whitespace().take(3).eq(["1", "gate", "1"])),
        "{out}"
    );
    let (code, out) = cli(BURROW, &alice, &["plugin", "delete", "gate"]).await;
    assert!(
        code != Some(0) && out.contains("gate@1 is bound to route gate.test"),
        "{out}"
    );
    let guarded = || async {
        key_status(&node_ports, "gate.test", None).await == Some(401)
            && key_status(&node_ports, "gate.test", Some("k2")).await == Some(200)
    };
    eventually(Duration::from_secs(20), "the edge-only node to run the plugin", guarded).await;
    // Changing one setting keeps the others (the config stays: still guarded, not misconfigured).
    ok(
        BURROW,
        &alice,
        &["route", "plugin", "add", "gate.test", "gate", "--fail-open"],
    )
    .await;
    let out = ok(BURROW, &alice, &["route", "plugin", "list", "gate.test"]).await;
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().take(4).eq(["1", "gate", "1", "true"])),
        "{out}"
    );
    assert!(out.contains(r#"{"keys": ["k2"]}"#), "the config stayed: {out}");
    eventually(Duration::from_secs(20), "the fail-open binding to apply", guarded).await;

    // Control plane down: the node keeps serving, and a restarted connector still registers.
    let _ = control_plane.kill9().await;
    assert!(serves().await);
    let _ = connector.kill9().await;
    let connector = Process::spawn(BURROW, &run, &[("BURROW_HOME", &alice)]);
    connector.wait_for_output("registered tunnel connection").await;
    eventually(
        Duration::from_secs(20),
        "web.test served after the connector restart",
        serves,
    )
    .await;

    // The node itself restarts during the outage: it serves from its snapshot.
    let _ = node.kill9().await;
    let node = edge_with(&node_dir, &node_ports, &node_args);
    node.wait_for_output("serving the last config snapshot").await;
    eventually(Duration::from_secs(30), "web.test served by the restarted node", serves).await;
    // Its plugin too, from the compiled artifact it kept.
    eventually(Duration::from_secs(10), "the restarted node to run the plugin", guarded).await;
    drop(connector);
    drop(node);
}

#[tokio::test]
async fn pools_through_the_cli() {
    init_logging();
    let dir = TempDir::new();
    let (ports, alice, edge) = edge_with_alice(dir.path()).await;
    for name in ["east", "west"] {
        ok(BURROW, &alice, &["tunnel", "create", name]).await;
    }
    let create = [
        "pool",
        "create",
        "web",
        "--origin",
        "east=2",
        "--steering",
        "round-robin",
    ];
    ok(BURROW, &alice, &create).await;
    let (code, again) = cli(BURROW, &alice, &create).await;
    assert_eq!(code, Some(1), "{again}");
    assert!(again.contains("already exists"), "{again}");
    // cloudflared's verb: adds west to the pool and routes the hostname to the pool.
    ok(BURROW, &alice, &["tunnel", "route", "lb", "west", "lb.test", "web"]).await;
    let monitor = [
        "pool",
        "monitor",
        "set",
        "web",
        "--path",
        "/",
        "--interval",
        "1",
        "--timeout",
        "1",
    ];
    ok(BURROW, &alice, &monitor).await;

    // Bad input is refused with the field to fix, and changes nothing.
    let (code, bad) = cli(BURROW, &alice, &["pool", "origin", "add", "web", "nosuch"]).await;
    assert_eq!(code, Some(1), "{bad}");
    assert!(bad.contains("tunnel \"nosuch\" not found"), "{bad}");
    let (code, bad) = cli(
        BURROW,
        &alice,
        &["pool", "monitor", "set", "web", "--expected-codes", "7xx"],
    )
    .await;
    assert_eq!(code, Some(1), "{bad}");
    assert!(bad.contains("expected-codes"), "{bad}");

    let mut connectors = Vec::new();
    for name in ["east", "west"] {
        let url = format!("http://{}", named_origin(name).await);
        let run = ["tunnel", "run", name, "--url", &url, "--ha-connections", "1"];
        connectors.push(Process::spawn(BURROW, &run, &[("BURROW_HOME", &alice)]));
    }
    eventually(Duration::from_secs(20), "both origins to serve lb.test", || async {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..6 {
            if let Some((StatusCode::OK, body)) = served(&ports, "lb.test").await {
                seen.insert(body);
            }
        }
        seen.len() == 2
    })
    .await;
    let mut counts = std::collections::HashMap::<String, usize>::new();
    for _ in 0..30 {
        let (status, body) = served(&ports, "lb.test").await.unwrap();
        assert_eq!(status, StatusCode::OK);
        *counts.entry(body).or_default() += 1;
    }
    assert_eq!((counts["east"], counts["west"]), (20, 10), "weights 2:1 round robin");

    let show = ok(BURROW, &alice, &["pool", "show", "web"]).await;
    assert!(show.contains("STEERING:  round-robin"), "{show}");
    assert!(show.contains("MONITOR:   http GET / every 1s"), "{show}");
    assert_eq!(show.matches("healthy").count(), 2, "{show}");

    ok(
        BURROW,
        &alice,
        &["pool", "origin", "set", "web", "east", "--enabled", "false"],
    )
    .await;
    eventually(Duration::from_secs(10), "only west to serve", || async {
        let mut all_west = true;
        for _ in 0..6 {
            all_west &= served(&ports, "lb.test").await == Some((StatusCode::OK, "west".into()));
        }
        all_west
    })
    .await;
    let west = connectors.pop().unwrap();
    west.signal("TERM");
    let _ = west.wait(Duration::from_secs(20)).await;
    eventually(Duration::from_secs(10), "503 once no origin is left", || async {
        served(&ports, "lb.test")
            .await
            .is_some_and(|(s, _)| s == StatusCode::SERVICE_UNAVAILABLE)
    })
    .await;
    let show = ok(BURROW, &alice, &["pool", "show", "web"]).await;
    assert!(show.contains("unhealthy: disabled"), "{show}");
    assert!(show.contains("unhealthy: tunnel has no live connection"), "{show}");

    // What is in use cannot be deleted from under it.
    let (code, refused) = cli(BURROW, &alice, &["pool", "delete", "web"]).await;
    assert_eq!(code, Some(1));
    assert!(refused.contains("lb.test routes to pool"), "{refused}");
    let (code, refused) = cli(BURROW, &alice, &["tunnel", "delete", "east", "--force"]).await;
    assert_eq!(code, Some(1));
    assert!(refused.contains("origin of pool(s) web"), "{refused}");
    let list = ok(BURROW, &alice, &["pool", "list"]).await;
    assert!(
        list.contains("web") && list.contains("round-robin") && list.contains("0/2"),
        "{list}"
    );
    drop(connectors);
    drop(edge);
}

/// A node token reports health for the node it was created for, and no other.
#[tokio::test]
async fn a_node_token_reports_only_for_its_own_node() {
    init_logging();
    let dir = TempDir::new();
    let (edge, control) = TestEdge::start_with_store(dir.path()).await;
    let token = control.create_node_token("node-a").await.unwrap();
    let client = http1_client();
    let (client, token, admin) = (&client, &token, edge.api);
    let put = move |node: &'static str| async move {
        let body = serde_json::json!({"node": node, "updated": 1, "pools": []});
        let path = format!("/v1/health/{node}");
        let response = api_call(client, admin, token, "PUT", &path, body).await.unwrap();
        (response.status, response.text())
    };
    let (status, body) = put("node-a").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = put("node-b").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("created for node \\\"node-a\\\""), "{body}");
    edge.stop().await;
}

/// Start `burrow tunnel run NAME` for alice and wait until `host` serves `text`.
async fn run_connector(alice: &Path, ports: &Ports, name: &str, host: &str, text: &'static str) -> Process {
    let origin = named_origin(text).await;
    let url = format!("http://{origin}");
    let connector = Process::spawn(
        BURROW,
        &["tunnel", "run", name, "--url", &url],
        &[("BURROW_HOME", alice)],
    );
    eventually(Duration::from_secs(20), &format!("{host} to be served"), || async {
        served(ports, host).await == Some((StatusCode::OK, text.into()))
    })
    .await;
    connector
}

/// An edge with alice logged in, her tunnel "web" routed from web.test and served by a connector.
async fn alice_serving_web(dir: &Path) -> (Ports, std::path::PathBuf, Process, Process) {
    let (ports, alice, edge) = edge_with_alice(dir).await;
    ok(BURROW, &alice, &["tunnel", "create", "web"]).await;
    ok(BURROW, &alice, &["tunnel", "route", "dns", "web", "web.test"]).await;
    let connector = run_connector(&alice, &ports, "web", "web.test", "web").await;
    (ports, alice, edge, connector)
}

/// A store.db that is lost (missing, emptied, or made anew) next to a good snapshot.json is an
/// error that says what happened, never an empty config that overwrites the snapshot.
#[tokio::test]
async fn a_lost_store_is_refused_and_the_snapshot_kept() {
    init_logging();
    let dir = TempDir::new();
    let (ports, _alice, first, connector) = alice_serving_web(dir.path()).await;
    let data = dir.path().join("edge");
    let (store, snapshot) = (data.join("store.db"), data.join("snapshot.json"));
    eventually(Duration::from_secs(5), "the snapshot to hold the route", || async {
        std::fs::read_to_string(&snapshot).is_ok_and(|s| s.contains("web.test"))
    })
    .await;
    let _ = first.kill9().await;
    let saved = std::fs::read(&snapshot).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(data.join(format!("store.db{suffix}")));
    }

    // Emptied, then missing: the edge refuses to start and says how to proceed.
    std::fs::write(&store, b"").unwrap();
    let (code, output) = edge(dir.path(), &ports).wait(Duration::from_secs(20)).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("is missing or empty"), "{output}");
    assert!(output.contains("Restore store.db from a backup"), "{output}");
    std::fs::remove_file(&store).unwrap();
    let (code, output) = edge(dir.path(), &ports).wait(Duration::from_secs(20)).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("is missing or empty"), "{output}");
    // `account create` would make a new, empty store there: refused too.
    let (code, output) = cli(
        BURROW_EDGE,
        dir.path(),
        &["account", "create", "bob", "--data-dir", data.to_str().unwrap()],
    )
    .await;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("is missing or empty"), "{output}");
    assert!(!store.exists() || std::fs::metadata(&store).unwrap().len() == 0);

    // A store made anew (older than the snapshot): refused as well.
    let other = TempDir::new();
    ok(
        BURROW_EDGE,
        other.path(),
        &["account", "create", "bob", "--data-dir", other.path().to_str().unwrap()],
    )
    .await;
    std::fs::copy(other.path().join("store.db"), &store).unwrap();
    let (code, output) = edge(dir.path(), &ports).wait(Duration::from_secs(20)).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("behind the config snapshot"), "{output}");
    assert_eq!(std::fs::read(&snapshot).unwrap(), saved, "the snapshot is untouched");
    drop(connector);
}

/// The store holds token hashes and tunnel records: readable by its owner only.
#[tokio::test]
async fn the_store_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new();
    ok(
        BURROW_EDGE,
        dir.path(),
        &["account", "create", "alice", "--data-dir", dir.path().to_str().unwrap()],
    )
    .await;
    for file in ["store.db", "store.db-wal", "store.db-shm"] {
        let path = dir.path().join(file);
        if let Ok(meta) = std::fs::metadata(&path) {
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file}");
        }
    }
}

/// An edge-only node with no readable snapshot and no control plane has no config: it is not
/// ready (it would answer 404 for every host).
#[tokio::test]
async fn an_edge_without_config_is_not_ready() {
    init_logging();
    let dir = TempDir::new();
    let ports = Ports::default();
    std::fs::create_dir_all(dir.path().join("edge")).unwrap();
    std::fs::write(dir.path().join("edge").join("snapshot.json"), b"{not json").unwrap();
    let nowhere = format!("http://127.0.0.1:{}", free_tcp_port());
    let node = edge_with(
        dir.path(),
        &ports,
        &["--control-plane", &nowhere, "--node-token", "burrow_0_x"],
    );
    node.wait_for_output("tunnel listener ready").await;
    let ready = get(
        &http1_client(),
        ([127, 0, 0, 1], ports.admin).into(),
        "localhost",
        "/ready",
    )
    .await
    .unwrap();
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{}", ready.text());
    assert!(ready.text().contains("no config yet"), "{}", ready.text());
}

/// `tunnel cleanup` removes only the records of connections that are gone: the live ones stay in
/// `tunnel info`, and a plain delete is still refused.
#[tokio::test]
async fn cleanup_keeps_the_records_of_live_connections() {
    init_logging();
    let dir = TempDir::new();
    let (ports, alice, _edge, _connector) = alice_serving_web(dir.path()).await;
    eventually(Duration::from_secs(10), "4 connections in `tunnel list`", || async {
        ok(BURROW, &alice, &["tunnel", "list"]).await.contains("4x")
    })
    .await;
    let cleaned = ok(BURROW, &alice, &["tunnel", "cleanup", "web"]).await;
    assert!(cleaned.contains("Removed 0 connection record(s)"), "{cleaned}");
    let info = ok(BURROW, &alice, &["tunnel", "info", "web", "--output", "json"]).await;
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["connections"].as_array().unwrap().len(), 4, "{info}");
    let (code, refused) = cli(BURROW, &alice, &["tunnel", "delete", "web"]).await;
    assert_eq!(code, Some(1), "{refused}");
    assert!(refused.contains("live connection"), "{refused}");
    assert_eq!(served(&ports, "web.test").await, Some((StatusCode::OK, "web".into())));
}

/// `tunnel delete` removes the local credentials file; `tunnel run NAME` asks the API which
/// tunnel the name means, so a stale file of a deleted namesake never wins.
#[tokio::test]
async fn a_recreated_tunnel_runs_by_name_despite_a_stale_credentials_file() {
    init_logging();
    let dir = TempDir::new();
    let (ports, alice, _edge) = edge_with_alice(dir.path()).await;
    let created = ok(BURROW, &alice, &["tunnel", "create", "web"]).await;
    let old_id = created
        .split("with id ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let old_file = alice.join(format!("{old_id}.json"));
    // A copy of the old credentials stays behind (a backup, another tool's copy).
    std::fs::copy(&old_file, alice.join("0-stale-web.json")).unwrap();
    let deleted = ok(BURROW, &alice, &["tunnel", "delete", "web"]).await;
    assert!(deleted.contains("Removed its credentials file"), "{deleted}");
    assert!(!old_file.exists());
    ok(BURROW, &alice, &["tunnel", "create", "web"]).await;
    ok(BURROW, &alice, &["tunnel", "route", "dns", "web", "web.test"]).await;
    let _connector = run_connector(&alice, &ports, "web", "web.test", "web").await;

    // `tunnel token` without local credentials says where the secret is, and the flag it names
    // exists.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::copy(alice.join("cert.json"), elsewhere.join("cert.json")).unwrap();
    let (code, output) = cli(BURROW, &elsewhere, &["tunnel", "token", "web"]).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("--credentials-file"), "{output}");
    let file = std::fs::read_dir(&alice)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().len() == 41)
        .unwrap();
    let token = ok(
        BURROW,
        &elsewhere,
        &["tunnel", "token", "--credentials-file", file.to_str().unwrap()],
    )
    .await;
    assert!(token.trim().len() > 100, "{token}");
}

/// `burrow pool show web | head` closes the CLI's stdout early: it stops quietly, no panic.
#[tokio::test]
async fn a_closed_stdout_stops_the_cli_quietly() {
    init_logging();
    let dir = TempDir::new();
    let (_ports, alice, _edge) = edge_with_alice(dir.path()).await;
    ok(BURROW, &alice, &["tunnel", "create", "web"]).await;
    ok(BURROW, &alice, &["pool", "create", "web", "--origin", "web"]).await;
    let mut child = std::process::Command::new(BURROW)
        .args(["pool", "show", "web"])
        .env("BURROW_HOME", &alice)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(output.status.code(), Some(101), "{stderr}");
}

/// Operators revoke tokens and delete accounts from the command line beside a running edge; a
/// revoked token stops working at once, a deleted account's routes stop serving and its
/// connector is told its tunnel is gone.
#[tokio::test]
async fn revoked_tokens_and_deleted_accounts_stop_working_at_once() {
    init_logging();
    let dir = TempDir::new();
    let (ports, alice, _edge) = edge_with_alice(dir.path()).await;
    ok(BURROW, &alice, &["tunnel", "create", "web"]).await;
    ok(BURROW, &alice, &["tunnel", "route", "dns", "web", "web.test"]).await;
    let data = dir.path().join("edge");
    let data = data.to_str().unwrap();
    let created = ok(
        BURROW_EDGE,
        dir.path(),
        &[
            "token",
            "create",
            "--account",
            "alice",
            "--name",
            "ci",
            "--data-dir",
            data,
        ],
    )
    .await;
    let ci = shown_once(&created);
    let client = http1_client();
    let api: SocketAddr = ([127, 0, 0, 1], ports.api).into();
    let account = |token: String| {
        let client = client.clone();
        async move {
            api_call(&client, api, &token, "GET", "/v1/account", serde_json::Value::Null)
                .await
                .unwrap()
                .status
        }
    };
    assert_eq!(account(ci.clone()).await, StatusCode::OK);
    let listed = ok(BURROW_EDGE, dir.path(), &["token", "list", "--data-dir", data]).await;
    assert!(listed.contains("ci") && listed.contains("admin"), "{listed}");
    assert!(!listed.contains(&ci), "no secret in the listing: {listed}");
    ok(BURROW_EDGE, dir.path(), &["token", "revoke", &ci, "--data-dir", data]).await;
    assert_eq!(account(ci).await, StatusCode::UNAUTHORIZED);

    let connector = run_connector(&alice, &ports, "web", "web.test", "web").await;
    let admin_token: serde_json::Value =
        serde_json::from_slice(&std::fs::read(alice.join("cert.json")).unwrap()).unwrap();
    let admin_token = admin_token["token"].as_str().unwrap().to_owned();
    let (code, output) = cli(
        BURROW_EDGE,
        dir.path(),
        &["account", "delete", "alice", "--data-dir", data],
    )
    .await;
    assert_eq!(code, Some(1), "asks for --yes first: {output}");
    assert!(output.contains("--yes"), "{output}");
    ok(
        BURROW_EDGE,
        dir.path(),
        &["account", "delete", "alice", "--yes", "--data-dir", data],
    )
    .await;
    assert_eq!(account(admin_token).await, StatusCode::UNAUTHORIZED);
    eventually(Duration::from_secs(5), "web.test to stop serving", || async {
        matches!(served(&ports, "web.test").await, Some((StatusCode::NOT_FOUND, _)))
    })
    .await;
    let (code, output) = connector.wait(Duration::from_secs(10)).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("was deleted"), "{output}");
}

/// Hostnames are claimed through zones: an account routes only under its own zones; nobody
/// routes IP literals, localhost or public suffixes, nor nests a zone in another account's. With
/// `--self-service-zones`, an account claims a zone itself and proves it with a DNS TXT record.
#[tokio::test]
async fn hostnames_are_claimed_through_zones() {
    init_logging();
    let dir = TempDir::new();
    let ports = Ports::default();
    let records = Arc::new(std::sync::Mutex::new(Vec::new()));
    let dns = txt_dns_server(records.clone()).await.to_string();
    let edge = edge_with(dir.path(), &ports, &["--self-service-zones", "--dns-server", &dns]);
    edge.wait_for_output("tunnel listener ready").await;
    let (alice, bob, carol) = (
        dir.path().join("alice"),
        dir.path().join("bob"),
        dir.path().join("carol"),
    );
    account(dir.path(), &ports, "alice", "test", &alice).await;
    account(dir.path(), &ports, "bob", "example", &bob).await;
    ok(BURROW, &bob, &["tunnel", "create", "other"]).await;
    ok(BURROW, &bob, &["tunnel", "route", "dns", "other", "shop.example"]).await;
    for squat in ["*.test", "a.test", "localhost", "127.0.0.1", "*.com", "co.uk"] {
        let (code, output) = cli(BURROW, &bob, &["tunnel", "route", "dns", "other", squat]).await;
        assert_eq!(code, Some(1), "{squat}: {output}");
        assert!(
            output.contains("zone")
                || output.contains("nobody")
                || output.contains("IP")
                || output.contains("public suffix"),
            "{squat}: {output}"
        );
    }
    let data = dir.path().join("edge");
    let data = data.to_str().unwrap();
    for (zone, why) in [
        ("a.test", "another account"),
        ("com", "public suffix"),
        ("10.0.0.1", "IP address"),
    ] {
        let (code, output) = cli(
            BURROW_EDGE,
            dir.path(),
            &["zone", "add", zone, "--account", "bob", "--data-dir", data],
        )
        .await;
        assert_eq!(code, Some(1), "{zone}: {output}");
        assert!(output.contains(why), "{zone}: {output}");
    }

    // Self-service: carol claims a zone, publishes the TXT record, verifies, routes under it.
    let output = ok(
        BURROW_EDGE,
        dir.path(),
        &["account", "create", "carol", "--data-dir", data],
    )
    .await;
    std::fs::create_dir_all(&carol).unwrap();
    ok(
        BURROW,
        &carol,
        &["login", "--api", &ports.api(), "--token", &shown_once(&output)],
    )
    .await;
    let claimed = ok(BURROW, &carol, &["zone", "add", "carol.example.org"]).await;
    let value = claimed.split('"').nth(1).unwrap().to_owned();
    assert!(claimed.contains("_burrow-challenge.carol.example.org"), "{claimed}");
    let (code, output) = cli(BURROW, &carol, &["zone", "verify", "carol.example.org"]).await;
    assert_eq!(code, Some(1), "no TXT record yet: {output}");
    assert!(output.contains("no TXT record"), "{output}");
    records
        .lock()
        .unwrap()
        .push(("_burrow-challenge.carol.example.org".into(), value));
    ok(BURROW, &carol, &["zone", "verify", "carol.example.org"]).await;
    ok(BURROW, &carol, &["tunnel", "create", "site"]).await;
    ok(
        BURROW,
        &carol,
        &["tunnel", "route", "dns", "site", "www.carol.example.org"],
    )
    .await;
    let listed = ok(BURROW, &carol, &["zone", "list"]).await;
    assert!(
        listed.contains("carol.example.org") && listed.contains("dns"),
        "{listed}"
    );
    // Nobody nests a zone in carol's, by claim or by the operator.
    let (code, output) = cli(BURROW, &bob, &["zone", "add", "shop.carol.example.org"]).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("another account"), "{output}");
    // Alice's zone holds routes: removing it is refused unless forced.
    ok(BURROW, &alice, &["tunnel", "create", "web"]).await;
    ok(BURROW, &alice, &["tunnel", "route", "dns", "web", "web.test"]).await;
    let (code, output) = cli(BURROW_EDGE, dir.path(), &["zone", "remove", "test", "--data-dir", data]).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("web.test"), "{output}");
}

/// Without `--self-service-zones`, zones are the operator's to give: a claim says whom to ask.
#[tokio::test]
async fn zones_are_the_operators_unless_self_service_is_on() {
    init_logging();
    let dir = TempDir::new();
    let (_ports, alice, _edge) = edge_with_alice(dir.path()).await;
    let (code, output) = cli(BURROW, &alice, &["zone", "add", "alice.example.org"]).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("burrow-edge zone add --account"), "{output}");
    let listed = ok(BURROW, &alice, &["zone", "list", "--output", "json"]).await;
    assert!(listed.contains("\"test\""), "{listed}");
}

/// The API answers a wrong method with 405 and the methods it takes, an unknown path with a JSON
/// 404; tenants never reach `/metrics` (it is on the operator's listener, which has no API).
#[tokio::test]
async fn wrong_methods_get_405_and_metrics_stay_off_the_api() {
    init_logging();
    let dir = TempDir::new();
    let (edge, control) = TestEdge::start_with_store(dir.path()).await;
    let (_account, token) = account_in_test_zone(&control, "alice").await;
    let client = http1_client();
    let wrong = api_call(
        &client,
        edge.api,
        &token,
        "PATCH",
        "/v1/tunnels",
        serde_json::Value::Null,
    )
    .await
    .unwrap();
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED, "{}", wrong.text());
    let allow = wrong.headers["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    let unknown = api_call(&client, edge.api, &token, "GET", "/v1/nothing", serde_json::Value::Null)
        .await
        .unwrap();
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let error: burrow_api::ErrorBody = serde_json::from_slice(&unknown.body).unwrap();
    assert_eq!(error.error.code, "not_found");
    let metrics = get(&client, edge.api, "localhost", "/metrics").await.unwrap();
    assert_eq!(metrics.status, StatusCode::NOT_FOUND, "no metrics on the API listener");
    let on_admin = api_call(
        &client,
        edge.admin,
        &token,
        "GET",
        "/v1/account",
        serde_json::Value::Null,
    )
    .await
    .unwrap();
    assert_eq!(on_admin.status, StatusCode::NOT_FOUND, "no API on the admin listener");
    assert_eq!(
        get(&client, edge.admin, "localhost", "/metrics").await.unwrap().status,
        StatusCode::OK
    );
    edge.stop().await;
}

/// `--api-tls-cert` serves the API over HTTPS: the CLI and an edge-only node trust a private
/// certificate only when told to (`--api-ca`, `--control-plane-ca`), and then work as before.
#[tokio::test]
async fn the_api_over_https_with_a_private_certificate() {
    init_logging();
    let dir = TempDir::new();
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let cert = rcgen::generate_simple_self_signed(names).unwrap();
    let (cert_path, key_path) = (dir.path().join("api.pem"), dir.path().join("api-key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let (cert_arg, key_arg) = (cert_path.to_str().unwrap(), key_path.to_str().unwrap());

    let ports = Ports::default();
    let edge = edge_with(
        dir.path(),
        &ports,
        &["--api-tls-cert", cert_arg, "--api-tls-key", key_arg],
    );
    edge.wait_for_output("tunnel listener ready").await;
    let data_dir = dir.path().join("edge");
    let output = ok(
        BURROW_EDGE,
        dir.path(),
        &[
            "account",
            "create",
            "alice",
            "--zone",
            "test",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
    )
    .await;
    let token = shown_once(&output);
    let alice = dir.path().join("alice");
    std::fs::create_dir_all(&alice).unwrap();
    let api = format!("https://127.0.0.1:{}", ports.api);

    let (code, output) = cli(BURROW, &alice, &["login", "--api", &api, "--token", &token]).await;
    assert_eq!(code, Some(1), "an untrusted certificate is refused: {output}");
    assert!(output.contains("certificate"), "{output}");
    let cleartext = format!("http://127.0.0.1:{}", ports.api);
    let (code, _) = cli(BURROW, &alice, &["login", "--api", &cleartext, "--token", &token]).await;
    assert_eq!(code, Some(1), "the API listener speaks TLS only");
    ok(
        BURROW,
        &alice,
        &["login", "--api", &api, "--token", &token, "--api-ca", cert_arg],
    )
    .await;
    let out = ok(BURROW, &alice, &["tunnel", "create", "web"]).await;
    assert!(out.contains("Created tunnel web with id"), "{out}");

    // An edge-only node follows the control plane over HTTPS.
    let output = ok(
        BURROW_EDGE,
        dir.path(),
        &[
            "node-token",
            "create",
            "node-b",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
    )
    .await;
    let node_token = shown_once(&output);
    let (node_dir, node_ports) = (dir.path().join("node"), Ports::default());
    let node = edge_with(
        &node_dir,
        &node_ports,
        &[
            "--control-plane",
            &api,
            "--control-plane-ca",
            cert_arg,
            "--node-token",
            &node_token,
        ],
    );
    node.wait_for_output("tunnel listener ready").await;
    let admin: SocketAddr = ([127, 0, 0, 1], node_ports.admin).into();
    eventually(
        Duration::from_secs(20),
        "the node to read the config over HTTPS",
        || async {
            let ready = get(&http1_client(), admin, "localhost", "/ready").await;
            ready.is_ok_and(|r| r.status == StatusCode::OK)
        },
    )
    .await;
}
