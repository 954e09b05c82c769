//! TLS identity of the edge, for the public HTTPS listener and the QUIC tunnel listener.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use burrow_shared::files::write_private;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn self_signed_paths(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    (dir.join("edge-cert.pem"), dir.join("edge-key.pem"))
}

/// A certificate chain and its key.
pub struct TlsIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// PEM of the chain's root when self-signed: connectors pin it (it goes into credentials).
    pub self_signed_pem: Option<String>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            self_signed_pem: self.self_signed_pem.clone(),
        }
    }
}

impl TlsIdentity {
    /// Load a PEM certificate chain and private key configured by the operator.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self> {
        let cert_pem = std::fs::read(cert).with_context(|| format!("reading TLS certificate {}", cert.display()))?;
        let key_pem = std::fs::read(key).with_context(|| format!("reading TLS key {}", key.display()))?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing {}", cert.display()))?;
        anyhow::ensure!(!chain.is_empty(), "{} holds no PEM certificate", cert.display());
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
            pem::Error::NoItemsFound => anyhow::anyhow!("{} holds no PEM private key", key.display()),
            e => anyhow::anyhow!("parsing {}: {e}", key.display()),
        })?;
        Ok(Self {
            chain,
            key,
            self_signed_pem: None,
        })
    }

    /// The development identity: a self-signed certificate created once and kept in `dir`, so
    /// that connectors which pinned it keep trusting the edge across restarts.
    pub fn self_signed_in(dir: &Path, names: &[String]) -> Result<Self> {
        let (cert_path, key_path) = self_signed_paths(dir);
        if !cert_path.exists() {
            let certified = rcgen::generate_simple_self_signed(names.to_vec()).context("generating a certificate")?;
            Self::keep_self_signed(dir, &certified.cert.pem(), &certified.signing_key.serialize_pem())?;
            tracing::info!(cert = %cert_path.display(), "generated a self-signed edge certificate");
        }
        let mut identity = Self::from_pem_files(&cert_path, &key_path)?;
        identity.self_signed_pem = Some(std::fs::read_to_string(&cert_path)?);
        Ok(identity)
    }

    /// The self-signed identity kept in `dir`, if there is one: (certificate, key) PEM.
    pub fn read_self_signed(dir: &Path) -> Result<Option<(String, String)>> {
        let (cert_path, key_path) = self_signed_paths(dir);
        if !cert_path.exists() {
            return Ok(None);
        }
        let read = |path: &Path| std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()));
        Ok(Some((read(&cert_path)?, read(&key_path)?)))
    }

    /// Keep `cert_pem` and `key_pem` as the self-signed identity in `dir` (replacing any).
    pub fn keep_self_signed(dir: &Path, cert_pem: &str, key_pem: &str) -> Result<()> {
        let (cert_path, key_path) = self_signed_paths(dir);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_private(&key_path, key_pem.as_bytes())?;
        write_private(&cert_path, cert_pem.as_bytes())
    }

    /// A fresh self-signed certificate for `names` (kept in memory only).
    pub fn generate_self_signed(names: &[String]) -> Result<Self> {
        let certified = rcgen::generate_simple_self_signed(names.to_vec()).context("generating a certificate")?;
        let pem = certified.cert.pem();
        let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der())
            .map_err(|e| anyhow::anyhow!("encoding generated key: {e}"))?;
        Ok(Self {
            chain: vec![certified.cert.der().clone()],
            key,
            self_signed_pem: Some(pem),
        })
    }

    /// rustls config for the public listener: HTTP/2 and HTTP/1.1 by ALPN.
    pub fn public_server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .context("public TLS certificate and key do not match")?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// rustls config for the API listener (`--api-tls-cert`): HTTP/1.1 only.
    pub fn api_server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .context("API TLS certificate and key do not match")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// QUIC server config for the tunnel listener (TLS 1.3, ALPN `burrow/1`).
    pub fn tunnel_server_config(&self, transport: quinn::TransportConfig) -> Result<quinn::ServerConfig> {
        let mut tls = rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .context("tunnel TLS certificate and key do not match")?;
        tls.alpn_protocols = vec![burrow_protocol::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).context("QUIC TLS config")?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(transport));
        Ok(config)
    }
}
