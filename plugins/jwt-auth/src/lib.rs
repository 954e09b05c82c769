//! `jwt-auth`: only requests carrying a valid JSON Web Token get through.
//!
//! Verifies the signature (HS256/384/512 with a shared secret, in the plugin; RS*, PS*, ES256/384
//! and EdDSA with PEM public keys or a JWKS document, by the edge natively), then `exp`, `nbf`, `iss` and `aud` with a clock-skew
//! leeway. Chosen claims are forwarded to the origin as headers; a visitor's own values of those
//! headers are always removed first, so the origin can trust them. Anything else is answered
//! `401` with a `WWW-Authenticate: Bearer` challenge (RFC 6750) and never reaches the origin.
//! See README.md for the configuration.

mod host_crypto;

use std::collections::BTreeMap;
use std::rc::Rc;

use burrow_plugin::{Action, Level, Plugin, Request};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};

#[derive(serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Config {
    /// Shared secret for HS256/384/512.
    secret: Option<String>,
    /// PEM public keys (RSA, EC or Ed25519); a token must verify against one of them.
    #[serde(default)]
    public_keys: Vec<String>,
    /// A JWKS document (`{"keys": [...]}`); the token's `kid` picks the key.
    jwks: Option<JwkSet>,
    /// Algorithms accepted. Default: those the configured keys can verify.
    #[serde(default)]
    algorithms: Vec<Algorithm>,
    /// Accepted `iss` values (any of them); unset: not checked.
    #[serde(default)]
    issuers: Vec<String>,
    /// Accepted `aud` values (any of them); unset: not checked.
    #[serde(default)]
    audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    leeway_secs: u64,
    /// Header holding the token (`Bearer ` is stripped from it).
    #[serde(default = "default_header")]
    header: String,
    /// A cookie to read the token from when the header is absent.
    cookie: Option<String>,
    /// Claims to forward to the origin: claim name → header name.
    #[serde(default)]
    forward_claims: BTreeMap<String, String>,
    /// Realm named in the `WWW-Authenticate` challenge.
    #[serde(default = "default_realm")]
    realm: String,
}

fn default_leeway() -> u64 {
    60
}

fn default_header() -> String {
    "authorization".into()
}

fn default_realm() -> String {
    "burrow".into()
}

/// A configuration with its keys decoded once.
struct Verifier {
    config: Config,
    secret: Option<DecodingKey>,
    pem_keys: Vec<(AlgorithmFamily, DecodingKey)>,
}

fn verifier() -> Result<Rc<Verifier>, String> {
    burrow_plugin::cached_config(decode_keys)
}

fn decode_keys(text: &str) -> Result<Verifier, String> {
    let config: Config = serde_json::from_str(text).map_err(|e| format!("bad config: {e}"))?;
    let secret = config.secret.as_ref().map(|s| DecodingKey::from_secret(s.as_bytes()));
    let mut pem_keys = Vec::new();
    for (i, pem) in config.public_keys.iter().enumerate() {
        let key = [
            (AlgorithmFamily::Rsa, DecodingKey::from_rsa_pem(pem.as_bytes())),
            (AlgorithmFamily::Ec, DecodingKey::from_ec_pem(pem.as_bytes())),
            (AlgorithmFamily::Ed, DecodingKey::from_ed_pem(pem.as_bytes())),
        ]
        .into_iter()
        .find_map(|(family, key)| key.ok().map(|k| (family, k)))
        .ok_or_else(|| format!("bad config: public-keys[{i}] is not an RSA, EC or Ed25519 public key in PEM"))?;
        pem_keys.push(key);
    }
    if secret.is_none() && pem_keys.is_empty() && config.jwks.as_ref().is_none_or(|j| j.keys.is_empty()) {
        return Err("bad config: give a secret, public-keys or jwks".into());
    }
    Ok(Verifier {
        config,
        secret,
        pem_keys,
    })
}

/// Why a token was refused, as RFC 6750 puts it in the challenge.
struct Refusal {
    error: Option<&'static str>,
    description: &'static str,
}

impl Verifier {
    fn token(&self, req: &Request) -> Option<String> {
        let from_header = req
            .header_str(&self.config.header)
            .map(|value| match value.split_once(' ') {
                Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim().to_owned(),
                _ => value.trim().to_owned(),
            });
        from_header.or_else(|| req.cookie(self.config.cookie.as_deref()?))
    }

    fn allows(&self, alg: Algorithm) -> bool {
        if !self.config.algorithms.is_empty() {
            return self.config.algorithms.contains(&alg);
        }
        match alg.family() {
            AlgorithmFamily::Hmac => self.secret.is_some(),
            family => self.pem_keys.iter().any(|(f, _)| *f == family) || self.config.jwks.is_some(),
        }
    }

    /// The keys a token signed with `alg` (and naming `kid`) may verify against.
    fn keys(&self, alg: Algorithm, kid: Option<&str>) -> Vec<DecodingKey> {
        let family = alg.family();
        if family == AlgorithmFamily::Hmac {
            return self.secret.iter().cloned().collect();
        }
        let mut keys: Vec<DecodingKey> = self
            .pem_keys
            .iter()
            .filter(|(f, _)| *f == family)
            .map(|(_, k)| k.clone())
            .collect();
        if let Some(jwks) = &self.config.jwks {
            let jwks_keys = jwks.keys.iter().filter(|jwk| {
                let kid_matches = match (kid, &jwk.common.key_id) {
                    (Some(kid), Some(id)) => kid == id,
                    (Some(_), None) => false,
                    (None, _) => true,
                };
                // A key meant for encryption, or declared for another algorithm, never verifies.
                let for_signing = !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption));
                let alg_matches = jwk
                    .common
                    .key_algorithm
                    .is_none_or(|declared| Algorithm::try_from(declared).is_ok_and(|a| a == alg));
                kid_matches && for_signing && alg_matches
            });
            keys.extend(jwks_keys.filter_map(|jwk| DecodingKey::from_jwk(jwk).ok()));
        }
        keys
    }

    fn verify(&self, token: &str) -> Result<serde_json::Map<String, serde_json::Value>, Refusal> {
        let invalid = |description| Refusal {
            error: Some("invalid_token"),
            description,
        };
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed token"))?;
        if !self.allows(header.alg) {
            return Err(invalid("algorithm not accepted"));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.config.leeway_secs;
        validation.validate_nbf = true;
        if !self.config.issuers.is_empty() {
            validation.set_issuer(&self.config.issuers);
        }
        if self.config.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.config.audiences);
        }
        let mut refusal = invalid("no configured key verifies the signature");
        for key in self.keys(header.alg, header.kid.as_deref()) {
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => match e.kind() {
                    ErrorKind::InvalidSignature | ErrorKind::InvalidKeyFormat | ErrorKind::InvalidAlgorithm => {}
                    // The signature held: the claims are what is wrong, whatever other keys say.
                    ErrorKind::ExpiredSignature => return Err(invalid("token expired")),
                    ErrorKind::ImmatureSignature => return Err(invalid("token not valid yet")),
                    ErrorKind::InvalidIssuer => return Err(invalid("issuer not accepted")),
                    ErrorKind::InvalidAudience => return Err(invalid("audience not accepted")),
                    ErrorKind::MissingRequiredClaim(_) => return Err(invalid("token lacks a required claim (exp)")),
                    _ => refusal = invalid("token could not be verified"),
                },
            }
        }
        Err(refusal)
    }

    fn challenge(&self, refusal: &Refusal) -> Action {
        let mut value = format!("Bearer realm=\"{}\"", self.config.realm.replace(['"', '\\'], ""));
        if let Some(error) = refusal.error {
            value.push_str(&format!(
                ", error=\"{error}\", error_description=\"{}\"",
                refusal.description
            ));
        }
        let headers = vec![
            ("content-type".into(), b"text/plain; charset=utf-8".to_vec()),
            ("www-authenticate".into(), value.into_bytes()),
        ];
        burrow_plugin::respond_with(401, headers, refusal.description)
    }
}

struct JwtAuth;

impl Plugin for JwtAuth {
    fn on_request_headers(req: &Request) -> Action {
        host_crypto::install();
        let verifier = match verifier() {
            Ok(v) => v,
            Err(e) => {
                burrow_plugin::log(Level::Error, &e);
                return burrow_plugin::respond(500, "plugin misconfigured");
            }
        };
        // Whatever happens next, the origin never sees a visitor's own claim headers.
        for header in verifier.config.forward_claims.values() {
            req.remove_header(header);
        }
        let Some(token) = verifier.token(req) else {
            return verifier.challenge(&Refusal {
                error: None,
                description: "a bearer token is required",
            });
        };
        let claims = match verifier.verify(&token) {
            Ok(claims) => claims,
            Err(refusal) => return verifier.challenge(&refusal),
        };
        for (claim, header) in &verifier.config.forward_claims {
            let value = match claims.get(claim) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Null) | None => continue,
                Some(other) => other.to_string(),
            };
            if let Err(e) = req.set_header(header, value.as_bytes()) {
                burrow_plugin::log(Level::Warn, &format!("claim {claim} not forwarded: {e}"));
            }
        }
        Action::Continue
    }
}

burrow_plugin::export_plugin!(JwtAuth);
