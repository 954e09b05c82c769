//! Tunnel credentials files: what `burrow tunnel run` reads to prove it may serve a tunnel.
//!
//! Written once when the tunnel is created (`~/.burrow/<UUID>.json`, mode 0600) and never
//! changed by a connector restart: the tunnel and its routes are persistent, connections are not.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burrow_protocol::TunnelId;
use burrow_shared::files::{burrow_home, write_private};

pub use burrow_protocol::Credentials;

/// Credentials files are tiny; anything bigger is not one.
const MAX_CREDENTIALS_BYTES: u64 = 256 * 1024;

/// Reading and writing credentials files.
pub trait CredentialsFile: Sized {
    fn load(path: &Path) -> Result<Self>;
    /// Write with mode 0600: the secret in it lets anyone serve the tunnel's hostnames.
    fn save(&self, path: &Path) -> Result<()>;
    /// Where `burrow` keeps credentials of the tunnel `id` by default.
    fn default_path(id: TunnelId) -> PathBuf;
}

impl CredentialsFile for Credentials {
    fn load(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| {
            format!(
                "cannot read the tunnel credentials file {}; pass --credentials-file with the file \
                 written when the tunnel was created",
                path.display()
            )
        })?;
        let mut text = String::new();
        file.take(MAX_CREDENTIALS_BYTES + 1)
            .read_to_string(&mut text)
            .with_context(|| format!("reading {}", path.display()))?;
        anyhow::ensure!(
            text.len() as u64 <= MAX_CREDENTIALS_BYTES,
            "{} is larger than {MAX_CREDENTIALS_BYTES} bytes; it is not a credentials file",
            path.display()
        );
        serde_json::from_str(&text).with_context(|| format!("{} is not a valid credentials file", path.display()))
    }

    fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        write_private(path, text.as_bytes())
    }

    fn default_path(id: TunnelId) -> PathBuf {
        burrow_home().join(format!("{id}.json"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use burrow_protocol::{AccountId, TunnelSecret};

    use super::*;

    #[test]
    fn roundtrip_keeps_the_secret_and_mode() {
        let dir = std::env::temp_dir().join(format!("burrow-creds-{}", uuid::Uuid::new_v4()));
        let path = dir.join("t.json");
        let creds = Credentials {
            account: AccountId::new_random(),
            tunnel_id: TunnelId::new_random(),
            tunnel_name: "web".into(),
            secret: TunnelSecret::generate(),
            edges: vec!["127.0.0.1:7844".into()],
            edge_ca: None,
        };
        creds.save(&path).unwrap();
        let back = Credentials::load(&path).unwrap();
        assert_eq!(back.secret, creds.secret);
        let from_token = Credentials::from_token(&creds.to_token()).unwrap();
        assert_eq!(
            (from_token.secret, from_token.tunnel_id),
            (creds.secret.clone(), creds.tunnel_id)
        );
        assert!(Credentials::from_token("not a token").is_err());
        assert_eq!(back.tunnel_id, creds.tunnel_id);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_file_says_what_to_pass() {
        let err = Credentials::load(Path::new("/nonexistent/burrow.json")).unwrap_err();
        assert!(format!("{err:#}").contains("--credentials-file"), "{err:#}");
    }
}
