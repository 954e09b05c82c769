//! Signature checks plugins ask the host for (`interface crypto`): ring verifies natively what
//! would take milliseconds in wasm.

use ring::signature::{self as sig, RsaParameters, VerificationAlgorithm};

use crate::plugins::host::crypto::{PublicKey, SignatureAlgorithm};

/// Longest message checked. Hashing runs outside the plugin's epoch deadline, so it is bounded
/// (1 MiB hashes in well under a millisecond); signed tokens and webhooks are far smaller.
pub const MAX_MESSAGE: usize = 1024 * 1024;

/// Whether `signature` is `key`'s signature of `message`; anything malformed, or a message over
/// [`MAX_MESSAGE`], is `false`.
pub fn verify(algorithm: SignatureAlgorithm, key: &PublicKey, message: &[u8], signature: &[u8]) -> bool {
    use SignatureAlgorithm as A;
    if message.len() > MAX_MESSAGE {
        return false;
    }
    let encoded = |algorithm: &'static dyn VerificationAlgorithm| match key {
        PublicKey::Encoded(bytes) => sig::UnparsedPublicKey::new(algorithm, bytes)
            .verify(message, signature)
            .is_ok(),
        PublicKey::Rsa(_) => false,
    };
    let rsa = |params: &'static RsaParameters| match key {
        PublicKey::Encoded(_) => encoded(params),
        PublicKey::Rsa(components) => sig::RsaPublicKeyComponents {
            n: &components.n,
            e: &components.e,
        }
        .verify(params, message, signature)
        .is_ok(),
    };
    match algorithm {
        A::RsaPkcs1Sha256 => rsa(&sig::RSA_PKCS1_2048_8192_SHA256),
        A::RsaPkcs1Sha384 => rsa(&sig::RSA_PKCS1_2048_8192_SHA384),
        A::RsaPkcs1Sha512 => rsa(&sig::RSA_PKCS1_2048_8192_SHA512),
        A::RsaPssSha256 => rsa(&sig::RSA_PSS_2048_8192_SHA256),
        A::RsaPssSha384 => rsa(&sig::RSA_PSS_2048_8192_SHA384),
        A::RsaPssSha512 => rsa(&sig::RSA_PSS_2048_8192_SHA512),
        A::EcdsaP256Sha256 => encoded(&sig::ECDSA_P256_SHA256_FIXED),
        A::EcdsaP384Sha384 => encoded(&sig::ECDSA_P384_SHA384_FIXED),
        A::Ed25519 => encoded(&sig::ED25519),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};

    use super::*;
    use crate::plugins::host::crypto::RsaComponents;

    const MESSAGE: &[u8] = b"header.claims";

    fn rsa_key() -> RsaKeyPair {
        let pem = include_str!("../../../tests/fixtures/rs256-test-key.pem");
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap();
        RsaKeyPair::from_pkcs8(der.secret_der()).unwrap()
    }

    #[test]
    fn rsa_signatures_verify_by_der_and_by_components() {
        let key = rsa_key();
        let rng = SystemRandom::new();
        let mut signature = vec![0; key.public().modulus_len()];
        key.sign(&sig::RSA_PKCS1_SHA256, &rng, MESSAGE, &mut signature).unwrap();
        let der = PublicKey::Encoded(key.public().as_ref().to_vec());
        let parts: sig::RsaPublicKeyComponents<Vec<u8>> = key.public().into();
        let components = PublicKey::Rsa(RsaComponents { n: parts.n, e: parts.e });
        for public in [&der, &components] {
            assert!(verify(SignatureAlgorithm::RsaPkcs1Sha256, public, MESSAGE, &signature));
            assert!(!verify(
                SignatureAlgorithm::RsaPkcs1Sha256,
                public,
                b"header.other",
                &signature
            ));
            assert!(!verify(SignatureAlgorithm::RsaPkcs1Sha384, public, MESSAGE, &signature));
            assert!(!verify(SignatureAlgorithm::RsaPssSha256, public, MESSAGE, &signature));
        }
        let mut pss = vec![0; key.public().modulus_len()];
        key.sign(&sig::RSA_PSS_SHA512, &rng, MESSAGE, &mut pss).unwrap();
        assert!(verify(SignatureAlgorithm::RsaPssSha512, &der, MESSAGE, &pss));
    }

    #[test]
    fn ecdsa_and_ed25519_signatures_verify_and_mismatches_do_not() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let ec = EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let ec_sig = ec.sign(&rng, MESSAGE).unwrap();
        let ec_key = PublicKey::Encoded(ec.public_key().as_ref().to_vec());
        assert!(verify(
            SignatureAlgorithm::EcdsaP256Sha256,
            &ec_key,
            MESSAGE,
            ec_sig.as_ref()
        ));
        assert!(!verify(
            SignatureAlgorithm::EcdsaP384Sha384,
            &ec_key,
            MESSAGE,
            ec_sig.as_ref()
        ));

        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ed = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let ed_sig = ed.sign(MESSAGE);
        let ed_key = PublicKey::Encoded(ed.public_key().as_ref().to_vec());
        assert!(verify(SignatureAlgorithm::Ed25519, &ed_key, MESSAGE, ed_sig.as_ref()));
        let long = vec![b'x'; MAX_MESSAGE + 1];
        let long_sig = ed.sign(&long);
        assert!(
            !verify(SignatureAlgorithm::Ed25519, &ed_key, &long, long_sig.as_ref()),
            "over the limit"
        );
        assert!(!verify(
            SignatureAlgorithm::Ed25519,
            &ed_key,
            b"header.other",
            ed_sig.as_ref()
        ));
        // Keys of the wrong kind, and garbage, are plain refusals.
        assert!(!verify(SignatureAlgorithm::Ed25519, &ec_key, MESSAGE, ec_sig.as_ref()));
        let rsa_components = PublicKey::Rsa(RsaComponents {
            n: vec![1; 256],
            e: vec![3],
        });
        assert!(!verify(
            SignatureAlgorithm::EcdsaP256Sha256,
            &rsa_components,
            MESSAGE,
            ec_sig.as_ref()
        ));
        assert!(!verify(
            SignatureAlgorithm::RsaPkcs1Sha256,
            &PublicKey::Encoded(vec![0; 7]),
            MESSAGE,
            &[1; 256]
        ));
    }
}
