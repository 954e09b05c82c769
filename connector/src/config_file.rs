//! The connector's `config.yml`, in cloudflared's format so existing tunnel configs carry over.
//!
//! Loading is strict: unknown keys are rejected (a typo like `credential-file` would otherwise be silently
//! ignored and the tunnel would start with the wrong settings), and the file is size-capped because it is
//! read whole into memory before parsing. Ingress validation lives in [`burrow_tunnel::ingress`]; this module only
//! hands it the raw rules and the top-level `originRequest` defaults.

use std::fs::File;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use burrow_tunnel::ingress::{Ingress, IngressError, RawOriginRequest, RawRule};

/// Real configs are a few KiB; anything near this is the wrong file or a runaway generator.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ConfigFile {
    /// Tunnel name or UUID.
    pub tunnel: Option<String>,
    pub credentials_file: Option<PathBuf>,
    /// `host:port` of edges to connect to.
    #[serde(default)]
    pub edge: Vec<String>,
    pub ha_connections: Option<u8>,
    pub metrics: Option<SocketAddr>,
    #[serde(default, with = "humantime_serde")]
    pub grace_period: Option<Duration>,
    /// Defaults for every rule's `originRequest`.
    #[serde(rename = "originRequest", default)]
    pub origin_request: RawOriginRequest,
    #[serde(default)]
    pub ingress: Vec<RawRule>,
}

impl ConfigFile {
    /// Reads and parses `path`, refusing files over [`MAX_CONFIG_BYTES`].
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(read_err)?;
        let size = file.metadata().map_err(read_err)?.len();
        if size > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
                size,
            });
        }
        // The metadata check is advisory: pipes and /proc files report 0, and files can grow after it.
        let mut bytes = Vec::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        let read = bytes.len() as u64;
        if read > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
                size: read,
            });
        }
        let origin = path.display().to_string();
        let text = String::from_utf8(bytes).map_err(|e| ConfigError::Parse {
            origin: origin.clone(),
            message: format!(
                "not UTF-8 text (invalid byte at offset {}): save it as UTF-8",
                e.utf8_error().valid_up_to()
            ),
        })?;
        ConfigFile::parse(&text, &origin)
    }

    /// Parses YAML text; `origin` names the source (usually the file path) in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<ConfigFile, ConfigError> {
        // An empty or comments-only file is a valid, empty config (e.g. everything given on the command line).
        serde_yaml_ng::from_str::<Option<ConfigFile>>(text)
            .map(Option::unwrap_or_default)
            .map_err(|e| ConfigError::Parse {
                origin: origin.to_owned(),
                message: e.to_string(),
            })
    }

    /// The validated ingress rules, with top-level `originRequest` as each rule's defaults.
    pub fn ingress(&self) -> Result<Ingress, IngressError> {
        if self.ingress.is_empty() {
            return Err(IngressError::one(
                "the config file has no `ingress:` rules: add some (ending with `- service: http_status:404`), \
                 or run with --url http://localhost:PORT to send everything to one origin"
                    .to_owned(),
            ));
        }
        Ingress::from_raw(&self.ingress, &self.origin_request)
    }
}

#[derive(thiserror::Error, Debug)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source} (check the --config path and its permissions)")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "config file {path} is {size} bytes or more, over the {} KiB limit: check that it is the right file",
        MAX_CONFIG_BYTES / 1024
    )]
    TooLarge { path: PathBuf, size: u64 },
    #[error("invalid config {origin}: {message}")]
    Parse { origin: String, message: String },
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use burrow_tunnel::ingress::{HostPattern, Service};

    const EXAMPLE: &str = r#"
# A typical cloudflared config.
tunnel: 6ff42ae2-765d-4adf-8112-31c55c1551ef
credentials-file: /root/.cloudflared/6ff42ae2-765d-4adf-8112-31c55c1551ef.json
edge: ["edge1.example.net:7844", "edge2.example.net:7844"]
ha-connections: 2
metrics: 127.0.0.1:2000
grace-period: 30s
originRequest:
  connectTimeout: 10s
  noTLSVerify: true
ingress:
  - hostname: gitlab.widgetcorp.tech
    service: http://localhost:80
  - hostname: "*.widgetcorp.tech"
    path: ^/static/
    service: https://localhost:8443
    originRequest:
      connectTimeout: 2s
      originServerName: internal.widgetcorp.tech
  - hostname: ssh.widgetcorp.tech
    service: tcp://localhost:22
  - service: http_status:404
"#;

    fn temp_path(tag: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        std::env::temp_dir().join(format!("burrow-config-{tag}-{}-{nanos}.yml", std::process::id()))
    }

    #[test]
    fn full_example_parses() {
        let cfg = ConfigFile::parse(EXAMPLE, "example").unwrap();
        assert_eq!(cfg.tunnel.as_deref(), Some("6ff42ae2-765d-4adf-8112-31c55c1551ef"));
        assert_eq!(
            cfg.credentials_file.as_deref(),
            Some(Path::new(
                "/root/.cloudflared/6ff42ae2-765d-4adf-8112-31c55c1551ef.json"
            ))
        );
        assert_eq!(cfg.edge.len(), 2);
        assert_eq!(cfg.ha_connections, Some(2));
        assert_eq!(cfg.metrics, Some("127.0.0.1:2000".parse().unwrap()));
        assert_eq!(cfg.grace_period, Some(Duration::from_secs(30)));

        let ing = cfg.ingress().unwrap();
        assert_eq!(ing.rules.len(), 4);
        let r = &ing.rules[1];
        assert_eq!(r.hostname, Some(HostPattern::Wildcard(".widgetcorp.tech".to_owned())));
        assert_eq!(r.path.as_ref().map(|p| p.as_str()), Some("^/static/"));
        assert_eq!(r.origin.connect_timeout, Duration::from_secs(2));
        assert_eq!(r.origin.origin_server_name.as_deref(), Some("internal.widgetcorp.tech"));
        assert!(r.origin.no_tls_verify, "inherited from top-level originRequest");
        assert_eq!(ing.rules[0].origin.connect_timeout, Duration::from_secs(10));
        assert_eq!(
            ing.rules[2].service,
            Service::Tcp {
                address: "localhost:22".to_owned()
            }
        );
        assert_eq!(ing.find("www.widgetcorp.tech", "/static/app.js").index, 1);
        assert_eq!(ing.find("widgetcorp.tech", "/static/app.js").index, 3);
    }

    #[test]
    fn empty_file_is_empty_config() {
        for text in ["", "# only a comment\n"] {
            let cfg = ConfigFile::parse(text, "empty").unwrap();
            assert!(cfg.tunnel.is_none() && cfg.ingress.is_empty());
        }
    }

    #[test]
    fn unknown_keys_rejected_by_name() {
        let cases = [
            ("tunnel: x\ncredential-file: /x.json\n", "credential-file"),
            ("ingress:\n  - service: hello_world\n    hostnme: a.com\n", "hostnme"),
            ("originRequest:\n  noTlsVerify: true\n", "noTlsVerify"),
        ];
        for (text, key) in cases {
            let err = ConfigFile::parse(text, "/etc/burrow/config.yml").unwrap_err();
            let shown = err.to_string();
            assert!(
                shown.contains(key) && shown.contains("/etc/burrow/config.yml"),
                "{shown}"
            );
            assert!(shown.contains("line"), "location missing: {shown}");
        }
    }

    #[test]
    fn load_reads_file_and_reports_errors() {
        let path = temp_path("ok");
        std::fs::write(&path, EXAMPLE).unwrap();
        let cfg = ConfigFile::load(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(cfg.unwrap().ingress.len(), 4);

        let missing = temp_path("missing");
        let err = ConfigFile::load(&missing).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains(&missing.display().to_string()), "{err}");

        let bad = temp_path("bad");
        std::fs::write(&bad, "ingress: [unclosed").unwrap();
        let err = ConfigFile::load(&bad).unwrap_err();
        std::fs::remove_file(&bad).unwrap();
        assert!(err.to_string().contains(&bad.display().to_string()), "{err}");
    }

    #[test]
    fn oversize_file_rejected() {
        let path = temp_path("big");
        std::fs::write(&path, vec![b'#'; usize::try_from(MAX_CONFIG_BYTES).unwrap() + 1]).unwrap();
        let err = ConfigFile::load(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(
            matches!(err, ConfigError::TooLarge { size, .. } if size == MAX_CONFIG_BYTES + 1),
            "{err:?}"
        );
        assert!(err.to_string().contains("1024 KiB limit"), "{err}");
    }

    #[test]
    fn ingress_on_empty_list_errors() {
        let err = ConfigFile::parse("tunnel: x\n", "t").unwrap().ingress().unwrap_err();
        assert!(err.to_string().contains("--url"), "{err}");
    }
}
