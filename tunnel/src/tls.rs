//! TLS client settings: towards the edge (QUIC tunnel) and towards origins (`https`, `unix+tls`).

use std::io::Read;
use std::sync::Arc;

use anyhow::{Context, Result};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::ingress::OriginRequest;

/// CA bundles are small; refuse anything that is clearly not one.
const MAX_CA_BYTES: u64 = 4 * 1024 * 1024;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Roots from PEM text, or the public web PKI when none are given.
pub fn root_store(pem: Option<&[u8]>) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match pem {
        Some(pem) => {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .context("parsing PEM")?;
            anyhow::ensure!(!certs.is_empty(), "no PEM certificate found");
            for cert in certs {
                roots.add(cert).context("adding CA certificate")?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
}

/// QUIC client crypto for the tunnel: TLS 1.3, ALPN `burrow/1`, trusting `edge_ca` if given.
pub fn edge_client_config(edge_ca: Option<&str>) -> Result<quinn::ClientConfig> {
    Ok(edge_client(edge_ca)?.0)
}

/// [`edge_client_config`], and whether a pinned `edge_ca` was refused: set when the edge
/// showed another certificate, which no retry fixes.
pub fn edge_client(edge_ca: Option<&str>) -> Result<(quinn::ClientConfig, Arc<PinMismatch>)> {
    let roots = root_store(edge_ca.map(str::as_bytes)).context("edge CA in the credentials file")?;
    let builder =
        rustls::ClientConfig::builder_with_provider(provider()).with_protocol_versions(&[&rustls::version::TLS13])?;
    let mismatch = Arc::new(PinMismatch::default());
    let mut tls = match edge_ca {
        Some(pem) => {
            let pinned = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .context("edge CA in the credentials file")?;
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .context("edge CA in the credentials file")?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedEdge {
                    pinned,
                    inner,
                    mismatch: mismatch.clone(),
                }))
                .with_no_client_auth()
        }
        None => builder.with_root_certificates(roots).with_no_client_auth(),
    };
    tls.alpn_protocols = vec![burrow_protocol::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).context("QUIC TLS config")?;
    Ok((quinn::ClientConfig::new(Arc::new(crypto)), mismatch))
}

/// Set when an edge's certificate did not match the pinned one (see [`edge_client`]).
#[derive(Debug, Default)]
pub struct PinMismatch(std::sync::atomic::AtomicBool);

impl PinMismatch {
    pub fn seen(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// What the connector says when the pinned certificate is refused.
pub const PIN_MISMATCH_HELP: &str = "the edge's certificate is not the one pinned in the credentials \
     (their edge_ca): they were made for another edge or another --data-dir. Write them with \
     `burrow-edge tunnel add --data-dir DIR` where DIR is the running edge's --data-dir, or get them \
     from this edge's API with `burrow tunnel create`";

/// Trust in the pinned certificate: the edge shows that very certificate (under any name: the
/// edges of a cluster share one self-signed identity, made with the first edge's names), or a
/// chain the pinned one issued; says what mismatches when neither holds.
#[derive(Debug)]
struct PinnedEdge {
    pinned: Vec<CertificateDer<'static>>,
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    mismatch: Arc<PinMismatch>,
}

impl ServerCertVerifier for PinnedEdge {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The handshake's signature (checked apart from this) proves the edge holds its key.
        if self.pinned.iter().any(|pin| pin == end_entity) {
            return Ok(ServerCertVerified::assertion());
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            .map_err(|e| {
                self.mismatch.0.store(true, std::sync::atomic::Ordering::Relaxed);
                rustls::Error::General(format!("{PIN_MISMATCH_HELP} ({e})"))
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// HTTP(S) towards a Burrow API (the CLI, edge-only nodes): certificates checked against the
/// web PKI, or against `ca_pem` for an API with a private certificate.
pub fn api_connector(ca_pem: Option<&[u8]>) -> Result<HttpsConnector<HttpConnector>> {
    let roots = root_store(ca_pem).context("the API's CA certificate")?;
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build())
}

/// Read a CA certificate file a user names (at most 4 MiB).
pub fn read_ca_file(path: &std::path::Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut pem = Vec::new();
    file.take(MAX_CA_BYTES).read_to_end(&mut pem)?;
    root_store(Some(&pem)).with_context(|| format!("{} holds no usable PEM certificate", path.display()))?;
    Ok(pem)
}

/// TLS towards an origin, per ingress rule (`caPool`, `noTLSVerify`). ALPN is left empty: the
/// HTTP client sets it to the versions it enables.
pub fn origin_tls_config(settings: &OriginRequest) -> Result<Arc<rustls::ClientConfig>> {
    let builder = rustls::ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let config = if settings.no_tls_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth()
    } else {
        let pem = match &settings.ca_pool {
            Some(path) => Some(read_ca_file(path).context("caPool")?),
            None => None,
        };
        let roots = root_store(pem.as_deref()).context("caPool")?;
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// `noTLSVerify: true`: the origin's certificate is not checked (signatures still are, so the
/// handshake is sound; only the identity is taken on trust). Common for local origins with
/// self-signed certificates.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
