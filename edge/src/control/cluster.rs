//! A cluster of edges on one store (etcd), every edge equal: the cluster CA and this node's
//! certificate for the inter-edge link ([`crate::dataplane::peers`]), this node's record
//! (`nodes/<name>`, under its lease: it vanishes with the node), and the view of the others —
//! who is up, where, and which tunnels each holds connections of — kept current from the store.
//!
//! Keys:
//!
//! ```text
//! cluster/ca        the CA of the inter-edge link (certificate and key, PEM): made by the
//!                   first edge that finds none
//! cluster/edge-tls  the self-signed identity every edge shows connectors (unless given
//!                   --tls-cert): credentials pin it, so they work at any edge
//! nodes/<name>    NodeRecord, leased
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use burrow_protocol::TunnelId;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::EdgeState;
use crate::control::resources::{Connection, ControlPlane, from_json, to_json};
use crate::control::store::{Compare, Event, Op};
use crate::dataplane::peers::{self, ClusterView, NodeRecord, Peers};
use crate::dataplane::tls::TlsIdentity;

const CA_KEY: &str = "cluster/ca";
const EDGE_TLS_KEY: &str = "cluster/edge-tls";
/// How long a starting edge waits for the store to hand it the shared identity.
const IDENTITY_WAIT: Duration = Duration::from_secs(10);
/// How often this node's record (its load) is written again.
const RECORD_EVERY: Duration = Duration::from_secs(5);
/// How often the lease is looked at, to write the record soon after it changes.
const RECORD_CHECK: Duration = Duration::from_millis(100);
/// A node's link address that does not resolve within this is left out of the view.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// How other nodes reach this one.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The inter-edge socket (UDP), bound by the caller.
    pub socket: Arc<std::net::UdpSocket>,
    /// The address other edges dial for it (`HOST:PORT`).
    pub advertise: String,
}

/// A certificate and its key, as kept in the store.
#[derive(Serialize, Deserialize)]
struct PemPair {
    cert_pem: String,
    key_pem: String,
}

/// Join the cluster until `shutdown`: the link (once the store has answered with the CA), this
/// node's record, and the view of the others.
pub async fn run(state: Arc<EdgeState>, config: ClusterConfig, shutdown: CancellationToken) {
    let Some(cp) = state.control.clone() else { return };
    let ca = loop {
        match cluster_ca(&cp).await {
            Ok(ca) => break ca,
            Err(e) => {
                tracing::warn!("cannot read the cluster CA ({e:#}); forwarding to other edges waits for the store");
                if pause(&shutdown, Duration::from_secs(1)).await {
                    return;
                }
            }
        }
    };
    let (started, link) = match start_link(&state, &config, &ca, &shutdown) {
        Ok(started) => started,
        Err(e) => {
            tracing::error!(
                "the inter-edge link did not start ({e:#}); this edge serves only the tunnels connected to it"
            );
            return;
        }
    };
    if started.await.is_err() {
        return; // the thread said why
    }
    // The link's thread finishes the requests it relays before the edge exits.
    let link = async {
        if let Err(e) = link.await {
            tracing::error!("the inter-edge link stopped: {e:#}");
        }
    };
    tokio::join!(
        keep_node_record(&state, &cp, &config, &shutdown),
        follow(&state, &cp, &shutdown),
        link
    );
}

/// The cluster's CA, made now if there is none yet.
async fn cluster_ca(cp: &ControlPlane) -> Result<PemPair> {
    made_once(cp, CA_KEY, || {
        let key = rcgen::KeyPair::generate()?;
        let cert = ca_params().self_signed(&key)?;
        tracing::info!("making the cluster CA for the inter-edge link");
        Ok(PemPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    })
    .await
}

/// The self-signed identity every edge of the cluster shows connectors, so that credentials
/// (which pin it) work at any edge. The first edge to ask puts its own (the one in `dir`, which
/// connectors may already pin, or a new one for `names`); every edge keeps a copy in `dir` and
/// starts from that copy when the store does not answer.
pub async fn edge_identity(cp: &ControlPlane, dir: &Path, names: &[String]) -> Result<TlsIdentity> {
    let shared = made_once(cp, EDGE_TLS_KEY, || {
        if let Some((cert_pem, key_pem)) = TlsIdentity::read_self_signed(dir)? {
            return Ok(PemPair { cert_pem, key_pem });
        }
        let certified = rcgen::generate_simple_self_signed(names.to_vec())?;
        Ok(PemPair {
            cert_pem: certified.cert.pem(),
            key_pem: certified.signing_key.serialize_pem(),
        })
    });
    match tokio::time::timeout(IDENTITY_WAIT, shared).await {
        Ok(Ok(pair)) => TlsIdentity::keep_self_signed(dir, &pair.cert_pem, &pair.key_pem)?,
        Ok(Err(e)) => tracing::warn!("the cluster's edge certificate is unavailable ({e:#}); using this node's"),
        Err(_) => {
            tracing::warn!("the store did not hand out the cluster's edge certificate in time; using this node's")
        }
    }
    TlsIdentity::self_signed_in(dir, names)
}

/// The document at `key`, or `make`'s, put there now if there is none (the first edge to put
/// it wins the race; the others read the winner's).
async fn made_once<T: Serialize + for<'de> Deserialize<'de>>(
    cp: &ControlPlane,
    key: &str,
    make: impl Fn() -> Result<T>,
) -> Result<T> {
    loop {
        if let Some(kv) = cp.store().get(key).await? {
            return Ok(from_json(&kv)?);
        }
        let doc = make()?;
        let put = Op::put(key, to_json(&doc));
        if cp
            .store()
            .txn(vec![Compare::Missing(key.into())], vec![put])
            .await?
            .succeeded
        {
            return Ok(doc);
        }
    }
}

/// The CA's certificate parameters: the same every time, so that a node can sign with the key
/// alone (the issuer's name and key are all a signature needs).
fn ca_params() -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Burrow cluster CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    params
}

/// A fresh key and certificate for this node, signed by the cluster CA.
fn node_certificate(ca: &PemPair, node: &str) -> Result<(String, String)> {
    let ca_key = rcgen::KeyPair::from_pem(&ca.key_pem).context("the cluster CA's key")?;
    let issuer = rcgen::Issuer::new(ca_params(), ca_key);
    let mut params = rcgen::CertificateParams::new(vec![peers::SERVER_NAME.to_owned()])?;
    params.distinguished_name.push(rcgen::DnType::CommonName, node);
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Start the link's endpoint on a thread of its own (forwarded requests never share a thread
/// with control work or with a shard's visitors); it is in `state.peers` when the returned
/// receiver fires; the returned future ends with the thread.
fn start_link(
    state: &Arc<EdgeState>,
    config: &ClusterConfig,
    ca: &PemPair,
    shutdown: &CancellationToken,
) -> Result<(
    tokio::sync::oneshot::Receiver<()>,
    impl Future<Output = Result<()>> + use<>,
)> {
    let (cert, key) = node_certificate(ca, &state.config.node_name)?;
    let socket = config.socket.try_clone().context("the inter-edge socket")?;
    let (state, ca_pem, shutdown) = (state.clone(), ca.cert_pem.clone(), shutdown.clone());
    let (ready, started) = tokio::sync::oneshot::channel();
    let serve = async move {
        let (endpoint, client) = peers::endpoint(socket, &ca_pem, &cert, &key)?;
        state.peers.store(Some(Arc::new(Peers::new(endpoint.clone(), client))));
        let _ = ready.send(());
        peers::serve(state, endpoint, shutdown).await;
        Ok(())
    };
    let thread = burrow_shared::threads::spawn("burrow-peers".into(), serve)?;
    Ok((started, thread))
}

/// Write this node's record under its lease: as soon as there is one (a node without a record
/// is not forwarded to), again when the lease changes and every [`RECORD_EVERY`] (its load);
/// take it away on shutdown.
async fn keep_node_record(state: &EdgeState, cp: &ControlPlane, config: &ClusterConfig, shutdown: &CancellationToken) {
    let key = format!("nodes/{}", state.config.node_name);
    let mut written: Option<(u64, tokio::time::Instant)> = None;
    loop {
        let lease = state.node_lease.load(Ordering::Relaxed);
        let due = written.is_none_or(|(under, at)| under != lease || at.elapsed() >= RECORD_EVERY);
        if lease != 0 && due {
            let record = NodeRecord {
                name: state.config.node_name.clone(),
                location: state.config.location.clone(),
                peer: Some(config.advertise.clone()),
                tunnel_addrs: state.config.advertised_edges.clone(),
                load: state.registry.in_flight(),
            };
            match cp
                .store()
                .txn(vec![], vec![Op::leased(key.as_str(), to_json(&record), lease)])
                .await
            {
                Ok(_) => written = Some((lease, tokio::time::Instant::now())),
                Err(e) => tracing::debug!("node record not written: {e}"),
            }
        }
        if pause(shutdown, RECORD_CHECK).await {
            let _ = cp.store().txn(vec![], vec![Op::Delete { key }]).await;
            return;
        }
    }
}

/// Keep `state.peers`' view of the cluster current: read `nodes/` and `connections/`, then
/// follow their changes; read again when the watch ends.
async fn follow(state: &EdgeState, cp: &ControlPlane, shutdown: &CancellationToken) {
    loop {
        let started = async {
            let (nodes, nodes_rev) = cp.list_keyed::<NodeRecord>("nodes/").await?;
            let (conns, conns_rev) = cp.list_keyed::<Connection>("connections/").await?;
            let watch = cp.store().watch("", nodes_rev.min(conns_rev)).await?;
            Ok::<_, crate::control::resources::CpError>((nodes, conns, watch))
        };
        let (mut nodes, mut conns, mut watch) = match started.await {
            Ok(started) => started,
            Err(e) => {
                tracing::debug!("cannot read the cluster's nodes: {e}");
                if pause(shutdown, Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
        };
        publish(state, &nodes, &conns).await;
        loop {
            let batch = tokio::select! {
                batch = watch.recv() => batch,
                () = shutdown.cancelled() => return,
            };
            let Some(batch) = batch else { break };
            let mut changed = false;
            for event in batch {
                changed |= apply(&mut nodes, "nodes/", &event) | apply(&mut conns, "connections/", &event);
            }
            if changed {
                publish(state, &nodes, &conns).await;
            }
        }
    }
}

/// Apply one watch event to the documents kept under `prefix`; whether they changed.
fn apply<T: for<'de> Deserialize<'de>>(docs: &mut BTreeMap<String, T>, prefix: &str, event: &Event) -> bool {
    if !event.key().starts_with(prefix) {
        return false;
    }
    match event {
        Event::Put(kv) => match from_json(kv) {
            Ok(doc) => {
                docs.insert(kv.key.clone(), doc);
                true
            }
            Err(e) => {
                tracing::debug!("ignoring {}: {e}", kv.key);
                false
            }
        },
        Event::Delete { key, .. } => docs.remove(key).is_some(),
    }
}

async fn publish(state: &EdgeState, nodes: &BTreeMap<String, NodeRecord>, conns: &BTreeMap<String, Connection>) {
    let Some(peers) = state.peers.load_full() else { return };
    let mut holders: HashMap<TunnelId, HashMap<String, usize>> = HashMap::new();
    for conn in conns.values() {
        *holders
            .entry(conn.tunnel)
            .or_default()
            .entry(conn.edge_node.clone())
            .or_default() += 1;
    }
    let old = peers.view.load_full();
    let mut links = HashMap::new();
    for node in nodes.values() {
        let Some(peer) = node.peer.as_deref() else { continue };
        if let (Some(before), Some(addr)) = (old.nodes.get(&node.name), old.links.get(&node.name))
            && before.peer == node.peer
        {
            links.insert(node.name.clone(), *addr);
            continue;
        }
        let resolved = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(peer)).await;
        match resolved.map(|found| found.map(|mut addrs| addrs.next())) {
            Ok(Ok(Some(addr))) => {
                links.insert(node.name.clone(), addr);
            }
            _ => tracing::debug!(node = %node.name, %peer, "cannot resolve the node's link address"),
        }
    }
    let nodes = nodes.values().map(|n| (n.name.clone(), n.clone())).collect();
    peers.view.store(Arc::new(ClusterView { nodes, links, holders }));
}

/// Sleep `d`; `true` when `shutdown` came first.
async fn pause(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => false,
        () = shutdown.cancelled() => true,
    }
}
