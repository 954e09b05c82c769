//! Identifiers shared by every Burrow component. Defined once, used everywhere.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh random (v4) id.
            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A named tunnel's persistent id. Never changes when connectors come and go.
    TunnelId
);
uuid_id!(
    /// The account that owns tunnels and routes.
    AccountId
);
uuid_id!(
    /// One run of a connector process; all its HA connections share it.
    ConnectorId
);

/// Index of one of a connector's HA connections (0-based).
pub type ConnIndex = u8;

/// The 32-byte secret that proves a connector may serve a tunnel.
///
/// Serialized as base64; `Debug` never prints it so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct TunnelSecret(pub [u8; 32]);

impl TunnelSecret {
    /// A fresh secret from a cryptographically secure generator seeded by the OS.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        Self(bytes)
    }

    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }

    pub fn from_base64(text: &str) -> Result<Self, SecretError> {
        let bytes = BASE64.decode(text.trim()).map_err(|_| SecretError::NotBase64)?;
        let array: [u8; 32] = bytes
            .try_into()
            .map_err(|v: Vec<u8>| SecretError::WrongLength(v.len()))?;
        Ok(Self(array))
    }
}

/// Why a tunnel secret could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("tunnel secret is not valid base64")]
    NotBase64,
    #[error("tunnel secret must be 32 bytes, got {0}")]
    WrongLength(usize),
}

impl fmt::Debug for TunnelSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TunnelSecret(***)")
    }
}

impl Serialize for TunnelSecret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for TunnelSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::from_base64(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn secret_roundtrips_and_never_prints() {
        let secret = TunnelSecret::generate();
        assert_ne!(secret.0, [0u8; 32]);
        assert_ne!(secret, TunnelSecret::generate());
        let back = TunnelSecret::from_base64(&secret.to_base64()).unwrap();
        assert_eq!(back, secret);
        assert_eq!(format!("{secret:?}"), "TunnelSecret(***)");
        assert_eq!(TunnelSecret::from_base64("AAAA"), Err(SecretError::WrongLength(3)));
        assert_eq!(TunnelSecret::from_base64("!!"), Err(SecretError::NotBase64));
    }

    #[test]
    fn ids_print_as_plain_uuids() {
        let id: TunnelId = "6ff42ae2-765d-4adf-8112-31c55c1551ef".parse().unwrap();
        assert_eq!(id.to_string(), "6ff42ae2-765d-4adf-8112-31c55c1551ef");
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"6ff42ae2-765d-4adf-8112-31c55c1551ef\""
        );
    }
}
