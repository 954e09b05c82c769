//! Codec cost per request: encoding and decoding a typical request head, and a data frame.
//! Run: `cargo bench -p burrow-protocol`.

use std::hint::black_box;

use burrow_protocol::{Frame, RequestHead, RequestKind, Scheme, TunnelCodec};
use bytes::{Bytes, BytesMut};
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use tokio_util::codec::{Decoder, Encoder};

fn typical_head() -> RequestHead {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-US,en;q=0.9"),
        ("accept-encoding", "gzip, deflate, br"),
        ("cookie", "session=0123456789abcdef0123456789abcdef; theme=dark"),
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "app.example.com"),
        ("burrow-connecting-ip", "203.0.113.7"),
        ("burrow-request-id", "5f0c6a1e9d3b4a7c8e2f1d0b9a8c7e6f"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    RequestHead {
        kind: RequestKind::Http,
        flags: 0,
        method: Method::GET,
        scheme: Scheme::Https,
        authority: "app.example.com".into(),
        path: "/api/v1/items?page=2&sort=desc".into(),
        headers,
        client_addr: "203.0.113.7:51234".parse().expect("valid address"),
        request_id: "5f0c6a1e9d3b4a7c8e2f1d0b9a8c7e6f".into(),
    }
}

fn codec(c: &mut Criterion) {
    let head = typical_head();
    c.bench_function("encode request head (10 headers)", |b| {
        let mut codec = TunnelCodec::default();
        let mut buf = BytesMut::with_capacity(1024);
        b.iter(|| {
            buf.clear();
            codec
                .encode(Frame::RequestHead(Box::new(black_box(head.clone()))), &mut buf)
                .expect("encodes");
        })
    });
    let mut encoded = BytesMut::new();
    TunnelCodec::default()
        .encode(Frame::RequestHead(Box::new(head)), &mut encoded)
        .expect("encodes");
    c.bench_function("decode request head (10 headers)", |b| {
        let mut codec = TunnelCodec::default();
        b.iter(|| {
            let mut buf = encoded.clone();
            black_box(codec.decode(&mut buf).expect("decodes"));
        })
    });
    let data = Bytes::from(vec![7u8; 16 * 1024]);
    c.bench_function("encode + decode 16 KiB data frame", |b| {
        let mut codec = TunnelCodec::default();
        let mut buf = BytesMut::with_capacity(32 * 1024);
        b.iter(|| {
            codec.encode(Frame::Data(data.clone()), &mut buf).expect("encodes");
            black_box(codec.decode(&mut buf).expect("decodes"));
        })
    });
}

criterion_group!(benches, codec);
criterion_main!(benches);
