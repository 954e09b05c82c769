//! The link between the edges of a cluster, so that any edge serves any tunnel: a request for a
//! tunnel with no live connection on this edge goes to an edge that has one, over QUIC with
//! mutual TLS (certificates of the cluster's CA), one stream per request.
//!
//! The forwarded stream carries what a tunnel stream carries — the request head and body
//! frames, the response frames back — after a short preamble naming the tunnel. The edge that
//! receives it opens a stream on one of its own connections of that tunnel and copies bytes
//! both ways (backpressure, WebSocket and trailers included: nothing is re-parsed), so plugins,
//! header rewriting and error pages happen once, on the edge the visitor reached. A forwarded
//! request is only ever served locally: never forwarded again, so there are no loops.
//!
//! Which edge: one holding a connection of the tunnel ([`ClusterView`], kept from the store by
//! `control::cluster`), in this edge's location first, then the least loaded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use burrow_protocol::TunnelId;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::EdgeState;
use crate::dataplane::registry::InFlight;
use crate::dataplane::respond::ProxyError;

/// ALPN of the inter-edge link.
pub const ALPN: &[u8] = b"burrow-peer/1";
/// The name every node certificate carries: any node of the cluster may serve any other.
pub const SERVER_NAME: &str = "burrow-peer";
/// Starts every forwarded stream, before the tunnel id.
const MAGIC: &[u8; 4] = b"BPF1";
/// The receiving edge's first byte: it opened a stream on a connection of the tunnel (the
/// body may follow), or it has none — the request never left, and another edge is tried.
const ACCEPTED: u8 = 1;
const NOT_HERE: u8 = 0;
/// A peer that does not send its preamble within this is dropped.
const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(5);
/// An edge that failed a forwarded request is tried after the others for this long.
const FAILED_FOR: Duration = Duration::from_secs(10);
/// Dialing another edge gives up after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What a node says of itself in the store (`nodes/<name>`, under its lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub location: String,
    /// Where other edges reach its inter-edge link (`HOST:PORT`, UDP).
    pub peer: Option<String>,
    /// Where connectors reach it (its `--advertise` addresses).
    pub tunnel_addrs: Vec<String>,
    /// Requests in flight on its tunnel connections when it last wrote this record.
    pub load: u64,
}

/// The cluster as this edge last saw it in the store.
#[derive(Debug, Default)]
pub struct ClusterView {
    pub nodes: HashMap<String, NodeRecord>,
    /// The nodes' link addresses, resolved when the view was made (never on a request's path).
    pub links: HashMap<String, SocketAddr>,
    /// For each tunnel, the nodes holding connections of it and how many.
    pub holders: HashMap<TunnelId, HashMap<String, usize>>,
}

impl ClusterView {
    /// Other nodes holding a connection of `tunnel`, best first: this `location`, then the
    /// least loaded; only nodes with a link address.
    pub fn candidates(&self, tunnel: &TunnelId, me: &str, location: &str) -> Vec<(&NodeRecord, SocketAddr)> {
        let Some(holders) = self.holders.get(tunnel) else {
            return Vec::new();
        };
        let mut found: Vec<(&NodeRecord, SocketAddr)> = holders
            .keys()
            .filter(|name| name.as_str() != me)
            .filter_map(|name| Some((self.nodes.get(name)?, *self.links.get(name)?)))
            .collect();
        found.sort_by_key(|(node, _)| (node.location != location, node.load, node.name.clone()));
        found
    }

    /// Tunnel addresses of the other nodes, for connectors to spread over: this `location`'s
    /// first.
    pub fn tunnel_addrs(&self, me: &str, location: &str) -> Vec<String> {
        let mut nodes: Vec<&NodeRecord> = self.nodes.values().filter(|n| n.name != me).collect();
        nodes.sort_by_key(|n| (n.location != location, n.name.clone()));
        nodes.iter().flat_map(|n| n.tunnel_addrs.iter().cloned()).collect()
    }
}

/// This edge's end of the link: its endpoint (dialing out and accepting), the links it has
/// open, and the view of the cluster.
pub struct Peers {
    pub view: ArcSwap<ClusterView>,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    links: DashMap<SocketAddr, quinn::Connection>,
    /// Edges that failed a request lately: tried last until [`FAILED_FOR`] has passed (a killed
    /// edge is in the view until its lease ends, and every try at it costs a timeout).
    failed: DashMap<SocketAddr, std::time::Instant>,
}

/// A stream to another edge, held while the request uses it.
pub struct PeerStream {
    pub link: quinn::Connection,
}

impl Peers {
    pub fn new(endpoint: quinn::Endpoint, client: quinn::ClientConfig) -> Self {
        Self {
            view: ArcSwap::default(),
            endpoint,
            client,
            links: DashMap::new(),
            failed: DashMap::new(),
        }
    }

    /// Open a stream for `tunnel` to another edge holding a connection of it, and write the
    /// preamble and `head`. Edges that cannot be reached are skipped. When every edge said it
    /// has no connection of the tunnel (this one's view was stale), it is the same miss as here.
    pub async fn open(
        &self,
        state: &EdgeState,
        tunnel: TunnelId,
        tunnel_name: &str,
        head: &[u8],
    ) -> Result<(PeerStream, quinn::SendStream, quinn::RecvStream), ProxyError> {
        let mut candidates: Vec<(String, SocketAddr)> = {
            let view = self.view.load();
            view.candidates(&tunnel, &state.config.node_name, &state.config.location)
                .into_iter()
                .map(|(node, addr)| (node.name.clone(), addr))
                .collect()
        };
        let failed_lately = |addr: &SocketAddr| self.failed.get(addr).is_some_and(|at| at.elapsed() < FAILED_FOR);
        candidates.sort_by_key(|(_, addr)| failed_lately(addr));
        let mut last_error = None;
        for (node, addr) in candidates {
            match self.try_open(addr, tunnel, head).await {
                Ok(opened) => {
                    self.failed.remove(&addr);
                    return Ok(opened);
                }
                Err(None) => tracing::debug!(%node, %addr, "that edge has no connection of the tunnel (any more)"),
                Err(Some(e)) => {
                    self.mark_failed(addr);
                    tracing::debug!(%node, %addr, "forwarding to another edge failed: {e}");
                    last_error = Some(format!("edge {node}: {e}"));
                }
            }
        }
        Err(match last_error {
            None => ProxyError::TunnelUnavailable {
                name: tunnel_name.to_owned(),
                id: tunnel.to_string(),
            },
            Some(reason) => ProxyError::TunnelStream {
                name: tunnel_name.to_owned(),
                reason,
            },
        })
    }

    /// Try the edge at `addr` after the others for a while.
    pub fn mark_failed(&self, addr: SocketAddr) {
        self.failed.insert(addr, std::time::Instant::now());
    }

    /// The stream, or why not: `None` when the edge answered that it has no connection of the
    /// tunnel.
    async fn try_open(
        &self,
        addr: SocketAddr,
        tunnel: TunnelId,
        head: &[u8],
    ) -> Result<(PeerStream, quinn::SendStream, quinn::RecvStream), Option<String>> {
        let link = self.link(addr).await?;
        let (mut send, mut recv) = match link.open_bi().await {
            Ok(stream) => stream,
            Err(e) => {
                self.links.remove_if(&addr, |_, l| l.stable_id() == link.stable_id());
                return Err(Some(e.to_string()));
            }
        };
        let mut preamble = Vec::with_capacity(MAGIC.len() + 16 + head.len());
        preamble.extend_from_slice(MAGIC);
        preamble.extend_from_slice(tunnel.0.as_bytes());
        preamble.extend_from_slice(head);
        send.write_all(&preamble).await.map_err(|e| Some(e.to_string()))?;
        let mut answer = [0u8];
        match tokio::time::timeout(CONNECT_TIMEOUT, recv.read_exact(&mut answer)).await {
            Ok(Ok(())) if answer[0] == ACCEPTED => Ok((PeerStream { link }, send, recv)),
            Ok(Ok(())) => Err(None),
            Ok(Err(e)) => Err(Some(e.to_string())),
            Err(_) => Err(Some(format!("no answer within {CONNECT_TIMEOUT:?}"))),
        }
    }

    /// The open link to `addr`, or a new one.
    async fn link(&self, addr: SocketAddr) -> Result<quinn::Connection, String> {
        if let Some(link) = self.links.get(&addr).map(|l| l.clone())
            && link.close_reason().is_none()
        {
            return Ok(link);
        }
        let connecting = self
            .endpoint
            .connect_with(self.client.clone(), addr, SERVER_NAME)
            .map_err(|e| e.to_string())?;
        let link = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| format!("no answer within {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        self.links.insert(addr, link.clone());
        Ok(link)
    }
}

/// The inter-edge endpoint on `socket`: it accepts links from nodes with a certificate of the
/// cluster CA (`ca_pem`) and presents this node's (`cert_pem`, `key_pem`); the client config
/// dials the others the same way. Call on the runtime that drives the link.
pub fn endpoint(
    socket: std::net::UdpSocket,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<(quinn::Endpoint, quinn::ClientConfig)> {
    use anyhow::Context;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.context("cluster CA")?).context("cluster CA")?;
    }
    let roots = Arc::new(roots);
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("node certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("node key")?;

    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .context("cluster CA")?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .context("node certificate and key")?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("node certificate and key")?;
    client.alpn_protocols = vec![ALPN.to_vec()];

    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .max_idle_timeout(Some(Duration::from_secs(30).try_into()?))
        .max_concurrent_bidi_streams(10_000u32.into());
    let transport = Arc::new(transport);
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(server).context("inter-edge TLS")?,
    ));
    server.transport_config(transport.clone());
    let mut client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client).context("inter-edge TLS")?,
    ));
    client.transport_config(transport);
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .context("creating the inter-edge endpoint")?;
    Ok((endpoint, client))
}

/// Accept links from the other edges and serve their streams from this edge's own tunnel
/// connections, until `shutdown`; then the requests being relayed finish (within the grace
/// period) while new ones are answered "not here", so the other edges send them elsewhere.
pub async fn serve(state: Arc<EdgeState>, endpoint: quinn::Endpoint, shutdown: CancellationToken) {
    if let Ok(addr) = endpoint.local_addr() {
        tracing::info!(%addr, "inter-edge link ready");
    }
    let relays = TaskTracker::new();
    let links = TaskTracker::new();
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
            () = shutdown.cancelled() => break,
        };
        let (state, relays, shutdown) = (state.clone(), relays.clone(), shutdown.clone());
        links.spawn(async move {
            let link = match incoming.await {
                Ok(link) => link,
                Err(e) => {
                    tracing::debug!("inter-edge link refused: {e}");
                    return;
                }
            };
            while let Ok((send, recv)) = link.accept_bi().await {
                relays.spawn(serve_forwarded(state.clone(), send, recv, shutdown.clone()));
            }
        });
    }
    relays.close();
    let _ = tokio::time::timeout(state.config.grace_period, relays.wait()).await;
    endpoint.close(burrow_protocol::error_code::EDGE_SHUTDOWN.into(), b"edge shutting down");
    links.close();
    links.wait().await;
}

/// One forwarded request: read which tunnel, then relay bytes between the other edge and a
/// stream of one of this edge's connections of that tunnel.
async fn serve_forwarded(
    state: Arc<EdgeState>,
    mut peer_send: quinn::SendStream,
    mut peer_recv: quinn::RecvStream,
    shutdown: CancellationToken,
) {
    let mut preamble = [0u8; 20];
    match tokio::time::timeout(PREAMBLE_TIMEOUT, peer_recv.read_exact(&mut preamble)).await {
        Ok(Ok(_)) if &preamble[..4] == MAGIC => {}
        _ => {
            let _ = peer_send.reset(burrow_protocol::error_code::PROTOCOL_ERROR.into());
            return;
        }
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&preamble[4..]);
    let tunnel = TunnelId(uuid::Uuid::from_bytes(id));
    let opened = async {
        if shutdown.is_cancelled() {
            return None;
        }
        let in_flight = state.registry.pick(&tunnel, None)?;
        let quic = in_flight.connection().quic.clone();
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, quic.open_bi()).await.ok()?.ok()?;
        Some((in_flight, stream))
    };
    let Some((in_flight, (mut tunnel_send, mut tunnel_recv))) = opened.await else {
        let _ = peer_send.write_all(&[NOT_HERE]).await;
        let _ = peer_send.finish();
        return;
    };
    if peer_send.write_all(&[ACCEPTED]).await.is_err() {
        let _ = tunnel_send.reset(burrow_protocol::error_code::REQUEST_CANCELLED.into());
        return;
    }
    relay(
        in_flight,
        (&mut peer_send, &mut peer_recv),
        (&mut tunnel_send, &mut tunnel_recv),
    )
    .await;
}

/// Copy both ways until both ends are done; a failure on one side resets the other.
async fn relay(
    _in_flight: InFlight,
    (peer_send, peer_recv): (&mut quinn::SendStream, &mut quinn::RecvStream),
    (tunnel_send, tunnel_recv): (&mut quinn::SendStream, &mut quinn::RecvStream),
) {
    let cancelled = burrow_protocol::error_code::REQUEST_CANCELLED;
    let up = async {
        match tokio::io::copy(peer_recv, tunnel_send).await {
            Ok(_) => {
                let _ = tunnel_send.finish();
            }
            Err(_) => {
                let _ = tunnel_send.reset(cancelled.into());
            }
        }
    };
    let down = async {
        match tokio::io::copy(tunnel_recv, peer_send).await {
            Ok(_) => {
                let _ = peer_send.finish();
            }
            Err(_) => {
                let _ = peer_send.reset(cancelled.into());
            }
        }
    };
    tokio::join!(up, down);
}
