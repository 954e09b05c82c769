//! Real etcd for the tests: one member or a cluster of them on loopback, each a child process
//! with its data in a temporary folder, stopped when dropped.
//!
//! Needs the `etcd` binary (Debian: `apt-get install etcd-server`; `.ci/run` installs it).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_edge::control::store::etcd::{EtcdConfig, EtcdStore};

use crate::{TempDir, free_tcp_port};

/// One etcd member of an [`EtcdCluster`].
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// etcd members on loopback, started together as one cluster.
pub struct EtcdCluster {
    dir: TempDir,
    members: Vec<Member>,
    initial_cluster: String,
}

impl EtcdCluster {
    /// A cluster of `size` members, once it answers.
    pub async fn start(size: usize) -> Self {
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_tcp_port(),
                peer_port: free_tcp_port(),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            dir: TempDir::new(),
            members,
            initial_cluster,
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        cluster.wait_healthy().await;
        cluster
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    fn spawn(&mut self, i: usize) {
        let data = self.data_dir(i);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", self.members[i].name)))
            .unwrap();
        let member = &self.members[i];
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let child = Command::new("etcd")
            .args(["--name", &member.name, "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args([
                "--initial-cluster",
                &self.initial_cluster,
                "--initial-cluster-state",
                "new",
            ])
            .args(["--initial-cluster-token", "burrow-test"])
            // Tests write a lot and need no durability; short elections make failover quick.
            .args([
                "--unsafe-no-fsync",
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
            ])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start etcd ({e}): the cluster tests need it on PATH (Debian: apt-get install etcd-server)"
                )
            });
        self.members[i].child = Some(child);
    }

    /// `http://127.0.0.1:PORT` of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// `etcd://` URL of the cluster, as `burrow-edge run --store` takes it.
    pub fn store_url(&self) -> String {
        let hosts: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect();
        format!("etcd://{}", hosts.join(","))
    }

    /// A store on this cluster under `prefix`.
    pub async fn store(&self, prefix: &str) -> Arc<EtcdStore> {
        let config = EtcdConfig {
            endpoints: self.endpoints(),
            prefix: prefix.to_owned(),
            ..Default::default()
        };
        EtcdStore::connect(&config).await.unwrap()
    }

    /// Stop member `i` the hard way (kill -9).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start member `i` again on its data.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    /// Wait until a member answers a linearizable read (the cluster has a leader).
    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for endpoint in self.endpoints() {
                let answered = async {
                    let mut client = etcd_client::Client::connect([endpoint.as_str()], None).await.ok()?;
                    client.get("health", None).await.ok()
                };
                if tokio::time::timeout(Duration::from_secs(2), answered)
                    .await
                    .ok()
                    .flatten()
                    .is_some()
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy; logs in {}",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Compact the history up to the current revision.
    pub async fn compact(&self) -> i64 {
        let mut client = etcd_client::Client::connect(self.endpoints(), None).await.unwrap();
        let head = client.get("x", None).await.unwrap().header().unwrap().revision();
        client.compact(head, None).await.unwrap();
        head
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
