//! Hostile and ambiguous input at the public listener: each case gets a clear refusal, and
//! nothing reaches the origin that two parsers could read differently.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::sync::Arc;
use std::time::Duration;

use burrow_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An edge (with `options`) routing app.test through one connected connector to `origin`.
async fn edge_to(origin: std::net::SocketAddr, options: EdgeOptions) -> (TestEdge, TestConnector) {
    let tunnel = TestTunnel::new("app");
    let edge = TestEdge::start_with(&tunnels_file(&[&tunnel], &[("app.test", "app")]), options).await;
    let connector = TestConnector::to_url(edge.credentials(&tunnel), &format!("http://{origin}"), 1);
    edge.wait_connections(&tunnel, 1).await;
    (edge, connector)
}

/// Nothing more reaches the origin (given time to arrive) than `seen` has already taken.
async fn assert_no_more<T: std::fmt::Debug>(seen: &mut tokio::sync::mpsc::UnboundedReceiver<T>, what: &str) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let more = seen.try_recv();
    assert!(more.is_err(), "{what}: {more:?}");
}

/// Send raw bytes to the edge and return what it answers (until it closes or 5 s pass).
async fn raw(edge: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(edge).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

#[tokio::test]
async fn ambiguous_http1_requests_are_refused() {
    init_logging();
    let tunnel = TestTunnel::new("app");
    let edge = TestEdge::start(&tunnels_file(&[&tunnel], &[("app.test", "app")])).await;
    let long_path = format!(
        "GET /{} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
        "a".repeat(9000)
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: app.test\r\n{}Connection: close\r\n\r\n",
        (0..150).map(|i| format!("x-h{i}: v\r\n")).collect::<String>()
    );
    let cases: Vec<(&str, Vec<u8>, &str, Option<&str>)> = vec![
        ("no Host", b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(), "400", Some("missing_host")),
        (
            "two Hosts",
            b"GET / HTTP/1.1\r\nHost: app.test\r\nHost: evil.test\r\nConnection: close\r\n\r\n".to_vec(),
            "400",
            Some("bad_request"),
        ),
        (
            "absolute target and Host disagree",
            b"GET http://evil.test/ HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n".to_vec(),
            "400",
            Some("bad_request"),
        ),
        (
            "chunked, chunked",
            b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked, chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
                .to_vec(),
            "400",
            None,
        ),
        ("long target", long_path.into_bytes(), "414", Some("uri_too_long")),
        ("too many headers", many_headers.into_bytes(), "431", None),
    ];
    // Content-Length with Transfer-Encoding is not refused but made harmless, as RFC 9112 §6.1
    // allows: see content_length_with_transfer_encoding_cannot_smuggle_a_request.
    for (name, request, status, code) in cases {
        let answer = raw(edge.http, &request).await;
        assert!(status_line(&answer).contains(status), "{name}: {answer}");
        if let Some(code) = code {
            assert!(
                answer.to_ascii_lowercase().contains(&format!("burrow-error: {code}")),
                "{name}: {answer}"
            );
        }
    }
    edge.stop().await;
}

/// Content-Length together with Transfer-Encoding, in either order (the CL.TE and TE.CL smuggling
/// shapes): the body is read by Transfer-Encoding alone, the Content-Length never reaches the
/// origin, and the connection is closed after the answer (RFC 9112 §6.1), so the request hidden
/// after the chunked body is never parsed, let alone forwarded.
#[tokio::test]
async fn content_length_with_transfer_encoding_cannot_smuggle_a_request() {
    init_logging();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let origin = serve_origin(move |req| {
        let seen_tx = seen_tx.clone();
        async move {
            let path = req.uri().path().to_owned();
            let length = req.headers().get(http::header::CONTENT_LENGTH).cloned();
            let body = http_body_util::BodyExt::collect(req.into_body()).await;
            let body = body.map(|b| b.to_bytes()).unwrap_or_default();
            let _ = seen_tx.send((path, length, body));
            http::Response::new(full("ok"))
        }
    })
    .await;
    let (edge, _connector) = edge_to(origin, EdgeOptions::default()).await;

    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n";
    for (name, framing) in [
        ("CL before TE", "Content-Length: 40\r\nTransfer-Encoding: chunked"),
        ("TE before CL", "Transfer-Encoding: chunked\r\nContent-Length: 40"),
    ] {
        let request =
            format!("POST /upload HTTP/1.1\r\nHost: app.test\r\n{framing}\r\n\r\n5\r\nhello\r\n0\r\n\r\n{smuggled}");
        let mut stream = tokio::net::TcpStream::connect(edge.http).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = read_answer(&mut stream).await;
        assert!(status_line(&answer).contains("200"), "{name}: {answer}");
        assert_eq!(
            answer.matches("HTTP/1.1 ").count(),
            1,
            "{name}: a second answer: {answer}"
        );
        let closed = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut [0u8; 64])).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "{name}: connection left open: {closed:?}"
        );

        let (path, length, body) = seen.recv().await.unwrap();
        assert_eq!((path.as_str(), &body[..]), ("/upload", &b"hello"[..]), "{name}");
        assert_ne!(
            length.as_ref().map(|v| v.as_bytes()),
            Some(&b"40"[..]),
            "{name}: forwarded the stale length"
        );
    }
    // Nothing else reached the origin: the hidden GET was dropped with the connection.
    assert_no_more(&mut seen, "the smuggled request reached the origin").await;
    edge.stop().await;
}

/// An upgrade the origin refuses (no 101) is not a tunnel: what the client sends next is parsed
/// by the edge as HTTP (here a request for a host the edge does not route: 404 from the edge),
/// never passed to the origin as raw bytes.
#[tokio::test]
async fn an_upgrade_the_origin_refuses_opens_no_tunnel() {
    init_logging();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let origin = serve_origin(move |req| {
        let seen_tx = seen_tx.clone();
        async move {
            let _ = seen_tx.send(req.uri().path().to_owned());
            http::Response::new(full("no upgrade here"))
        }
    })
    .await;
    let (edge, _connector) = edge_to(origin, EdgeOptions::default()).await;

    let mut stream = tokio::net::TcpStream::connect(edge.http).await.unwrap();
    let upgrade = "GET /socket HTTP/1.1\r\nHost: app.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    stream.write_all(upgrade.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(
        status_line(&answer).contains("200") && answer.contains("no upgrade here"),
        "{answer}"
    );
    assert_eq!(seen.recv().await.unwrap(), "/socket");

    stream
        .write_all(b"GET /smuggled HTTP/1.1\r\nHost: internal.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut stream).await;
    assert!(
        status_line(&answer).contains("404"),
        "the edge did not parse it: {answer}"
    );
    assert!(answer.contains("unknown_host"), "{answer}");
    assert_no_more(&mut seen, "raw bytes reached the origin").await;
    edge.stop().await;
}

#[tokio::test]
async fn http2_authority_and_host_must_agree() {
    init_logging();
    let tunnel = TestTunnel::new("app");
    let edge = TestEdge::start(&tunnels_file(&[&tunnel], &[("app.test", "app")])).await;
    let tcp = tokio::net::TcpStream::connect(edge.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = http::Request::get("http://app.test/")
        .header("host", "evil.test")
        .body(empty())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::BAD_REQUEST);
    assert_eq!(response.headers()["burrow-error"], "bad_request");
    edge.stop().await;
}

#[tokio::test]
async fn tls_server_name_of_another_tenant_is_misdirected() {
    init_logging();
    let (alice, bob) = (TestTunnel::new("alice"), TestTunnel::new("bob"));
    let origin = named_origin("ok").await;
    let edge = TestEdge::start(&tunnels_file(
        &[&alice, &bob],
        &[("alice.test", "alice"), ("bob.test", "bob")],
    ))
    .await;
    let connector = TestConnector::to_url(edge.credentials(&alice), &format!("http://{origin}"), 1);
    connector.wait_ready(1).await;
    edge.wait_connections(&alice, 1).await;

    let settings = burrow_tunnel::ingress::OriginRequest {
        no_tls_verify: true,
        ..Default::default()
    };
    let mut tls = (*burrow_tunnel::tls::origin_tls_config(&settings).unwrap()).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connect = |sni: &'static str| {
        let tls = Arc::new(tls.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(edge.https).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from(sni).unwrap();
            tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.unwrap()
        }
    };
    for (sni, host, expected) in [("alice.test", "alice.test", "200"), ("bob.test", "alice.test", "421")] {
        let mut stream = connect(sni).await;
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            status_line(&answer).contains(expected),
            "SNI {sni}, Host {host}: {answer}"
        );
    }
    connector.stop().await.unwrap();
    edge.stop().await;
}

#[tokio::test]
async fn connections_over_the_limit_get_a_503() {
    init_logging();
    let tunnel = TestTunnel::new("app");
    let options = EdgeOptions {
        max_connections: 2,
        ..Default::default()
    };
    let edge = TestEdge::start_with(&tunnels_file(&[&tunnel], &[("app.test", "app")]), options).await;
    // Two idle keep-alive connections hold both slots.
    let _held: Vec<_> = futures_util::future::join_all((0..2).map(|_| tokio::net::TcpStream::connect(edge.http))).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = raw(edge.http, b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    assert!(status_line(&answer).contains("503"), "{answer}");
    assert!(answer.contains("too_many_connections"), "{answer}");
    drop(_held);
    edge.stop().await;
}

/// Seconds until the edge closes `stream` (reading and discarding what it sends), or `None` if it
/// is still open after 6 s.
async fn seconds_until_closed<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Option<f64> {
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed().as_secs_f64()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

/// Slow heads, stalled TLS handshakes, idle keep-alive connections (HTTP/1 and HTTP/2) and old
/// connections are all closed on time, so none holds one of the edge's connection slots forever.
#[tokio::test]
async fn slow_idle_and_old_connections_are_closed() {
    init_logging();
    let options = EdgeOptions {
        connection_timeouts: ConnectionTimeouts {
            header_read: Duration::from_secs(1),
            tls_handshake: Duration::from_secs(1),
            idle: Duration::from_secs(1),
            max_age: Duration::from_secs(3),
        },
        ..EdgeOptions::default()
    };
    let origin = named_origin("ok").await;
    let (edge, _connector) = edge_to(origin, options).await;
    let in_time = |name: &str, closed: Option<f64>, low: f64, high: f64| {
        let seconds = closed.unwrap_or_else(|| panic!("{name}: still open after 6 s"));
        assert!((low..high).contains(&seconds), "{name}: closed after {seconds:.2} s");
    };

    // A head that never ends (slowloris).
    let mut stream = tokio::net::TcpStream::connect(edge.http).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n").await.unwrap();
    in_time("slow head", seconds_until_closed(&mut stream).await, 0.8, 3.0);

    // A TLS client that never says hello.
    let mut stream = tokio::net::TcpStream::connect(edge.https).await.unwrap();
    in_time(
        "stalled TLS handshake",
        seconds_until_closed(&mut stream).await,
        0.8,
        3.0,
    );

    // An HTTP/1.1 keep-alive connection after one answered request.
    let mut stream = raw_get_200(edge.http, "app.test", "/").await;
    in_time("idle HTTP/1.1", seconds_until_closed(&mut stream).await, 0.8, 3.0);

    // HTTP/2: pings keep a live idle connection open, so only the idle timeout closes it.
    let h2 = |addr| async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        let started = std::time::Instant::now();
        let ended = tokio::spawn(async move {
            let _ = conn.await;
            started.elapsed().as_secs_f64()
        });
        (sender, ended)
    };
    let get = || http::Request::get("http://app.test/").body(empty()).unwrap();
    let (mut sender, ended) = h2(edge.http).await;
    assert_eq!(sender.send_request(get()).await.unwrap().status(), 200);
    let closed = tokio::time::timeout(Duration::from_secs(6), ended)
        .await
        .ok()
        .map(|e| e.unwrap());
    // Below the maximum age (3 s), which would close it too.
    in_time("idle HTTP/2", closed, 0.8, 2.5);

    // A busy HTTP/2 connection (a request every 300 ms) is closed at its maximum age, gracefully:
    // every request sent before the GOAWAY is answered.
    let (mut sender, ended) = h2(edge.http).await;
    let mut answered = 0;
    while sender.ready().await.is_ok() {
        match sender.send_request(get()).await {
            Ok(response) if response.status() == 200 => answered += 1,
            Ok(response) => panic!("busy HTTP/2: {}", response.status()),
            Err(e) if e.is_canceled() || e.is_closed() => break,
            Err(e) => panic!("busy HTTP/2: {e}"),
        }
        if answered > 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let closed = tokio::time::timeout(Duration::from_secs(6), ended)
        .await
        .ok()
        .map(|e| e.unwrap());
    // Not the idle timeout (1 s): this one was busy; the age (3 s) counts from before the handshake.
    in_time("HTTP/2 at its maximum age", closed, 2.0, 5.0);
    assert!((5..=12).contains(&answered), "{answered} requests answered in 3 s");
    edge.stop().await;
}

/// A QUIC client that completes the handshake but never registers is closed at the deadline.
#[tokio::test]
async fn a_tunnel_connection_that_never_registers_is_closed() {
    init_logging();
    let tunnel = TestTunnel::new("app");
    let options = EdgeOptions {
        registration_timeout: Duration::from_secs(1),
        ..EdgeOptions::default()
    };
    let edge = TestEdge::start_with(&tunnels_file(&[&tunnel], &[("app.test", "app")]), options).await;
    let config = burrow_tunnel::tls::edge_client_config(Some(&edge.ca_pem)).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    let conn = endpoint.connect(edge.tunnel, "localhost").unwrap().await.unwrap();
    let started = std::time::Instant::now();
    let reason = tokio::time::timeout(Duration::from_secs(6), conn.closed()).await;
    let seconds = started.elapsed().as_secs_f64();
    assert!(reason.is_ok(), "still open after 6 s");
    assert!((0.5..3.0).contains(&seconds), "closed after {seconds:.2} s: {reason:?}");
    edge.stop().await;
}

#[tokio::test]
async fn registrations_from_one_address_are_rate_limited() {
    init_logging();
    let tunnel = TestTunnel::new("app");
    let options = EdgeOptions {
        registrations_per_minute: 2,
        ..Default::default()
    };
    let edge = TestEdge::start_with(&tunnels_file(&[&tunnel], &[("app.test", "app")]), options).await;
    let origin = named_origin("ok").await;
    // Three connections from one address; the edge takes two and tells the third to wait.
    let connector = TestConnector::to_url(edge.credentials(&tunnel), &format!("http://{origin}"), 3);
    connector.wait_ready(2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(edge.connections(&tunnel), 2);
    assert_eq!(
        connector.status.ready_connections(),
        2,
        "the third waits out the limit instead of registering"
    );
    assert_eq!(
        get(&http1_client(), edge.http, "app.test", "/").await.unwrap().text(),
        "ok",
        "the tunnel still serves"
    );
    connector.stop().await.unwrap();
    edge.stop().await;
}

/// Paced HTTP/2 "rapid reset" on one connection: rounds of 50 requests, a `pause` long enough
/// for the edge to start them, then a reset of each. Returns how many requests went out and
/// whether the edge closed the connection within 5 s.
async fn rapid_reset(edge: std::net::SocketAddr, pause: Duration) -> (usize, bool) {
    let tcp = tokio::net::TcpStream::connect(edge).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut sent = 0;
    'attack: for _round in 0..20 {
        let mut streams = Vec::new();
        for _ in 0..50 {
            client = match client.ready().await {
                Ok(c) => c,
                Err(_) => break 'attack,
            };
            let request = http::Request::get("http://app.test/").body(()).unwrap();
            match client.send_request(request, true) {
                Ok((_response, stream)) => streams.push(stream),
                Err(_) => break 'attack,
            }
            sent += 1;
        }
        tokio::time::sleep(pause).await;
        for mut stream in streams {
            stream.send_reset(h2::Reason::CANCEL);
        }
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), connection).await.is_ok();
    (sent, closed)
}

/// h2 stops resets of requests the server has not accepted yet (GOAWAY after 20); paced so that
/// every request has started, the flood is stopped by the edge's own premature-reset counter:
/// the connection is dropped once half of the last ≥ 100 requests were cancelled early.
#[tokio::test]
async fn paced_http2_rapid_reset_closes_the_connection() {
    init_logging();
    let (tunnel, other) = (TestTunnel::new("app"), TestTunnel::new("other"));
    let routes = [("app.test", "app"), ("other.test", "other")];
    let edge = TestEdge::start(&tunnels_file(&[&tunnel, &other], &routes)).await;
    let fast = named_origin("fine").await;
    let _other = TestConnector::to_url(edge.credentials(&other), &format!("http://{fast}"), 1);
    let slow = serve_origin(|_req| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        http::Response::new(full("late"))
    })
    .await;
    let _slow = TestConnector::to_url(edge.credentials(&tunnel), &format!("http://{slow}"), 1);
    edge.wait_connections(&tunnel, 1).await;

    for pause in [Duration::from_millis(10), Duration::from_millis(100)] {
        let (sent, closed) = rapid_reset(edge.http, pause).await;
        assert!(closed, "pause {pause:?}: the edge closed the attacking connection");
        assert!(sent <= 300, "pause {pause:?}: stopped early (sent {sent} of 1000)");
    }

    // Other clients are served as usual.
    edge.wait_connections(&other, 1).await;
    let response = get(&http1_client(), edge.http, "other.test", "/").await.unwrap();
    assert_eq!(response.text(), "fine");
}

/// A client that stalls its upload, or drips it too slowly, gets a 408 before the origin answers,
/// and the origin sees a cut upload (an error), never a complete-looking short body.
#[tokio::test]
async fn stalled_and_dripping_uploads_get_a_408() {
    init_logging();
    let options = EdgeOptions {
        request_body_idle_timeout: Duration::from_millis(1500),
        request_body_timeout: Duration::from_secs(3),
        ..EdgeOptions::default()
    };
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let origin = serve_origin(move |req| {
        let seen_tx = seen_tx.clone();
        async move {
            let body = http_body_util::BodyExt::collect(req.into_body()).await;
            let _ = seen_tx.send(body.map(|b| b.to_bytes().len()).map_err(|e| e.to_string()));
            http::Response::new(full("stored"))
        }
    })
    .await;
    let (edge, _connector) = edge_to(origin, options).await;

    // Chunked, so that only a reset (not a finished stream) makes the origin's read fail.
    let head = "POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n";
    // Stalls: one chunk, then nothing.
    let mut stream = tokio::net::TcpStream::connect(edge.http).await.unwrap();
    stream
        .write_all(format!("{head}a\r\n0123456789\r\n").as_bytes())
        .await
        .unwrap();
    assert_cut(&mut stream, "sent nothing", &mut seen).await;

    // Drips: a byte every 300 ms never trips the idle timeout, but the total one.
    let mut stream = tokio::net::TcpStream::connect(edge.http).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let drip = async {
        for _ in 0..100 {
            if stream.write_all(b"1\r\nx\r\n").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), drip).await;
    assert_cut(&mut stream, "did not arrive within", &mut seen).await;

    // A complete upload still goes through.
    let mut stream = tokio::net::TcpStream::connect(edge.http).await.unwrap();
    let head = head.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
    stream
        .write_all(format!("{head}64\r\n{}\r\n0\r\n\r\n", "y".repeat(100)).as_bytes())
        .await
        .unwrap();
    let answer = read_answer(&mut stream).await;
    assert!(status_line(&answer).contains("200"), "{answer}");
    let upload = seen.recv().await.unwrap();
    assert_eq!(upload, Ok(100));
}

/// The edge answered 408 for `why`, and the origin saw the upload fail rather than end.
async fn assert_cut(
    stream: &mut tokio::net::TcpStream,
    why: &str,
    seen: &mut tokio::sync::mpsc::UnboundedReceiver<Result<usize, String>>,
) {
    let answer = read_answer(stream).await;
    assert!(status_line(&answer).contains("408"), "{answer}");
    assert!(answer.contains("request_timeout") && answer.contains(why), "{answer}");
    let upload = tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(upload.is_err(), "the origin saw a cut upload as complete: {upload:?}");
}

/// What the edge wrote on `stream` until it closed it (or 5 s passed).
async fn read_answer(stream: &mut tokio::net::TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Credentials that pin another edge's certificate: the connector stops at once and says what
/// mismatches, instead of retrying forever on "invalid peer certificate".
#[tokio::test]
async fn credentials_pinning_another_certificate_say_so() {
    init_logging();
    let tunnel = TestTunnel::new("pinned");
    let edge = TestEdge::start(&tunnels_file(&[&tunnel], &[("pinned.test", "pinned")])).await;
    let mut credentials = edge.credentials(&tunnel);
    let other = burrow_edge::dataplane::tls::TlsIdentity::generate_self_signed(&["localhost".to_owned()]).unwrap();
    credentials.edge_ca = other.self_signed_pem;
    let connector = TestConnector::to_url(credentials, "http://127.0.0.1:9", 1);
    let result = tokio::time::timeout(Duration::from_secs(15), connector.join())
        .await
        .expect("the connector stops by itself");
    let error = format!("{:#}", result.unwrap_err());
    assert!(error.contains("not the one pinned in the credentials"), "{error}");
    assert!(error.contains("--data-dir"), "{error}");
    edge.stop().await;
}

/// A connector registering a tunnel that the store has but the edge's table does not hold yet
/// (its config is behind) is told to retry, and keeps at it until the table catches up; a wrong
/// secret for it stays a final refusal.
#[tokio::test]
async fn a_tunnel_the_table_does_not_hold_yet_is_pending_not_refused() {
    init_logging();
    let control = burrow_edge::control::resources::ControlPlane::new(
        burrow_edge::control::store::sqlite::SqliteStore::open_in_memory().unwrap(),
    );
    let (account, _) = account_in_test_zone(&control, "acme").await;
    let (tunnel, secret) = control.create_tunnel(account.id, "web").await.unwrap();
    control
        .route(
            account.id,
            "web.test",
            burrow_edge::control::resources::RouteTo::Tunnel("web"),
            false,
            None,
        )
        .await
        .unwrap();
    let edge = TestEdge::start_behind(control.clone()).await;
    let test_tunnel = TestTunnel {
        id: tunnel.id,
        name: tunnel.name.clone(),
        account: account.id,
        secret,
    };

    // A wrong secret: refused for good, although the table does not hold the tunnel either.
    let mut wrong = edge.credentials(&test_tunnel);
    wrong.secret = burrow_protocol::TunnelSecret::generate();
    let intruder = TestConnector::to_url(wrong, "http://127.0.0.1:9", 1);
    let refused = tokio::time::timeout(Duration::from_secs(20), intruder.join())
        .await
        .unwrap();
    let refused = format!("{:#}", refused.unwrap_err());
    assert!(refused.contains("unknown or its credentials are wrong"), "{refused}");

    let origin = named_origin("web").await;
    let connector = TestConnector::to_url(edge.credentials(&test_tunnel), &format!("http://{origin}"), 1);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        connector.status.ready_connections(),
        0,
        "not registered while the table is behind"
    );
    // The table catches up: the connector, still retrying, registers and serves.
    let snapshot = control.snapshot(&control.read_config().await.unwrap()).await.unwrap();
    edge.state.swap_routes(snapshot.to_table(None).unwrap());
    connector.wait_ready(1).await;
    let response = get(&http1_client(), edge.http, "web.test", "/").await.unwrap();
    assert_eq!(response.text(), "web");
    connector.stop().await.unwrap();
    edge.stop().await;
}

/// Send raw bytes (without `Connection: close`) and return the answer and whether the edge
/// closed the connection after it, within 2 s.
async fn raw_and_closed(edge: std::net::SocketAddr, request: &[u8]) -> (String, bool) {
    let mut stream = tokio::net::TcpStream::connect(edge).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut answer))
        .await
        .is_ok();
    (String::from_utf8_lossy(&answer).into_owned(), closed)
}

/// Statuses that say what was wrong, and connections closed when the framing cannot be trusted.
#[tokio::test]
async fn malformed_requests_get_the_status_that_fits() {
    init_logging();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let origin = serve_origin(move |req| {
        let seen = seen_tx.clone();
        async move {
            let _ = seen.send(format!("{} {}", req.method(), req.uri()));
            // Read the body first, as most origins do: a broken one then fails before an answer.
            match http_body_util::BodyExt::collect(req.into_body()).await {
                Ok(_) => http::Response::new(full("ok")),
                Err(_) => http::Response::builder().status(500).body(full("bad body")).unwrap(),
            }
        }
    })
    .await;
    let (edge, _connector) = edge_to(origin, EdgeOptions::default()).await;
    let long_method = format!("{} / HTTP/1.1\r\nHost: app.test\r\n\r\n", "M".repeat(300));
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: app.test\r\n\r\n", "a".repeat(70 * 1024));
    let cases: Vec<(&str, Vec<u8>, &str, bool)> = vec![
        ("a 300-byte method", long_method.into_bytes(), "400", true),
        (
            "a non-numeric port in Host",
            b"GET / HTTP/1.1\r\nHost: app.test:abc\r\n\r\n".to_vec(),
            "400",
            true,
        ),
        (
            "gzip, chunked",
            b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".to_vec(),
            "400",
            true,
        ),
        (
            "an invalid chunk size",
            b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(),
            "400",
            true,
        ),
        ("a 70 KiB target", long_uri.into_bytes(), "414", true),
        (
            "GET *",
            b"GET * HTTP/1.1\r\nHost: app.test\r\n\r\n".to_vec(),
            "400",
            true,
        ),
        (
            "CONNECT",
            b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n".to_vec(),
            "400",
            true,
        ),
    ];
    for (name, request, status, closes) in cases {
        let (answer, closed) = raw_and_closed(edge.http, &request).await;
        assert!(status_line(&answer).contains(status), "{name}: {answer}");
        assert_eq!(closed, closes, "{name}: connection closed after the answer? {answer}");
    }
    // `OPTIONS *` is the edge's to answer: the origin never sees a request for `*`.
    let (answer, _) = raw_and_closed(
        edge.http,
        b"OPTIONS * HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(status_line(&answer).contains("200"), "{answer}");
    // Only the chunked request's head went on (its body broke on the way): nothing else did.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(reached) = seen.try_recv() {
        assert_eq!(reached, "POST /", "reached the origin");
    }
    edge.stop().await;
}

/// HTTP/2 CONNECT is refused with a 400 as HTTP/1's is, and never reaches the origin.
#[tokio::test]
async fn http2_connect_is_refused_like_http1() {
    init_logging();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let origin = serve_origin(move |req| {
        let seen = seen_tx.clone();
        async move {
            let _ = seen.send(format!("{} {}", req.method(), req.uri()));
            http::Response::new(full("ok"))
        }
    })
    .await;
    let (edge, _connector) = edge_to(origin, EdgeOptions::default()).await;
    let tcp = tokio::net::TcpStream::connect(edge.http).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("app.test:80")
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.expect("an answer, not a reset");
    assert_eq!(response.status(), http::StatusCode::BAD_REQUEST);
    assert_eq!(response.headers()["burrow-error"], "bad_request");
    assert_no_more(&mut seen, "CONNECT reached the origin").await;
    edge.stop().await;
}

/// The origin receives WebSocket upgrades in origin-form, and none of the spellings of the
/// headers the edge sets that a visitor may send (CGI and WSGI map `_` to `-`).
#[tokio::test]
async fn origins_get_origin_form_and_no_spoofed_edge_headers() {
    init_logging();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let origin = serve_origin(move |req| {
        let seen = seen_tx.clone();
        async move {
            let names: Vec<String> = req.headers().keys().map(|k| k.to_string()).collect();
            let _ = seen.send((
                req.uri().to_string(),
                names,
                req.headers().get("burrow-connecting-ip").cloned(),
            ));
            http::Response::builder().status(400).body(full("no upgrade")).unwrap()
        }
    })
    .await;
    let (edge, _connector) = edge_to(origin, EdgeOptions::default()).await;
    let upgrade = b"GET /ws?x=1 HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nBurrow_Connecting_IP: 7.7.7.7\r\n\
X_Forwarded_For: 7.7.7.7\r\nburrow-request-id: forged\r\nConnection: close\r\n\r\n";
    let _ = raw(edge.http, upgrade).await;
    let (target, names, connecting_ip) = tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(target, "/ws?x=1", "origin-form");
    for spoofed in ["burrow_connecting_ip", "x_forwarded_for"] {
        assert!(
            !names.iter().any(|n| n == spoofed),
            "{spoofed} reached the origin: {names:?}"
        );
    }
    assert_eq!(connecting_ip.unwrap(), "127.0.0.1", "the edge's own value");
    edge.stop().await;
}

/// A tunnel holds at most `--max-connections-per-tunnel` connections on an edge (each is a store
/// write and a registry slot): more are refused with a retryable "too many connections".
#[tokio::test]
async fn connections_per_tunnel_are_capped() {
    init_logging();
    let tunnel = TestTunnel::new("capped");
    let options = EdgeOptions {
        max_connections_per_tunnel: 2,
        ..Default::default()
    };
    let edge = TestEdge::start_with(&tunnels_file(&[&tunnel], &[("capped.test", "capped")]), options).await;
    let origin = named_origin("capped").await;
    let connector = TestConnector::to_url(edge.credentials(&tunnel), &format!("http://{origin}"), 4);
    connector.wait_ready(2).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(edge.connections(&tunnel), 2);
    assert_eq!(connector.status.ready_connections(), 2, "the others wait to retry");
    let response = get(&http1_client(), edge.http, "capped.test", "/").await.unwrap();
    assert_eq!(response.text(), "capped");
    connector.stop().await.unwrap();
    edge.stop().await;
}

/// A tunnel whose secret changes (a tunnels file edited and reloaded) loses the connections made
/// with the old secret at once; their connector stops and says why.
#[tokio::test]
async fn a_changed_secret_closes_the_connections_made_with_the_old_one() {
    init_logging();
    let tunnel = TestTunnel::new("rotated");
    let routes = [("rotated.test", "rotated")];
    let edge = TestEdge::start(&tunnels_file(&[&tunnel], &routes)).await;
    let connector = TestConnector::to_url(edge.credentials(&tunnel), "http://127.0.0.1:9", 2);
    connector.wait_ready(2).await;
    let mut rotated = tunnel.clone();
    rotated.secret = burrow_protocol::TunnelSecret::generate();
    edge.state
        .swap_routes(tunnels_file(&[&rotated], &routes).to_table().unwrap());
    let stopped = tokio::time::timeout(Duration::from_secs(10), connector.join())
        .await
        .expect("the connector stops");
    let error = format!("{:#}", stopped.unwrap_err());
    assert!(error.contains("secret changed"), "{error}");
    assert_eq!(edge.connections(&tunnel), 0);
    edge.stop().await;
}
