//! Every kind of exchange a tunnel carries, as one origin and one check: plain GET, 10 MiB up
//! and down, server-sent events, WebSocket, HTTP/2 trailers. For whole deployments (a cluster
//! edge that forwards, a restarted one) that must carry all of them, not only a GET.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use sha2::{Digest, Sha256};

use crate::{BoxError, TestBody, empty, full, get, http1_client, send, serve_origin};

/// Size of the bodies `/upload` takes and `/download` gives.
pub const BULK_SIZE: usize = 10 * 1024 * 1024;

fn bulk() -> Bytes {
    (0..BULK_SIZE).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>().into()
}

/// An origin (HTTP/1.1 and h2c) answering:
/// - `/` → `name`
/// - `/upload` → `<sha256 hex> <length>` of the request body
/// - `/download` → [`BULK_SIZE`] bytes in 64 KiB chunks
/// - `/events` → `data: first`, then `data: second` once `/release` was asked for
/// - `/socket` → a WebSocket that echoes text and binary messages
/// - `/grpc` → a body, then trailers `grpc-status: 0` (over HTTP/2)
pub async fn every_kind_origin(name: &'static str) -> SocketAddr {
    let released = Arc::new(tokio::sync::Semaphore::new(0));
    let download = bulk();
    serve_origin(move |req| {
        let (released, download) = (released.clone(), download.clone());
        async move {
            match req.uri().path() {
                "/upload" => {
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    Response::new(full(format!("{:x} {}", Sha256::digest(&body), body.len())))
                }
                "/download" => {
                    let chunks: Vec<Result<http_body::Frame<Bytes>, BoxError>> = download
                        .chunks(64 * 1024)
                        .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
                        .collect();
                    Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(chunks))))
                }
                "/release" => {
                    released.add_permits(1);
                    Response::new(empty())
                }
                "/events" => events(released),
                "/socket" => websocket_echo(req),
                "/grpc" => grpc_answer(),
                _ => Response::new(full(name)),
            }
        }
    })
    .await
}

fn events(released: Arc<tokio::sync::Semaphore>) -> Response<TestBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        tx.send(Bytes::from_static(b"data: first\n\n")).await.unwrap();
        released.acquire().await.unwrap().forget();
        tx.send(Bytes::from_static(b"data: second\n\n")).await.unwrap();
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|data| (Ok::<_, BoxError>(http_body::Frame::data(data)), rx))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("text/event-stream"));
    response
}

fn websocket_echo(mut req: http::Request<hyper::body::Incoming>) -> Response<TestBody> {
    let key = req.headers().get("sec-websocket-key").cloned().unwrap();
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = hyper_util::rt::TokioIo::new(upgrade.await.unwrap());
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            upgraded,
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        while let Some(Ok(message)) = ws.next().await {
            if message.is_text() || message.is_binary() {
                ws.send(message).await.unwrap();
            }
        }
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(empty())
        .unwrap()
}

fn grpc_answer() -> Response<TestBody> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers.insert("grpc-message", HeaderValue::from_static("ok"));
    let frames: Vec<Result<http_body::Frame<Bytes>, BoxError>> = vec![
        Ok(http_body::Frame::data(Bytes::from_static(b"\0\0\0\0\x05hello"))),
        Ok(http_body::Frame::trailers(trailers)),
    ];
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames))));
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

/// Every exchange of [`every_kind_origin`] through the edge at `edge` for `host` (the `/grpc`
/// rule of the connector must speak HTTP/2 to the origin); panics naming what failed.
pub async fn check_every_kind(edge: SocketAddr, host: &str, name: &str) {
    let client = http1_client();
    let plain = get(&client, edge, host, "/").await.unwrap();
    assert_eq!(
        (plain.status, plain.text()),
        (StatusCode::OK, name.to_owned()),
        "GET via {edge}"
    );

    let payload = bulk();
    let expected = Sha256::digest(&payload);
    let upload = send(&client, edge, "PUT", host, "/upload", full(payload))
        .await
        .unwrap();
    assert_eq!(upload.text(), format!("{expected:x} {BULK_SIZE}"), "upload via {edge}");
    let download = get(&client, edge, host, "/download").await.unwrap();
    assert_eq!(download.body.len(), BULK_SIZE, "download via {edge}");
    assert_eq!(Sha256::digest(&download.body), expected, "download via {edge}");

    check_events(edge, host).await;
    check_websocket(edge, host).await;
    check_trailers(edge, host).await;
}

/// The first event arrives while the origin still holds the stream open.
async fn check_events(edge: SocketAddr, host: &str) {
    let client = http1_client();
    let request = http::Request::get(format!("http://{edge}/events"))
        .header("host", host)
        .body(empty())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .unwrap_or_else(|_| panic!("via {edge}: the first event must arrive while the origin holds the stream"))
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"data: first\n\n"));
    get(&client, edge, host, "/release").await.unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, Bytes::from_static(b"data: second\n\n"));
}

async fn check_websocket(edge: SocketAddr, host: &str) {
    let stream = tokio::net::TcpStream::connect(edge).await.unwrap();
    let url = format!("ws://{host}/socket");
    let request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async(request, stream).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for text in ["hello", "through", "the tunnel"] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap_or_else(|_| panic!("via {edge}: no WebSocket echo"))
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.close(None).await.unwrap();
}

/// HTTP/2 with prior knowledge to the edge; trailers come back.
async fn check_trailers(edge: SocketAddr, host: &str) {
    let tcp = tokio::net::TcpStream::connect(edge).await.unwrap();
    let (mut client, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = http::Request::post(format!("http://{host}/grpc"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(Bytes::from_static(b"\0\0\0\0\x02hi")))
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .unwrap_or_else(|| panic!("via {edge}: trailers must cross"));
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"\0\0\0\0\x05hello"));
}
