//! Per-request cost of the wasm plugin host, on real components built by `build.rs`: a fresh
//! instance and store per call, as the edge does for every request (or a reused one, for
//! bindings in reuse mode).
//! Run: `cargo bench -p burrow-tests --bench plugins`.
#![allow(clippy::unwrap_used, reason = "benchmark setup")]

use std::hint::black_box;

use burrow_edge::plugins::binding::{Binding, PluginBinding};
use burrow_edge::plugins::host::{Candidate, Exchange, Outcome, Phase, PluginHost, PluginRequest};
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};

fn request() -> PluginRequest {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("user-agent", "bench/1.0"),
        ("accept", "*/*"),
        ("accept-encoding", "gzip"),
        ("x-api-key", "k2"),
        ("cookie", "session=abc"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    PluginRequest {
        method: Method::GET,
        authority: "app.example.com".into(),
        path_and_query: "/index.html?q=1".into(),
        headers,
        client_addr: "192.0.2.7:50000".parse().unwrap(),
        request_id: "r1".into(),
        route: "app.example.com".into(),
        account: burrow_protocol::AccountId(uuid::Uuid::nil()),
    }
}

/// The request as the request-headers phase gets it.
fn exchange() -> Exchange {
    Exchange {
        request: request(),
        response: None,
        body: None,
    }
}

fn binding(plugin: &str, config: &str) -> Binding {
    Binding::new(PluginBinding {
        plugin: plugin.into(),
        config: config.into(),
        fail_open: false,
        ..PluginBinding::default()
    })
}

fn hooks(c: &mut Criterion) {
    // Calls run on the runtime worker of the request, as in the edge.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut host = PluginHost::new().unwrap();
    rt.block_on(host.load("noop", &std::fs::read(env!("PLUGIN_TEST_TRAP")).unwrap()))
        .unwrap();
    rt.block_on(host.load("header-auth", &std::fs::read(env!("PLUGIN_HEADER_AUTH")).unwrap()))
        .unwrap();
    rt.block_on(host.load("jwt-auth", &std::fs::read(env!("PLUGIN_JWT_AUTH")).unwrap()))
        .unwrap();
    rt.block_on(host.load(
        "balancer-latency",
        &std::fs::read(env!("PLUGIN_BALANCER_LATENCY")).unwrap(),
    ))
    .unwrap();

    // `test-trap` on a path without /trap: one getter call, then continue.
    let noop = [binding("noop", "")];
    c.bench_function("plugin on-request-headers, no-op, fresh instance", |b| {
        b.iter(|| {
            let outcome = rt
                .block_on(host.run(&noop, Phase::RequestHeaders, black_box(exchange())))
                .unwrap();
            assert!(matches!(outcome, Outcome::Continue(_)));
        })
    });
    let auth = [binding(
        "header-auth",
        r#"{"header": "x-api-key", "keys": ["k1", "k2"], "forward-as": "x-user"}"#,
    )];
    c.bench_function(
        "plugin on-request-headers, header-auth (JSON config, key found), fresh instance",
        |b| {
            b.iter(|| {
                let outcome = rt
                    .block_on(host.run(&auth, Phase::RequestHeaders, black_box(exchange())))
                    .unwrap();
                assert!(matches!(outcome, Outcome::Continue(_)));
            })
        },
    );
    // Reuse mode: one instance serves the binding's requests one after another.
    let auth_reused = [Binding::new(PluginBinding {
        reuse: 1_000_000,
        ..auth[0].spec.clone()
    })];
    c.bench_function("plugin on-request-headers, header-auth, reused instance", |b| {
        b.iter(|| {
            let outcome = rt
                .block_on(host.run(&auth_reused, Phase::RequestHeaders, black_box(exchange())))
                .unwrap();
            assert!(matches!(outcome, Outcome::Continue(_)));
        })
    });
    // test-trap answers 409 from its second request on (it sees its own mark): still a full call.
    let noop_reused = [Binding::new(PluginBinding {
        reuse: 1_000_000,
        ..noop[0].spec.clone()
    })];
    c.bench_function("plugin on-request-headers, no-op, reused instance", |b| {
        b.iter(|| {
            black_box(
                rt.block_on(host.run(&noop_reused, Phase::RequestHeaders, black_box(exchange())))
                    .unwrap(),
            )
        })
    });
    // jwt-auth: HS256 with a shared secret, ES256 against a one-key JWKS, RS256 with a PEM key
    // (the asymmetric ones verified by the edge through the crypto import).
    let exp = jsonwebtoken::get_current_timestamp() + 86_400;
    let claims = serde_json::json!({"sub": "alice", "aud": "api", "exp": exp});
    let hs_token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"bench secret"),
    )
    .unwrap();
    let hs = binding(
        "jwt-auth",
        r#"{"secret": "bench secret", "audiences": ["api"], "forward-claims": {"sub": "x-user"}}"#,
    );
    let es_key = rcgen::KeyPair::generate().unwrap();
    let mut es_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    es_header.kid = Some("k1".into());
    let es_token = jsonwebtoken::encode(
        &es_header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(es_key.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let point = es_key.public_key_raw();
    let b64 = |bytes: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    };
    let es_config = serde_json::json!({
        "jwks": {"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
            "x": b64(&point[1..33]), "y": b64(&point[33..65])}]},
        "audiences": ["api"], "forward-claims": {"sub": "x-user"},
    });
    let es = binding("jwt-auth", &es_config.to_string());
    let rs_token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!("../fixtures/rs256-test-key.pem")).unwrap(),
    )
    .unwrap();
    let rs_config = serde_json::json!({
        "public-keys": [include_str!("../fixtures/rs256-test-key.pub.pem")],
        "audiences": ["api"], "forward-claims": {"sub": "x-user"},
    });
    let rs = binding("jwt-auth", &rs_config.to_string());
    for (name, binding, token) in [
        ("HS256", hs, hs_token),
        ("ES256 JWKS", es, es_token),
        ("RS256 PEM", rs, rs_token),
    ] {
        let with_token = || {
            let mut exchange = exchange();
            exchange.request.headers.insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
            );
            exchange
        };
        let reused = Binding::new(PluginBinding {
            reuse: 1_000_000,
            ..binding.spec.clone()
        });
        for (mode, chain) in [("fresh", [binding]), ("reused", [reused])] {
            c.bench_function(
                &format!("plugin on-request-headers, jwt-auth {name}, {mode} instance"),
                |b| {
                    b.iter(|| {
                        let outcome = rt
                            .block_on(host.run(&chain, Phase::RequestHeaders, black_box(with_token())))
                            .unwrap();
                        assert!(matches!(outcome, Outcome::Continue(_)));
                    })
                },
            );
        }
    }
    let balancer = binding("balancer-latency", "");
    let candidates: Vec<Candidate> = (0..4u32)
        .map(|i| Candidate {
            index: i,
            name: format!("origin-{i}"),
            tunnel: format!("00000000-0000-0000-0000-00000000000{i}"),
            weight: 1,
            healthy: i != 2,
            in_flight: i * 3,
            latency_us: 1_000 + u64::from(i) * 250,
        })
        .collect();
    let reused = Binding::new(PluginBinding {
        reuse: 1_000_000,
        ..balancer.spec.clone()
    });
    for (mode, binding) in [("fresh", &balancer), ("reused", &reused)] {
        c.bench_function(
            &format!("plugin select-origin, balancer-latency, 4 candidates, {mode} instance"),
            |b| {
                b.iter(|| {
                    let chosen = rt
                        .block_on(host.select_origin(binding, black_box(request()), candidates.clone()))
                        .unwrap();
                    assert!(matches!(chosen, Some(i) if i != 2), "{chosen:?}");
                })
            },
        );
    }
    // The baseline the numbers above include: building the request the host hands over.
    c.bench_function("build the plugin request (baseline)", |b| {
        b.iter(|| black_box(request()))
    });
}

criterion_group!(benches, hooks);
criterion_main!(benches);
