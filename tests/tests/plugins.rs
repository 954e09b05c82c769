//! WebAssembly plugins at the edge: real components (built from `plugins/` by `build.rs`) run by
//! wasmtime for the routes they are bound to.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use burrow_edge::control::tunnels_file::RouteEntry;
use burrow_edge::plugins::binding::PluginBinding;
use burrow_tests::*;
use http::{Response, StatusCode};

const API_KEY_PLUGIN: &str = env!("PLUGIN_API_KEY");
const HEADER_AUTH: &str = env!("PLUGIN_HEADER_AUTH");
const JWT_AUTH: &str = env!("PLUGIN_JWT_AUTH");
const RATE_LIMIT: &str = env!("PLUGIN_RATE_LIMIT");
const TEST_TRAP: &str = env!("PLUGIN_TEST_TRAP");
const TEST_SPIN: &str = env!("PLUGIN_TEST_SPIN");

fn binding(plugin: &str, config: &str, fail_open: bool) -> PluginBinding {
    PluginBinding {
        plugin: plugin.into(),
        config: config.into(),
        fail_open,
        ..PluginBinding::default()
    }
}

/// An edge with the three test plugins loaded, each route bound to a chain, one connector to an
/// origin that echoes a few headers and counts requests.
async fn setup() -> (TestEdge, TestConnector, Arc<AtomicUsize>) {
    init_logging();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let origin = serve_origin(move |req| {
        counter.fetch_add(1, Ordering::Relaxed);
        let h = |name: &str| {
            req.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        let text = format!("user={} key={}", h("x-user"), h("x-api-key"));
        // What the rewrite plugin changed, as the origin saw it.
        let tags: Vec<&str> = req
            .headers()
            .get_all("x-tag")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        let response = Response::builder()
            .header("x-seen-path", req.uri().path_and_query().map_or("", |p| p.as_str()))
            .header("x-seen-tags", tags.join(","))
            .header("x-seen-debug", h("x-debug"))
            .body(full(text))
            .unwrap();
        async move { response }
    })
    .await;
    let tunnel = TestTunnel::new("app");
    let mut file = tunnels_file(&[&tunnel], &[]);
    let auth = r#"{"header": "x-api-key", "keys": ["alpha", "beta"], "forward-as": "x-user"}"#;
    for (host, plugins) in [
        ("auth.test", vec![binding("header-auth", auth, false)]),
        (
            "trap.test",
            // Room for the memory bomb to reach the cap (filling 16 MiB takes a few ms).
            vec![PluginBinding {
                deadline_ms: Some(100),
                ..binding("test-trap", "", false)
            }],
        ),
        ("open.test", vec![binding("test-trap", "", true)]),
        ("spin.test", vec![binding("test-spin", "", false)]),
        ("missing.test", vec![binding("not-loaded", "", false)]),
        (
            "reuse.test",
            vec![PluginBinding {
                reuse: 3,
                ..binding("test-trap", "", false)
            }],
        ),
    ] {
        file.routes.push(RouteEntry {
            hostname: host.into(),
            tunnel: Some("app".into()),
            pool: None,
            plugins,
        });
    }
    let jwt_hs = serde_json::json!({
        "secret": JWT_SECRET, "issuers": ["https://issuer.test"], "audiences": ["api"],
        "forward-claims": {"sub": "x-user"},
    });
    let es_key = &*ES_KEY;
    let point = es_key.public_key_raw();
    let jwt_es = serde_json::json!({
        "jwks": {"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig", "alg": "ES256",
            "x": base64url(&point[1..33]), "y": base64url(&point[33..65])}]},
        "forward-claims": {"sub": "x-user"},
        // With a secret as well, an HS256 token made with the public key reaches verification
        // (and must fail there, not just for an unaccepted algorithm).
        "secret": "the route's own HMAC secret",
    });
    let limit = serde_json::json!({"rate": 1, "per-secs": 60, "burst": 3, "key": "header:x-client"});
    let api_key = serde_json::json!({
        "query": "api_key", "forward-as": "x-user",
        "keys": [{"id": "ci", "sha256": sha256_hex(API_KEY)}, {"id": "other", "sha256": sha256_hex("other")}],
    });
    for (host, plugin, config) in [
        ("jwt.test", "jwt-auth", jwt_hs),
        ("jwt-es.test", "jwt-auth", jwt_es),
        (
            "jwt-rs.test",
            "jwt-auth",
            serde_json::json!({"public-keys": [RS_PUBLIC_PEM]}),
        ),
        ("limit.test", "rate-limit", limit.clone()),
        ("key.test", "api-key", api_key),
        ("limit-2.test", "rate-limit", limit),
        (
            "rewrite-host.test",
            "rewrite",
            serde_json::json!({"rules": [{"set-header": {"name": "host", "value": "other.test"}}]}),
        ),
        (
            "rewrite.test",
            "rewrite",
            serde_json::json!({"rules": [
                {"redirect": {"match": "^/old(/.*)?$", "to": "https://new.test$1", "status": 301}},
                {"redirect": {"match": "^/go(/.*)$", "to": "$1"}},
                {"strip-prefix": "/api"},
                {"regex": {"match": "^/users/(\\d+)$", "replace": "/u/$1"}},
                {"replace-prefix": {"from": "/v1", "to": "/v2"}},
                {"set-header": {"name": "x-tag", "value": "one"}},
                {"append-header": {"name": "x-tag", "value": "two"}},
                {"remove-header": "x-debug"},
            ]}),
        ),
    ] {
        file.routes.push(RouteEntry {
            hostname: host.into(),
            tunnel: Some("app".into()),
            pool: None,
            plugins: vec![PluginBinding {
                // ECDSA takes milliseconds in wasm (see plugins/jwt-auth/README.md).
                deadline_ms: Some(100),
                ..binding(plugin, &config.to_string(), false)
            }],
        });
    }
    let options = EdgeOptions {
        plugins: vec![
            ("api-key", API_KEY_PLUGIN),
            ("header-auth", HEADER_AUTH),
            ("jwt-auth", JWT_AUTH),
            ("rate-limit", RATE_LIMIT),
            ("rewrite", env!("PLUGIN_REWRITE")),
            ("test-trap", TEST_TRAP),
            ("test-spin", TEST_SPIN),
        ],
        ..Default::default()
    };
    let edge = TestEdge::start_with(&file, options).await;
    let connector = TestConnector::to_url(edge.credentials(&tunnel), &format!("http://{origin}"), 1);
    connector.wait_ready(1).await;
    edge.wait_connections(&tunnel, 1).await;
    (edge, connector, hits)
}

/// The key of the key.test route; its config holds only the SHA-256.
const API_KEY: &str = "s3cret+key/1";

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn api_key_plugin_checks_hashed_keys_in_a_header_or_the_query() {
    let (edge, connector, hits) = setup().await;
    let client = http1_client();
    let call = |path: &str, headers: &[(&str, &str)]| {
        let mut request = http::Request::get(format!("http://{}{path}", edge.http)).header("host", "key.test");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(empty()).unwrap();
        let client = client.clone();
        async move {
            let response = client.request(request).await.unwrap();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default()
            };
            let (status, challenge, path) = (response.status(), header("www-authenticate"), header("x-seen-path"));
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned(), challenge, path)
        }
    };
    let (status, _, challenge, _) = call("/", &[]).await;
    assert_eq!((status, challenge.as_str()), (StatusCode::UNAUTHORIZED, "ApiKey"));
    assert_eq!(call("/", &[("x-api-key", "wrong")]).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(call("/?api_key=wrong", &[]).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(hits.load(Ordering::Relaxed), 0, "no denied request reaches the origin");

    // In the header: the origin learns which key, never the key; a visitor's own x-user is replaced.
    let (status, body, _, _) = call("/", &[("x-api-key", API_KEY), ("x-user", "admin")]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "user=ci key="));
    // In the query (percent-encoded): the parameter is taken out of what the origin is asked for.
    let (status, body, _, path) = call("/items?a=1&api_key=s3cret%2Bkey%2F1&b=2", &[]).await;
    assert_eq!(
        (status, body.as_str(), path.as_str()),
        (StatusCode::OK, "user=ci key=", "/items?a=1&b=2")
    );
    let (status, _, _, path) = call("/items?api_key=s3cret%2Bkey%2F1", &[]).await;
    assert_eq!((status, path.as_str()), (StatusCode::OK, "/items"));
    connector.stop().await.unwrap();
    edge.stop().await;
}

#[tokio::test]
async fn header_auth_plugin_guards_a_route() {
    let (edge, connector, hits) = setup().await;
    let client = http1_client();
    let denied = get(&client, edge.http, "auth.test", "/").await.unwrap();
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
    assert_eq!(denied.text(), "missing or invalid API key\n");
    assert_eq!(
        hits.load(Ordering::Relaxed),
        0,
        "a denied request never reaches the origin"
    );

    let request = http::Request::get(format!("http://{}/", edge.http))
        .header("host", "auth.test")
        .header("x-api-key", "beta")
        .body(empty())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(
        &body[..],
        b"user=1 key=",
        "the plugin's header changes reach the origin; the key does not"
    );
    connector.stop().await.unwrap();
    edge.stop().await;
}

#[tokio::test]
async fn a_trap_or_a_runaway_plugin_fails_only_its_request() {
    let (edge, connector, hits) = setup().await;
    let client = http1_client();
    let trapped = get(&client, edge.http, "trap.test", "/trap").await.unwrap();
    assert_eq!(trapped.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(trapped.headers["burrow-error"], "plugin_failed");
    // A memory bomb hits the cap: that request fails, nothing else.
    let bomb = get(&client, edge.http, "trap.test", "/grow").await.unwrap();
    assert_eq!(bomb.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(bomb.headers["burrow-error"], "plugin_failed");
    // The same plugin serves the next requests, each in a fresh instance that sees none of the
    // memory of the ones before (the plugin answers 409 if it does).
    for _ in 0..3 {
        assert_eq!(
            get(&client, edge.http, "trap.test", "/fine").await.unwrap().status,
            StatusCode::OK
        );
    }

    // An endless loop is stopped by the deadline rather than holding the request.
    let spun = tokio::time::timeout(Duration::from_secs(5), get(&client, edge.http, "spin.test", "/spin"))
        .await
        .expect("the deadline stops a runaway plugin")
        .unwrap();
    assert_eq!(spun.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        !spun.text().contains("deadline") && !spun.text().contains("test-spin"),
        "nothing of the plugin on the visitor's page: {}",
        spun.text()
    );
    assert_eq!(
        get(&client, edge.http, "spin.test", "/fine").await.unwrap().status,
        StatusCode::OK
    );

    // Fail-open: the trap is logged and the request goes through.
    let open = get(&client, edge.http, "open.test", "/trap").await.unwrap();
    assert_eq!(open.status, StatusCode::OK);
    // A binding to a plugin this edge does not have fails closed, with the reason.
    let missing = get(&client, edge.http, "missing.test", "/").await.unwrap();
    assert_eq!(missing.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!missing.text().contains("not-loaded"), "{}", missing.text());
    assert_eq!(
        hits.load(Ordering::Relaxed),
        5,
        "only the passing requests reached the origin"
    );
    // Operators see each plugin's calls by result, and their duration.
    let metrics = get(&client, edge.admin, "localhost", "/metrics").await.unwrap().text();
    for line in [
        r#"burrow_plugin_calls_total{plugin="test-trap",account="",result="trap"} 3"#,
        r#"burrow_plugin_calls_total{plugin="test-trap",account="",result="ok"} 3"#,
        r#"burrow_plugin_calls_total{plugin="test-spin",account="",result="deadline"} 1"#,
        r#"burrow_plugin_call_duration_seconds_count{plugin="test-trap",account=""} 6"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "no {line:?} in\n{metrics}");
    }
    connector.stop().await.unwrap();
    edge.stop().await;
}

/// A visitor who makes a fail-closed plugin trap on purpose fails its own requests only: the
/// breaker trips on failures from several clients, not a burst from one, so everyone else's
/// requests keep passing.
#[tokio::test]
async fn crafted_failures_cannot_trip_a_plugin_for_everyone() {
    let (edge, connector, _hits) = setup().await;
    let client = http1_client();
    let status = |path: &'static str| {
        let client = client.clone();
        let http = edge.http;
        async move { get(&client, http, "trap.test", path).await.unwrap().status }
    };
    for _ in 0..25 {
        assert_eq!(status("/trap").await, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let mut normal_ok = 0;
    for _ in 0..100 {
        normal_ok += usize::from(status("/fine").await == StatusCode::OK);
    }
    assert_eq!(normal_ok, 100, "normal requests after a burst of crafted failures");
    let mut normal_ok = 0;
    for _ in 0..100 {
        assert_eq!(status("/trap").await, StatusCode::INTERNAL_SERVER_ERROR);
        normal_ok += usize::from(status("/fine").await == StatusCode::OK);
    }
    assert!(
        normal_ok >= 99,
        "normal requests interleaved with crafted ones: {normal_ok} of 100"
    );
    connector.stop().await.unwrap();
    edge.stop().await;
}

/// In reuse mode one instance serves a binding's requests one after another (its memory carries
/// over: test-trap answers 409 when it sees its own mark) and is replaced after `reuse` requests.
#[tokio::test]
async fn reuse_mode_keeps_an_instance_for_n_requests() {
    let (edge, connector, hits) = setup().await;
    let client = http1_client();
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(
            get(&client, edge.http, "reuse.test", "/")
                .await
                .unwrap()
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 409, 409, 200, 409, 409, 200]);
    assert_eq!(
        hits.load(Ordering::Relaxed),
        3,
        "only fresh instances let requests through"
    );
    connector.stop().await.unwrap();
    edge.stop().await;
}

/// A binding the edge could not run is refused by the API (422 naming the problem) and changes
/// nothing; a good one is accepted.
#[tokio::test]
async fn the_api_refuses_bindings_to_plugins_it_cannot_run() {
    init_logging();
    let dir = TempDir::new();
    let options = EdgeOptions {
        plugins: vec![
            ("header-auth", HEADER_AUTH),
            ("latency", env!("PLUGIN_BALANCER_LATENCY")),
        ],
        ..Default::default()
    };
    let (edge, control) = TestEdge::start_with_store_options(dir.path(), options).await;
    let (account, token) = account_in_test_zone(&control, "alice").await;
    control.create_tunnel(account.id, "web").await.unwrap();
    let client = http1_client();
    let api = |method: &str, path: &str, body: serde_json::Value| {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", edge.api))
            .header("authorization", format!("Bearer {token}"))
            .body(full(body.to_string()))
            .unwrap();
        let client = client.clone();
        async move {
            let response = client.request(request).await.unwrap();
            let status = response.status();
            let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap();
            (status, String::from_utf8_lossy(&body.to_bytes()).into_owned())
        }
    };
    let route = |plugin: &str| serde_json::json!({ "tunnel": "web", "plugins": [{ "plugin": plugin }] });
    let (status, body) = api("PUT", "/v1/routes/a.test", route("nope")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("does not exist: upload it"), "{body}");
    let (status, body) = api("PUT", "/v1/routes/a.test", route("latency")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("is a balancer"), "{body}");
    let pool = |plugin: &str| serde_json::json!({ "origins": [{ "tunnel": "web" }], "steering": "plugin", "balancer": { "plugin": plugin } });
    let (status, body) = api("PUT", "/v1/pools/p", pool("header-auth")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("cannot balance a pool"), "{body}");
    let reused = serde_json::json!({ "tunnel": "web", "plugins": [{ "plugin": "header-auth", "reuse": 1_000_000 }] });
    let (status, body) = api("PUT", "/v1/routes/a.test", reused).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("reuse is at most"), "{body}");
    let reused = serde_json::json!({ "origins": [{ "tunnel": "web" }], "steering": "plugin",
        "balancer": { "plugin": "latency", "reuse": 1_000_000 } });
    let (status, body) = api("PUT", "/v1/pools/p", reused).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("reuse is at most"), "{body}");
    assert!(
        control.list_routes(account.id).await.unwrap().is_empty(),
        "nothing was stored"
    );

    let (status, body) = api("PUT", "/v1/routes/a.test", route("header-auth")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // An account cannot upload under the name of a plugin the edge provides to everyone.
    let upload = http::Request::put(format!("http://{}/v1/plugins/header-auth", edge.api))
        .header("authorization", format!("Bearer {token}"))
        .body(full(std::fs::read(HEADER_AUTH).unwrap()))
        .unwrap();
    let response = client.request(upload).await.unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let (status, body) = api("PUT", "/v1/pools/p", pool("latency")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    edge.stop().await;
}

const JWT_SECRET: &str = "a shared secret of the jwt.test route";

/// The RSA key of the jwt-rs.test route (a throwaway made for these tests) and its public half.
const RS_PRIVATE_PEM: &str = include_str!("../fixtures/rs256-test-key.pem");
const RS_PUBLIC_PEM: &str = include_str!("../fixtures/rs256-test-key.pub.pem");

/// The ES256 key of the jwt-es.test route (its public half is in the route's JWKS).
static ES_KEY: std::sync::LazyLock<rcgen::KeyPair> = std::sync::LazyLock::new(|| rcgen::KeyPair::generate().unwrap());

fn base64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn hs256(claims: serde_json::Value, secret: &str) -> String {
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn es256(claims: serde_json::Value, key: &rcgen::KeyPair, kid: &str) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.into());
    let key = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// What the origin answered (it echoes `x-user`), or the edge's refusal and its challenge.
async fn with_token(edge: &TestEdge, host: &str, token: Option<&str>, extra: &[(&str, &str)]) -> (u16, String, String) {
    let mut request = http::Request::get(format!("http://{}/", edge.http)).header("host", host);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let response = http1_client().request(request.body(empty()).unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), challenge)
}

#[tokio::test]
async fn jwt_auth_plugin_checks_signature_and_claims() {
    let (edge, connector, hits) = setup().await;
    let claims = |extra: serde_json::Value| {
        let mut claims = serde_json::json!({
            "sub": "alice", "iss": "https://issuer.test", "aud": "api", "exp": now() + 600,
        });
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        claims
    };

    let (status, _, challenge) = with_token(&edge, "jwt.test", None, &[]).await;
    assert_eq!((status, challenge.as_str()), (401, "Bearer realm=\"burrow\""));

    let valid = hs256(claims(serde_json::json!({})), JWT_SECRET);
    let (status, body, _) = with_token(&edge, "jwt.test", Some(&valid), &[("x-user", "mallory")]).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "user=alice key="),
        "the claim replaces the visitor's header"
    );

    let refused = [
        (
            "expired",
            hs256(claims(serde_json::json!({"exp": now() - 3600})), JWT_SECRET),
            "token expired",
        ),
        (
            "not yet valid",
            hs256(claims(serde_json::json!({"nbf": now() + 3600})), JWT_SECRET),
            "token not valid yet",
        ),
        (
            "wrong audience",
            hs256(claims(serde_json::json!({"aud": "other"})), JWT_SECRET),
            "audience not accepted",
        ),
        (
            "wrong issuer",
            hs256(claims(serde_json::json!({"iss": "https://evil.test"})), JWT_SECRET),
            "issuer not accepted",
        ),
        (
            "wrong key",
            hs256(claims(serde_json::json!({})), "another secret"),
            "no configured key verifies the signature",
        ),
        ("garbage", "not.a.jwt".to_owned(), "malformed token"),
    ];
    for (case, token, description) in refused {
        let (status, body, challenge) = with_token(&edge, "jwt.test", Some(&token), &[("x-user", "mallory")]).await;
        assert_eq!(status, 401, "{case}: {body}");
        assert_eq!(body, format!("{description}\n"), "{case}");
        assert!(
            challenge.contains(&format!("error=\"invalid_token\", error_description=\"{description}\"")),
            "{case}: {challenge}"
        );
    }
    assert_eq!(
        hits.load(Ordering::Relaxed),
        1,
        "refused requests never reach the origin"
    );

    // ES256 against a JWKS: the right key passes; another key, another kid, or an HS256 token
    // "signed" with the public key (algorithm confusion) do not.
    let es_claims = serde_json::json!({"sub": "bob", "exp": now() + 600});
    let (status, body, _) = with_token(
        &edge,
        "jwt-es.test",
        Some(&es256(es_claims.clone(), &ES_KEY, "k1")),
        &[],
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "user=bob key="));
    let other_key = rcgen::KeyPair::generate().unwrap();
    let public_pem = ES_KEY.public_key_pem();
    for (case, token) in [
        ("other key", es256(es_claims.clone(), &other_key, "k1")),
        ("unknown kid", es256(es_claims.clone(), &ES_KEY, "k2")),
        ("algorithm confusion", hs256(es_claims.clone(), &public_pem)),
    ] {
        let (status, body, _) = with_token(&edge, "jwt-es.test", Some(&token), &[]).await;
        assert_eq!(status, 401, "{case}: {body}");
    }
    assert_eq!(hits.load(Ordering::Relaxed), 2);

    // RSA (checked by the edge natively through the crypto import), PKCS #1 v1.5 and PSS; the
    // claims are still checked in the plugin after the signature holds.
    let rsa = |alg, claims: &serde_json::Value| {
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(RS_PRIVATE_PEM.as_bytes()).unwrap();
        jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), claims, &key).unwrap()
    };
    for alg in [jsonwebtoken::Algorithm::RS256, jsonwebtoken::Algorithm::PS256] {
        let (status, body, _) = with_token(&edge, "jwt-rs.test", Some(&rsa(alg, &es_claims)), &[]).await;
        assert_eq!(status, 200, "{alg:?}: {body}");
    }
    let valid = rsa(jsonwebtoken::Algorithm::RS256, &es_claims);
    let (head, signature) = valid.rsplit_once('.').unwrap();
    let flipped = if signature.starts_with('A') { 'B' } else { 'A' };
    let tampered = format!("{head}.{flipped}{}", &signature[1..]);
    let expired = rsa(
        jsonwebtoken::Algorithm::RS256,
        &serde_json::json!({"sub": "bob", "exp": now() - 3600}),
    );
    for (case, token, description) in [
        (
            "tampered signature",
            tampered,
            "no configured key verifies the signature",
        ),
        ("expired", expired, "token expired"),
    ] {
        let (status, body, _) = with_token(&edge, "jwt-rs.test", Some(&token), &[]).await;
        assert_eq!((status, body.trim_end()), (401, description), "{case}");
    }
    assert_eq!(hits.load(Ordering::Relaxed), 4);
    connector.stop().await.unwrap();
    edge.stop().await;
}

/// The rate-limit plugin keeps its buckets in the host's key-value store: they hold across fresh
/// instances, per client and per route.
#[tokio::test]
async fn rate_limit_plugin_answers_429_after_the_burst() {
    let (edge, connector, hits) = setup().await;
    let client = http1_client();
    let call = |host: &'static str, who: &'static str| {
        let request = http::Request::get(format!("http://{}/", edge.http))
            .header("host", host)
            .header("x-client", who)
            .body(empty())
            .unwrap();
        let client = client.clone();
        async move {
            let response = client.request(request).await.unwrap();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            (response.status().as_u16(), retry_after)
        }
    };
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(call("limit.test", "alice").await.0);
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429, 429],
        "a burst of 3, then one token a minute"
    );
    let (status, retry_after) = call("limit.test", "alice").await;
    let retry_after: u64 = retry_after.expect("a 429 says when to retry").parse().unwrap();
    assert_eq!(status, 429);
    assert!((1..=60).contains(&retry_after), "retry after {retry_after} s");
    assert_eq!(
        call("limit.test", "bob").await.0,
        200,
        "another client has its own bucket"
    );
    assert_eq!(
        call("limit-2.test", "alice").await.0,
        200,
        "another route has its own buckets"
    );
    assert_eq!(
        hits.load(Ordering::Relaxed),
        5,
        "limited requests never reach the origin"
    );
    // The plugin counts what it refused (its own metric, on the edge's /metrics).
    let metrics = get(&http1_client(), edge.admin, "localhost", "/metrics")
        .await
        .unwrap()
        .text();
    let line = r#"burrow_plugin_counter_total{plugin="rate-limit",account="",name="limited"} 3"#;
    assert!(metrics.lines().any(|l| l == line), "no {line:?} in\n{metrics}");
    connector.stop().await.unwrap();
    edge.stop().await;
}

#[tokio::test]
async fn rewrite_plugin_changes_path_and_headers_or_redirects() {
    let (edge, connector, hits) = setup().await;
    let client = http1_client();
    let call = |path: &'static str| {
        let request = http::Request::get(format!("http://{}{path}", edge.http))
            .header("host", "rewrite.test")
            .header("x-debug", "secret")
            .header("x-tag", "visitor")
            .body(empty())
            .unwrap();
        let client = client.clone();
        async move { client.request(request).await.unwrap() }
    };
    for (asked, seen) in [
        ("/api/users/42?x=1", "/u/42?x=1"),
        ("/api", "/"),
        ("/apix/users/7", "/apix/users/7"),
        ("/v1/things", "/v2/things"),
        ("/api/v1/a%20b", "/v2/a%20b"),
    ] {
        let response = call(asked).await;
        assert_eq!(response.status(), StatusCode::OK, "{asked}");
        let headers = response.headers();
        assert_eq!(headers["x-seen-path"], seen, "{asked}");
        assert_eq!(
            headers["x-seen-tags"], "one,two",
            "set replaces the visitor's value, append adds"
        );
        assert_eq!(headers["x-seen-debug"], "", "removed");
    }
    let redirect = call("/old/page?q=1").await;
    assert_eq!(redirect.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(redirect.headers()["location"], "https://new.test/page?q=1");
    let local = call("/go//evil.test/x").await;
    assert_eq!(local.status(), StatusCode::FOUND);
    assert_eq!(
        local.headers()["location"],
        "/evil.test/x",
        "a local redirect stays on this host"
    );
    // The Host header is the edge's: a plugin that tries to change it fails the request closed.
    let host = get(&client, edge.http, "rewrite-host.test", "/").await.unwrap();
    assert_eq!(host.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(hits.load(Ordering::Relaxed), 5, "the redirect is answered at the edge");
    connector.stop().await.unwrap();
    edge.stop().await;
}

/// Changing a route's plugin chain while requests flow: each change rebuilds the routing table off
/// the hot path and swaps it in; no request fails or sees a half-applied chain.
#[tokio::test]
async fn swapping_plugins_under_load_fails_no_request() {
    init_logging();
    let dir = TempDir::new();
    let options = EdgeOptions {
        plugins: vec![("header-auth", HEADER_AUTH), ("rewrite", env!("PLUGIN_REWRITE"))],
        ..Default::default()
    };
    let (edge, control) = TestEdge::start_with_store_options(dir.path(), options).await;
    let (account, _token) = account_in_test_zone(&control, "alice").await;
    let (tunnel, secret) = control.create_tunnel(account.id, "web").await.unwrap();
    // Every chain lets a request with key k2 through, each in its own way.
    let tag = r#"{"rules": [{"set-header": {"name": "x-user", "value": "tagged"}}]}"#;
    let chains: Vec<Vec<PluginBinding>> = vec![
        vec![binding("header-auth", r#"{"keys": ["k2"]}"#, false)],
        vec![binding(
            "header-auth",
            r#"{"keys": ["k1", "k2"], "forward-as": "x-user"}"#,
            false,
        )],
        vec![
            binding("rewrite", tag, false),
            binding("header-auth", r#"{"keys": ["k2", "k3"]}"#, false),
        ],
    ];
    let routes = burrow_edge::control::resources::RouteTo::Tunnel("web");
    control
        .route(account.id, "swap.test", routes, false, Some(chains[0].clone()))
        .await
        .unwrap();
    let origin = named_origin("ok").await;
    let connector = edge
        .serve_store_tunnel(&tunnel, secret, &format!("http://{origin}"), 1)
        .await;
    eventually(Duration::from_secs(10), "the route to be served", || async {
        edge.state.routes.load().lookup("swap.test").is_some()
    })
    .await;

    let load = Load::start(edge.http, "swap.test", &[("x-api-key", "k2")], 4);
    for round in 1..=12 {
        let chain = chains[round % chains.len()].clone();
        control
            .route(account.id, "swap.test", routes, true, Some(chain.clone()))
            .await
            .unwrap();
        eventually(Duration::from_secs(10), "the new chain to be served", || async {
            edge.state
                .routes
                .load()
                .lookup("swap.test")
                .is_some_and(|r| r.plugins.iter().map(|b| &b.spec).eq(chain.iter()))
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    load.finish_without_failures(100).await;
    connector.stop().await.unwrap();
    edge.stop().await;
}

/// The API client an account's CLI uses, logged in with `token`.
fn account_api(edge: &TestEdge, token: String) -> burrow_connector::api_client::ApiClient {
    use burrow_connector::api_client::{ApiClient, Login};
    let api = format!("http://{}", edge.api);
    ApiClient::new(Login {
        api,
        token,
        api_ca: None,
    })
    .unwrap()
}

/// An account uploads components through the API: each distinct upload is a new version, a
/// binding pins one, a route moves between versions under load without a failed request, and a
/// bound version cannot be deleted.
#[tokio::test]
async fn uploaded_plugins_are_versioned_pinned_and_swapped_under_load() {
    use http::Method;
    use serde_json::json;

    init_logging();
    let dir = TempDir::new();
    let (edge, control) = TestEdge::start_with_store(dir.path()).await;
    let (account, token) = account_in_test_zone(&control, "alice").await;
    let (tunnel, secret) = control.create_tunnel(account.id, "web").await.unwrap();
    let routes = burrow_edge::control::resources::RouteTo::Tunnel("web");
    control.route(account.id, "up.test", routes, false, None).await.unwrap();
    let origin = serve_origin(|req| {
        let user = req.headers().get("x-user").map(|v| v.to_str().unwrap().to_owned());
        async move { Response::new(full(user.unwrap_or_default())) }
    })
    .await;
    let connector = edge
        .serve_store_tunnel(&tunnel, secret, &format!("http://{origin}"), 1)
        .await;
    let api = account_api(&edge, token);
    let upload = |name: &str, wasm: Vec<u8>| {
        let path = format!("/v1/plugins/{name}");
        let api = &api;
        async move {
            api.upload::<serde_json::Value>(&path, wasm.into(), "application/wasm")
                .await
        }
    };

    // What is not a component is refused before anything is stored.
    let error = upload("gate", b"#!/bin/sh\necho hi".to_vec())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("not a WebAssembly component"), "{error}");
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let error = upload("gate", core_module).await.unwrap_err().to_string();
    assert!(error.contains("core WebAssembly module"), "{error}");
    let mut truncated = std::fs::read(HEADER_AUTH).unwrap();
    truncated.truncate(truncated.len() / 2);
    let error = upload("gate", truncated).await.unwrap_err().to_string();
    assert!(error.contains("not a valid WebAssembly component"), "{error}");

    // One upload per account compiles at a time; the next waits its turn or is told to.
    let host = edge.state.config.plugins.as_ref().unwrap();
    let turn = host.queue_upload(account.id).unwrap();
    let error = upload("gate", std::fs::read(HEADER_AUTH).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("another upload of this account is being compiled"),
        "{error}"
    );
    drop(turn);

    let v1 = upload("gate", std::fs::read(HEADER_AUTH).unwrap()).await.unwrap();
    assert_eq!((v1["version"].as_u64(), v1["kind"].as_str()), (Some(1), Some("hooks")));
    let again = upload("gate", std::fs::read(HEADER_AUTH).unwrap()).await.unwrap();
    assert_eq!(again["version"], 1, "the same bytes are the same version");
    let v2 = upload("gate", std::fs::read(env!("PLUGIN_REWRITE")).unwrap())
        .await
        .unwrap();
    assert_eq!(v2["version"], 2);
    let sha1 = v1["sha256"].as_str().unwrap().to_owned();

    let auth = r#"{"keys": ["k2"], "forward-as": "x-user"}"#;
    let tag = r#"{"rules": [{"set-header": {"name": "x-user", "value": "tagged"}}]}"#;
    let bind = |version: Option<u32>, config: &str| {
        let mut binding = json!({ "plugin": "gate", "config": config });
        if let Some(v) = version {
            binding["version"] = json!(v);
        }
        api_json(
            &api,
            Method::PUT,
            "/v1/routes/up.test/plugins",
            Some(json!({ "plugins": [binding] })),
        )
    };
    let error = bind(Some(9), auth).await.unwrap_err().to_string();
    assert!(error.contains("version 9 of plugin \"gate\" does not exist"), "{error}");
    let route = bind(Some(1), auth).await.unwrap();
    assert_eq!(route["plugins"][0]["version"], 1);
    let runs = |version: u32| {
        let state = edge.state.clone();
        async move {
            state
                .routes
                .load()
                .lookup("up.test")
                .is_some_and(|r| r.plugins.first().is_some_and(|b| b.version == Some(version)))
        }
    };
    eventually(Duration::from_secs(10), "gate@1 bound", || runs(1)).await;
    assert_eq!(with_token(&edge, "up.test", None, &[]).await.0, 401);
    let (status, body, _) = with_token(&edge, "up.test", None, &[("x-api-key", "k2")]).await;
    assert_eq!((status, body.as_str()), (200, "0"), "the index of the key");
    // Compiled once, kept on disk for the next start.
    assert!(dir.path().join(format!("plugins/{sha1}.cwasm")).exists());

    // Without a version a binding pins the latest; a later upload does not move it.
    let route = bind(None, tag).await.unwrap();
    assert_eq!(route["plugins"][0]["version"], 2);
    eventually(Duration::from_secs(10), "gate@2 bound", || runs(2)).await;
    assert_eq!(with_token(&edge, "up.test", None, &[]).await.1, "tagged");
    // Its calls are counted under the account that uploaded it.
    let metrics = get(&http1_client(), edge.admin, "localhost", "/metrics")
        .await
        .unwrap()
        .text();
    let series = format!(
        r#"burrow_plugin_calls_total{{plugin="gate@2",account="{}",result="ok"}}"#,
        account.id
    );
    assert!(metrics.contains(&series), "{series} not in\n{metrics}");
    upload("gate", std::fs::read(env!("PLUGIN_RATE_LIMIT")).unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        with_token(&edge, "up.test", None, &[]).await.1,
        "tagged",
        "still gate@2"
    );

    // Between versions under load: every request passes either version.
    let load = Load::start(edge.http, "up.test", &[("x-api-key", "k2")], 4);
    for round in 0..8 {
        let (version, config) = if round % 2 == 0 { (1, auth) } else { (2, tag) };
        bind(Some(version), config).await.unwrap();
        eventually(Duration::from_secs(10), "the new version bound", || runs(version)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    load.finish_without_failures(50).await;

    // gate@2 is bound (the last round): it cannot go, the others can.
    let error = api_json(&api, Method::DELETE, "/v1/plugins/gate", None)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("gate@2 is bound to route up.test"), "{error}");
    api_json(&api, Method::DELETE, "/v1/plugins/gate/1", None)
        .await
        .unwrap();
    let listed = api_json(&api, Method::GET, "/v1/plugins", None).await.unwrap();
    let versions: Vec<(u64, String)> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].as_u64().unwrap(), v["bound"].to_string()))
        .collect();
    assert_eq!(versions, [(2, r#"["route up.test"]"#.to_owned()), (3, "[]".to_owned())]);
    // Numbers are never given twice: after deleting 3, the next upload is 4.
    api_json(&api, Method::DELETE, "/v1/plugins/gate/3", None)
        .await
        .unwrap();
    let v4 = upload("gate", std::fs::read(API_KEY_PLUGIN).unwrap()).await.unwrap();
    assert_eq!(v4["version"], 4);
    assert_eq!(with_token(&edge, "up.test", None, &[]).await.1, "tagged");

    connector.stop().await.unwrap();
    edge.stop().await;
}

/// A bind and a delete of one plugin version, sent at the same time, never both succeed: the
/// route never names a deleted version (it would fail closed on every edge).
#[tokio::test]
async fn a_delete_racing_a_bind_never_leaves_a_route_naming_a_deleted_version() {
    use http::Method;
    use serde_json::json;

    init_logging();
    let dir = TempDir::new();
    let (edge, control) = TestEdge::start_with_store(dir.path()).await;
    let (account, token) = account_in_test_zone(&control, "alice").await;
    control.create_tunnel(account.id, "web").await.unwrap();
    let web = burrow_edge::control::resources::RouteTo::Tunnel("web");
    control.route(account.id, "race.test", web, false, None).await.unwrap();
    let api = account_api(&edge, token);
    let wasm = std::fs::read(HEADER_AUTH).unwrap();
    let bind = |plugins: serde_json::Value| {
        api_json(
            &api,
            Method::PUT,
            "/v1/routes/race.test/plugins",
            Some(json!({ "plugins": plugins })),
        )
    };
    let (mut bind_won, mut delete_won) = (0, 0);
    for _ in 0..30 {
        let uploaded = api
            .upload::<serde_json::Value>("/v1/plugins/gate", wasm.clone().into(), "application/wasm")
            .await
            .unwrap();
        let version = uploaded["version"].as_u64().unwrap();
        let binding = json!([{ "plugin": "gate", "version": version, "config": r#"{"keys": ["k"]}"# }]);
        let delete_path = format!("/v1/plugins/gate/{version}");
        let (bound, deleted) = tokio::join!(bind(binding), api_json(&api, Method::DELETE, &delete_path, None));
        match (bound, deleted) {
            (Ok(_), Err(refused)) => {
                let refused = refused.to_string();
                assert!(refused.contains("is bound to route race.test"), "{refused}");
                bind_won += 1;
                bind(json!([])).await.unwrap();
                api_json(&api, Method::DELETE, &delete_path, None).await.unwrap();
            }
            (Err(refused), Ok(_)) => {
                let refused = refused.to_string();
                assert!(
                    refused.contains("does not exist") || refused.contains("changed concurrently"),
                    "{refused}"
                );
                delete_won += 1;
            }
            (bound, deleted) => panic!("gate@{version}: bind {bound:?}, delete {deleted:?}"),
        }
        let route = api_json(&api, Method::GET, "/v1/routes/race.test", None).await.unwrap();
        let plugins = api_json(&api, Method::GET, "/v1/plugins", None).await.unwrap();
        // Whichever won, nothing is left bound to a deleted version.
        assert!(route["plugins"].as_array().is_none_or(Vec::is_empty), "{route}");
        assert_eq!(plugins["items"], json!([]), "{plugins}");
    }
    eprintln!("races decided: the bind won {bind_won}, the delete won {delete_won}");
    edge.stop().await;
}

/// Body and response hooks (`test-body`): the request body is read whole and replaced or
/// refused, the response head changed, the response body rewritten with a matching
/// Content-Length; bodies over the plugin's limit and a trap in a response hook fail cleanly.
#[tokio::test]
async fn body_and_response_hooks_see_and_rewrite_whole_bodies() {
    init_logging();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let origin = serve_origin(move |req| {
        counter.fetch_add(1, Ordering::Relaxed);
        let path = req.uri().path().to_owned();
        async move {
            let body = http_body_util::BodyExt::collect(req.into_body())
                .await
                .unwrap()
                .to_bytes();
            let (status, body) = match path.as_str() {
                "/missing" => (404, bytes::Bytes::from_static(b"nope")),
                "/big" => (200, bytes::Bytes::from(vec![b'x'; 2048])),
                _ => (200, body),
            };
            Response::builder().status(status).body(full(body)).unwrap()
        }
    })
    .await;
    let tunnel = TestTunnel::new("app");
    let mut file = tunnels_file(&[&tunnel], &[]);
    for (host, fail_open) in [("body.test", false), ("body-open.test", true)] {
        file.routes.push(RouteEntry {
            hostname: host.into(),
            tunnel: Some("app".into()),
            pool: None,
            plugins: vec![binding("test-body", "", fail_open)],
        });
    }
    let options = EdgeOptions {
        plugins: vec![("test-body", env!("PLUGIN_TEST_BODY"))],
        ..Default::default()
    };
    let edge = TestEdge::start_with(&file, options).await;
    let connector = TestConnector::to_url(edge.credentials(&tunnel), &format!("http://{origin}"), 1);
    connector.wait_ready(1).await;
    let client = http1_client();
    let call = |host: &'static str, method: &'static str, path: &'static str, body: Vec<u8>| {
        send(&client, edge.http, method, host, path, full(body))
    };

    let echoed = call("body.test", "POST", "/echo", b"hello".to_vec()).await.unwrap();
    assert_eq!(echoed.status, StatusCode::OK);
    assert_eq!(
        echoed.text(),
        "HELLO [inspected 5 bytes]",
        "upper-cased on the way in, noted on the way out"
    );
    assert_eq!(echoed.headers["x-status-seen"], "200");
    assert_eq!(echoed.headers["content-length"], "25");

    // on-log runs once the response is out, beside the request: it saw 25 bytes go out.
    let logged = || async {
        let last = call("body.test", "GET", "/last-log?path=/echo", Vec::new())
            .await
            .unwrap();
        last.text() == "200 25 completed\n"
    };
    eventually(Duration::from_secs(5), "on-log to see the request", logged).await;
    let other = call("body.test", "GET", "/last-log?path=/missing", Vec::new())
        .await
        .unwrap();
    assert_eq!(other.text(), "\n", "nothing logged for a path not requested yet");

    let refused = call("body.test", "POST", "/echo", b"this is forbidden".to_vec())
        .await
        .unwrap();
    assert_eq!(
        (refused.status, refused.text().as_str()),
        (StatusCode::FORBIDDEN, "forbidden body\n")
    );
    let too_big = call("body.test", "POST", "/echo", vec![b'a'; 2048]).await.unwrap();
    assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(too_big.headers["burrow-error"], "payload_too_large");
    assert_eq!(hits.load(Ordering::Relaxed), 1, "refused bodies never reach the origin");

    let missing = call("body.test", "GET", "/missing", Vec::new()).await.unwrap();
    assert_eq!(missing.status, StatusCode::GONE);
    assert_eq!(missing.headers["x-status-seen"], "404");
    assert_eq!(missing.text(), "nope [inspected 4 bytes]");

    let big = call("body.test", "GET", "/big", Vec::new()).await.unwrap();
    assert_eq!(big.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(big.headers["burrow-error"], "plugin_failed");

    let trapped = call("body.test", "GET", "/trap-response", Vec::new()).await.unwrap();
    assert_eq!(trapped.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(trapped.headers["burrow-error"], "plugin_failed");
    // Fail-open: the failed hook is skipped, the later ones still run.
    let open = call("body-open.test", "GET", "/trap-response", Vec::new())
        .await
        .unwrap();
    assert_eq!(open.status, StatusCode::OK);
    assert!(open.headers.get("x-status-seen").is_none());
    assert_eq!(open.text(), " [inspected 0 bytes]");
    let metrics = get(&client, edge.admin, "localhost", "/metrics").await.unwrap().text();
    let logged = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"burrow_plugin_counter_total{plugin="test-body",account="",name="logged"} "#))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(
        logged.is_some_and(|n| n >= 5),
        "on-log counted the requests: {logged:?}"
    );
    // Bodies announced bigger than a fail-open plugin reads pass untouched, both ways.
    let passed = call("body-open.test", "POST", "/echo", vec![b'a'; 2048]).await.unwrap();
    assert_eq!((passed.status, passed.body.len()), (StatusCode::OK, 2048));
    assert!(passed.body.iter().all(|b| *b == b'a'), "neither upper-cased nor noted");
    // HEAD has no body to hook, and keeps its framing.
    let head = call("body.test", "HEAD", "/big", Vec::new()).await.unwrap();
    assert_eq!((head.status, head.body.len()), (StatusCode::OK, 0));
    assert_eq!(head.headers["content-length"], "2048");
    connector.stop().await.unwrap();
    edge.stop().await;
}
