//! Which store holds the control plane (`--store`), for `burrow-edge run` and the commands that
//! manage accounts, tokens and zones: SQLite in the data dir (one machine), or etcd (a cluster
//! of edges, every one equal).

use crate::control::store::Store;
use crate::control::store::etcd::{EtcdConfig, EtcdStore};

use super::*;

#[derive(Args, Clone, Debug)]
pub(super) struct StoreArgs {
    /// The edge's data dir: store.db (SQLite), the config snapshot, the self-signed
    /// certificate, compiled plugins [default: $BURROW_HOME/edge].
    #[arg(long, env = "BURROW_EDGE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The control plane's store: `sqlite:PATH` [default: store.db in --data-dir], or
    /// `etcd://HOST:PORT[,HOST:PORT…]` (every member of an etcd cluster) for a cluster of edges.
    #[arg(long, env = "BURROW_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// CA certificate (PEM) of the etcd members: they are then reached over TLS.
    #[arg(long, value_name = "FILE")]
    pub store_ca: Option<PathBuf>,
    /// Client certificate (PEM), for etcd members that check client certificates.
    #[arg(long, requires = "store_key", value_name = "FILE")]
    pub store_cert: Option<PathBuf>,
    /// Private key (PEM) of --store-cert.
    #[arg(long, requires = "store_cert", value_name = "FILE")]
    pub store_key: Option<PathBuf>,
    /// etcd user, for etcd with authentication on (the password in BURROW_STORE_PASSWORD).
    #[arg(long, value_name = "NAME")]
    pub store_user: Option<String>,
    #[arg(long, env = "BURROW_STORE_PASSWORD", hide = true, hide_env_values = true)]
    pub store_password: Option<String>,
    /// Prefix of every key in etcd: Burrow clusters with different prefixes share one etcd.
    #[arg(long, default_value = "burrow/", value_name = "PREFIX")]
    pub store_prefix: String,
}

/// Where the store is, parsed from [`StoreArgs`].
#[derive(Debug, Clone)]
pub(super) enum StoreLocation {
    Sqlite(PathBuf),
    Etcd(EtcdConfig),
}

impl StoreArgs {
    pub fn data_dir(&self) -> PathBuf {
        data_dir(self.data_dir.clone())
    }

    pub fn location(&self) -> Result<StoreLocation> {
        let Some(url) = self.store.as_deref() else {
            return Ok(StoreLocation::Sqlite(self.data_dir().join("store.db")));
        };
        if let Some(path) = url.strip_prefix("sqlite:") {
            anyhow::ensure!(!path.is_empty(), "--store sqlite:PATH: the path is missing");
            return Ok(StoreLocation::Sqlite(PathBuf::from(path)));
        }
        let Some(hosts) = url.strip_prefix("etcd://") else {
            anyhow::bail!("--store {url:?}: expected sqlite:PATH or etcd://HOST:PORT[,HOST:PORT…]");
        };
        let tls = self.store_ca.is_some() || self.store_cert.is_some();
        let scheme = if tls { "https" } else { "http" };
        let endpoints = hosts
            .split(',')
            .map(|host| {
                let host = host.trim().trim_end_matches('/');
                let (name, port) = burrow_shared::host_port::split(host);
                anyhow::ensure!(
                    !name.is_empty() && port.is_some(),
                    "--store: {host:?} is not HOST:PORT (etcd's client port, usually 2379)"
                );
                Ok(format!("{scheme}://{host}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let user = match (&self.store_user, &self.store_password) {
            (Some(user), Some(password)) => Some((user.clone(), password.clone())),
            (Some(_), None) => anyhow::bail!("--store-user needs the password in BURROW_STORE_PASSWORD"),
            _ => None,
        };
        Ok(StoreLocation::Etcd(EtcdConfig {
            endpoints,
            ca: self.store_ca.clone(),
            cert: self.store_cert.clone().zip(self.store_key.clone()),
            user,
            prefix: self.store_prefix.clone(),
        }))
    }

    /// The store, refused when it cannot be the one the config snapshot in the data dir came
    /// from (a lost or replaced store would otherwise serve, and save, less config).
    pub async fn open(&self) -> Result<Arc<dyn Store>, StoreOpen> {
        let dir = self.data_dir();
        let snapshot = config_sync::load_snapshot(&dir).ok().flatten();
        let holds_config = snapshot
            .as_ref()
            .filter(|s| !(s.tunnels.is_empty() && s.routes.is_empty() && s.pools.is_empty()));
        let location = self.location().map_err(StoreOpen::Failed)?;
        let store: Arc<dyn Store> = match &location {
            StoreLocation::Sqlite(path) => {
                let empty = std::fs::metadata(path).map_or(true, |m| m.len() == 0);
                if let (true, Some(snapshot)) = (empty, holds_config) {
                    return Err(StoreOpen::Lost(anyhow::anyhow!(
                        "{} is missing or empty, but {} holds the config of revision {} ({} tunnels, {} routes): \
                         the store was lost, and starting would serve (and save) an empty config. Restore store.db \
                         from a backup; or, to start over with an empty store, move snapshot.json out of {}",
                        path.display(),
                        config_sync::snapshot_path(&dir).display(),
                        snapshot.revision,
                        snapshot.tunnels.len(),
                        snapshot.routes.len(),
                        dir.display(),
                    )));
                }
                SqliteStore::open(path)
                    .map_err(|e| StoreOpen::Failed(anyhow::anyhow!("opening the store {}: {e}", path.display())))?
            }
            StoreLocation::Etcd(config) => EtcdStore::connect(config)
                .await
                .map_err(|e| StoreOpen::Failed(anyhow::anyhow!("{e}")))?,
        };
        let revision = match store.revision().await {
            Ok(revision) => revision,
            // etcd may be down while this edge starts: it serves its snapshot and follows the
            // store once it answers.
            Err(e) if matches!(location, StoreLocation::Etcd(_)) => {
                tracing::warn!("the store does not answer yet ({e}); serving the config snapshot meanwhile");
                return Ok(store);
            }
            Err(e) => return Err(StoreOpen::Failed(anyhow::anyhow!("reading the store: {e}"))),
        };
        if let Some(snapshot) = holds_config.filter(|s| s.revision > revision) {
            return Err(StoreOpen::Lost(anyhow::anyhow!(
                "the store ({}) is at revision {revision}, behind the config snapshot {} (revision {}): it \
                 was replaced by an older copy or made anew. Restore it; or, to serve what it holds, move \
                 snapshot.json out of {}",
                location.describe(),
                config_sync::snapshot_path(&dir).display(),
                snapshot.revision,
                dir.display(),
            )));
        }
        Ok(store)
    }

    /// [`Self::open`] for the commands that manage the store: the control plane on it.
    pub async fn control_plane(&self) -> Result<ControlPlane> {
        let store = self.open().await.map_err(|e| match e {
            StoreOpen::Lost(e) | StoreOpen::Failed(e) => e,
        })?;
        Ok(ControlPlane::new(store))
    }
}

impl StoreLocation {
    fn describe(&self) -> String {
        match self {
            StoreLocation::Sqlite(path) => path.display().to_string(),
            StoreLocation::Etcd(config) => format!("etcd {}", config.endpoints.join(",")),
        }
    }
}

/// Why the store was not opened.
pub(super) enum StoreOpen {
    /// It cannot be the store the config snapshot came from: serving it would replace that
    /// config with an older or empty one.
    Lost(anyhow::Error),
    /// It could not be opened (corrupt, unreadable, newer schema, bad flags).
    Failed(anyhow::Error),
}
