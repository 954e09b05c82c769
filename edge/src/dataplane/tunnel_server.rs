//! The QUIC listener where connectors register their tunnel connections.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use burrow_protocol::body::write_frame;
use burrow_protocol::frame::read_frame;
use burrow_protocol::{
    ControlMessage, Frame, PROTOCOL_VERSION, Register, Registered, RejectCode, Rejected, TunnelCodec, error_code,
};
use futures_util::StreamExt;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::dataplane::registry::{ConnectionInfo, TunnelConnection};
use crate::{EdgeConfig, EdgeState};

/// Build shard `shard` (of `shards`)'s QUIC endpoint on a socket the caller bound, with the
/// node's [`endpoint_secret`]. Call it on the runtime that is to drive the endpoint and its
/// connections.
pub fn endpoint(
    config: &EdgeConfig,
    socket: UdpSocket,
    secret: &[u8],
    (shard, shards): (usize, usize),
) -> Result<quinn::Endpoint> {
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(config.tunnel_idle_timeout).context("tunnel idle timeout too large")?;
    transport.max_idle_timeout(Some(idle));
    // Connectors open exactly one stream (control); requests are streams the edge opens.
    transport.max_concurrent_bidi_streams(1u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    // Bounded receive windows: quinn's connection window is unlimited by default.
    transport.stream_receive_window((4u32 * 1024 * 1024).into());
    transport.receive_window((16u32 * 1024 * 1024).into());
    transport.send_window(16 * 1024 * 1024);
    // The edge sends liveness probes as datagrams ([`crate::dataplane::registry::PROBE_AFTER`]) and reads
    // none (quinn allows sending only with a receive buffer): a few bytes of it, so a connector
    // cannot park memory here with datagrams.
    transport.datagram_receive_buffer_size(Some(64));
    let server_config = config.tls.tunnel_server_config(transport)?;
    socket.set_nonblocking(true)?;
    let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    // Connection IDs carry a check value keyed from the same secret: a restarted edge must see
    // its predecessor's IDs as its own to answer them with resets. They also name their shard.
    let tag = ring::hmac::sign(&key, b"connection ids");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&tag.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(key));
    endpoint_config.cid_generator(move || Box::new(crate::dataplane::shards::ShardCids::new(cid_key, shard, shards)));
    // quinn's default (one reset per 20 ms) would leave most connectors of a busy node to their
    // idle timeout after a restart. A reset is smaller than the packet that caused it, so this
    // amplifies nothing.
    endpoint_config.min_reset_interval(Duration::from_micros(100));
    quinn::Endpoint::new(endpoint_config, Some(server_config), socket, runtime).context("creating QUIC endpoint")
}

/// The secret of this node's QUIC stateless resets, kept in the data directory so that it
/// survives a restart. A restarted edge then answers its old connections' packets with resets
/// the connectors accept (RFC 9000 §10.3): they reconnect at their next keep-alive instead of
/// waiting out the idle timeout. Without a data directory the secret is random and lasts one run.
pub fn endpoint_secret(data_dir: Option<&std::path::Path>) -> Result<Vec<u8>> {
    let Some(dir) = data_dir else {
        return Ok(rand::random::<[u8; 32]>().to_vec());
    };
    let path = dir.join("stateless-reset.key");
    let bytes = match std::fs::read(&path) {
        Ok(bytes) if bytes.len() == 32 => bytes,
        Ok(_) => anyhow::bail!(
            "{} is not a 32-byte key; delete it and a new one is made",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes = rand::random::<[u8; 32]>().to_vec();
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            burrow_shared::files::write_private(&path, &bytes)?;
            bytes
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(bytes)
}

pub async fn serve(endpoint: quinn::Endpoint, state: Arc<EdgeState>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    if let Ok(addr) = endpoint.local_addr() {
        let shard = crate::dataplane::shards::current();
        tracing::info!(%addr, node = %state.config.node_name, shard, "tunnel listener ready");
    }
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(i) => i,
                None => break,
            },
            () = shutdown.cancelled() => break,
        };
        tracker.spawn(handle_connection(incoming, state.clone(), shutdown.clone()));
    }
    tracker.close();
    // Each connection task tells its connector to drain; give them the grace period.
    if tokio::time::timeout(state.config.grace_period, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("tunnel connections still busy after the grace period; closing them");
    }
    endpoint.close(error_code::EDGE_SHUTDOWN.into(), b"edge shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}

async fn handle_connection(incoming: quinn::Incoming, state: Arc<EdgeState>, shutdown: CancellationToken) {
    let remote = incoming.remote_address();
    let deadline = state.config.registration_timeout;
    let registered = tokio::time::timeout(deadline, async {
        let conn = incoming.await.map_err(|e| format!("handshake: {e}"))?;
        register(conn, &state).await
    })
    .await;
    let (conn, mut control_send, mut control_recv) = match registered {
        Ok(Ok(parts)) => parts,
        Ok(Err(reason)) => {
            state.metrics.count_registration("rejected");
            tracing::warn!(%remote, "tunnel registration failed: {reason}");
            return;
        }
        Err(_) => {
            state.metrics.count_registration("timeout");
            tracing::warn!(%remote, "tunnel connection did not register within {deadline:?}; closed");
            return;
        }
    };
    state.registry.add(conn.clone());
    // The table may have been swapped since the credentials were checked (the tunnel deleted,
    // its secret changed); that swap may have missed this connection, so check again.
    if let Some(why) = crate::dataplane::registry::revoked(&state.routes.load(), &conn.info) {
        state.registry.remove(conn.info.tunnel, conn.info.connection_id);
        state.metrics.count_registration("rejected");
        tracing::warn!(%remote, tunnel = %conn.info.tunnel, "{why} during registration; closed");
        conn.quic.close(error_code::TUNNEL_REVOKED.into(), why.as_bytes());
        return;
    }
    state.metrics.count_registration("ok");
    state.metrics.tunnel_connections.inc();
    let info = &conn.info;
    tracing::info!(
        tunnel = %info.tunnel, connector = %info.connector, conn_index = info.conn_index,
        origin = %info.origin_addr, version = %info.version, shard = crate::dataplane::shards::current(),
        "tunnel connection registered"
    );

    // Serve the control stream until the connection ends.
    let mut listed = true;
    loop {
        tokio::select! {
            frame = control_recv.next(), if listed => match frame {
                Some(Ok(Frame::Control(ControlMessage::Unregister))) => {
                    // Graceful drain: no new streams; in-flight ones finish, the connector closes.
                    state.registry.remove(info.tunnel, info.connection_id);
                    listed = false;
                    tracing::info!(tunnel = %info.tunnel, conn_index = info.conn_index, "tunnel connection unregistered");
                }
                Some(Ok(other)) => {
                    tracing::warn!(tunnel = %info.tunnel, "unexpected control frame {other:?}; closing");
                    conn.quic.close(error_code::PROTOCOL_ERROR.into(), b"unexpected control frame");
                    break;
                }
                Some(Err(e)) => {
                    conn.quic.close(error_code::PROTOCOL_ERROR.into(), b"malformed control frame");
                    tracing::warn!(tunnel = %info.tunnel, "malformed control frame: {e}");
                    break;
                }
                None => listed = false,
            },
            reason = conn.quic.closed() => {
                tracing::info!(tunnel = %info.tunnel, conn_index = info.conn_index, "tunnel connection closed: {reason}");
                break;
            }
            () = shutdown.cancelled() => {
                state.registry.remove(info.tunnel, info.connection_id);
                let _ = write_frame(&mut control_send, Frame::Control(ControlMessage::Drain), &state.config.limits).await;
                // Let in-flight requests finish; the connector closes once they have.
                let _ = tokio::time::timeout(state.config.grace_period, conn.quic.closed()).await;
                break;
            }
        }
    }
    state.registry.remove(info.tunnel, info.connection_id);
    state.metrics.tunnel_connections.dec();
}

type ControlRecv = FramedRead<quinn::RecvStream, TunnelCodec>;

/// Read the `Register` message, check it against the current snapshot, answer it.
async fn register(
    conn: quinn::Connection,
    state: &EdgeState,
) -> Result<(Arc<TunnelConnection>, quinn::SendStream, ControlRecv), String> {
    let limits = state.config.limits;
    let (mut send, recv) = conn.accept_bi().await.map_err(|e| format!("no control stream: {e}"))?;
    let mut frames = FramedRead::new(recv, TunnelCodec::new(limits));
    let request = match read_frame(&mut frames, &limits).await {
        Ok(Some(Frame::Control(ControlMessage::Register(r)))) => r,
        Ok(other) => {
            let shown = other.as_ref().map(frame_kind).unwrap_or("end of stream");
            reject(
                &conn,
                &mut send,
                RejectCode::Malformed,
                format!("expected register, got {shown}"),
                &limits,
            )
            .await;
            return Err(format!("expected register, got {shown}"));
        }
        Err(e) => {
            reject(
                &conn,
                &mut send,
                RejectCode::Malformed,
                format!("bad register message: {e}"),
                &limits,
            )
            .await;
            return Err(format!("bad register message: {e}"));
        }
    };
    let Register {
        protocol,
        account,
        tunnel_id,
        secret,
        conn_index,
        connector_id,
        version,
        ..
    } = request;
    if let Err(wait) = state
        .registrations
        .hit(crate::rate_limit::network(conn.remote_address().ip()))
    {
        let msg = format!(
            "too many registrations from this address; retry in {}s",
            wait.as_secs() + 1
        );
        reject(&conn, &mut send, RejectCode::RateLimited, msg.clone(), &limits).await;
        return Err(msg);
    }
    if protocol != PROTOCOL_VERSION {
        let msg = format!("protocol version {protocol} is not supported (this edge speaks {PROTOCOL_VERSION})");
        reject(&conn, &mut send, RejectCode::UnsupportedVersion, msg.clone(), &limits).await;
        return Err(msg);
    }
    let secret_sha256 = match authorize(state, account, tunnel_id, &secret).await {
        Ok(hash) => hash,
        Err((code, msg)) => {
            reject(&conn, &mut send, code, msg.clone(), &limits).await;
            return Err(msg);
        }
    };
    // Every connection is a store write and a slot in the registry: a tunnel gets a bounded number.
    let cap = state.config.max_connections_per_tunnel;
    if state.registry.count(&tunnel_id) >= cap {
        let msg =
            format!("tunnel {tunnel_id} already has {cap} connections on this edge (the most it takes); retry later");
        reject(&conn, &mut send, RejectCode::TooManyConnections, msg.clone(), &limits).await;
        return Err(msg);
    }
    let info = ConnectionInfo {
        connection_id: Uuid::new_v4(),
        tunnel: tunnel_id,
        connector: connector_id,
        conn_index,
        origin_addr: conn.remote_address(),
        version,
        since: SystemTime::now(),
        secret_sha256,
    };
    let reply = Registered {
        connection_id: info.connection_id,
        edge_node: state.config.node_name.clone(),
        location: state.config.location.clone(),
        edges: state.tunnel_addrs(),
    };
    write_frame(&mut send, Frame::Control(ControlMessage::Registered(reply)), &limits)
        .await
        .map_err(|e| format!("sending registered: {e}"))?;
    Ok((Arc::new(TunnelConnection::new(info, conn)), send, frames))
}

/// How long a registration waits for the table to catch up with a tunnel the store already has
/// (at most the registration timeout leaves after the handshake).
const CATCH_UP: Duration = Duration::from_secs(3);

/// Check a registration's credentials against the current table, so that reconnects work while
/// the control plane is down. A tunnel the table does not hold yet may be one created a moment
/// ago (the table is rebuilt after the store's write): wait a little for it, then ask the store,
/// which tells "not yet" (retry) from "no such tunnel" (final). Returns the secret's hash.
async fn authorize(
    state: &EdgeState,
    account: burrow_protocol::AccountId,
    tunnel: burrow_protocol::TunnelId,
    secret: &burrow_protocol::TunnelSecret,
) -> Result<[u8; 32], (RejectCode, String)> {
    // One message for unknown tunnels and wrong secrets: do not tell a guesser which exist.
    let refused = || {
        let msg = format!("tunnel {tunnel} is unknown or its credentials are wrong");
        (RejectCode::Unauthorized, msg)
    };
    let verified = |state: &EdgeState| {
        let table = state.routes.load();
        let record = table.tunnel(&tunnel)?;
        Some(record.verify(account, secret).then_some(record.secret_sha256))
    };
    if let Some(verdict) = verified(state) {
        return verdict.ok_or_else(refused);
    }
    let wait = CATCH_UP.min(state.config.registration_timeout / 2);
    if state.wait_for_tunnel(&tunnel, wait).await {
        return verified(state).flatten().ok_or_else(refused);
    }
    // A tunnels file is the whole truth; so is an edge-only node's last snapshot.
    match state.stored_tunnel(account, tunnel).await {
        StoredTunnel::NoStore | StoredTunnel::Unknown => Err(refused()),
        StoredTunnel::Found(record) if !record.verify(account, secret) => Err(refused()),
        StoredTunnel::Found(_) => {
            let msg = format!("tunnel {tunnel} exists but this edge's config does not hold it yet; retry shortly");
            Err((RejectCode::Pending, msg))
        }
        // The store is down: the table is all this edge knows, and it may be behind.
        StoredTunnel::Unavailable(e) => Err((
            RejectCode::Pending,
            format!("tunnel {tunnel} is not in this edge's config and the store cannot be asked ({e}); retry shortly"),
        )),
    }
}

/// What the store says of a tunnel the table does not hold (see [`EdgeState::stored_tunnel`]).
pub enum StoredTunnel {
    /// This edge has no store (a tunnels file, an edge-only node).
    NoStore,
    Unknown,
    Found(crate::route_table::TunnelRecord),
    Unavailable(String),
}

async fn reject(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    code: RejectCode,
    message: String,
    limits: &burrow_protocol::Limits,
) {
    let retry_after_ms = match code {
        RejectCode::Unauthorized | RejectCode::RateLimited => Some(5_000),
        RejectCode::TooManyConnections => Some(30_000),
        RejectCode::Pending => Some(500),
        _ => None,
    };
    let frame = Frame::Control(ControlMessage::Rejected(Rejected {
        code,
        message,
        retry_after_ms,
    }));
    if write_frame(send, frame, limits).await.is_ok() {
        let _ = send.finish();
        // Give the connector a moment to read the reason before the connection goes.
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
    }
    conn.close(error_code::REGISTRATION_FAILED.into(), b"registration rejected");
}

fn frame_kind(frame: &Frame) -> &'static str {
    match frame {
        Frame::Control(_) => "another control message",
        Frame::RequestHead(_) | Frame::ResponseHead(_) => "a head",
        Frame::Data(_) | Frame::Trailers(_) | Frame::Error(_) => "a body frame",
    }
}
