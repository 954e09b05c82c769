//! A `jsonwebtoken` crypto provider that hands RSA, ECDSA and Ed25519 signature checks to the
//! edge (`burrow_plugin::crypto`): in wasm they take milliseconds, natively tens of
//! microseconds. HMAC, and the JWK helpers, stay with the RustCrypto provider.

use std::sync::OnceLock;

use burrow_plugin::crypto::{self, PublicKey, RsaComponents, SignatureAlgorithm};
use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier, rust_crypto};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};

/// Make this provider the one `jsonwebtoken::decode` uses (once per instance).
pub fn install() {
    static PROVIDER: OnceLock<CryptoProvider> = OnceLock::new();
    let provider = PROVIDER.get_or_init(|| CryptoProvider {
        verifier_factory: verifier,
        ..rust_crypto::DEFAULT_PROVIDER.clone()
    });
    // Already installed (a reused instance): nothing to do.
    let _ = provider.install_default();
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    let host = match algorithm {
        Algorithm::RS256 => SignatureAlgorithm::RsaPkcs1Sha256,
        Algorithm::RS384 => SignatureAlgorithm::RsaPkcs1Sha384,
        Algorithm::RS512 => SignatureAlgorithm::RsaPkcs1Sha512,
        Algorithm::PS256 => SignatureAlgorithm::RsaPssSha256,
        Algorithm::PS384 => SignatureAlgorithm::RsaPssSha384,
        Algorithm::PS512 => SignatureAlgorithm::RsaPssSha512,
        Algorithm::ES256 => SignatureAlgorithm::EcdsaP256Sha256,
        Algorithm::ES384 => SignatureAlgorithm::EcdsaP384Sha384,
        Algorithm::EdDSA => SignatureAlgorithm::Ed25519,
        // HMAC (fast in wasm), and whatever a later jsonwebtoken adds.
        _ => {
            return (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(algorithm, key);
        }
    };
    if key.family() != algorithm.family() {
        return Err(Error::from(ErrorKind::InvalidKeyFormat));
    }
    let key = match key.kind() {
        DecodingKeyKind::SecretOrDer(bytes) => PublicKey::Encoded(bytes.clone()),
        DecodingKeyKind::RsaModulusExponent { n, e } => PublicKey::Rsa(RsaComponents {
            n: n.clone(),
            e: e.clone(),
        }),
    };
    Ok(Box::new(HostVerifier {
        algorithm: *algorithm,
        host,
        key,
    }))
}

struct HostVerifier {
    algorithm: Algorithm,
    host: SignatureAlgorithm,
    key: PublicKey,
}

impl signature::Verifier<Vec<u8>> for HostVerifier {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        if crypto::verify_signature(self.host, &self.key, message, signature) {
            Ok(())
        } else {
            Err(signature::Error::new())
        }
    }
}

impl JwtVerifier for HostVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}
