//! Edge and CLI processes: the real binaries, their ports, their output.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::StatusCode;

use crate::{Process, free_tcp_port, free_udp_port, get, http1_client};

/// The ports of an edge process.
pub struct Ports {
    pub http: u16,
    pub tunnel: u16,
    pub admin: u16,
    pub api: u16,
}

impl Default for Ports {
    /// Free ports, one of each.
    fn default() -> Self {
        Self {
            http: free_tcp_port(),
            tunnel: free_udp_port(),
            admin: free_tcp_port(),
            api: free_tcp_port(),
        }
    }
}

impl Ports {
    pub fn http(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.http).into()
    }

    pub fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.api)
    }
}

/// `bin run` (the edge binary) on `ports`, its data in `<dir>/edge`, with `extra` flags.
pub fn edge_process(bin: &str, dir: &Path, ports: &Ports, extra: &[&str]) -> Process {
    let (http, tunnel, admin, api) = (
        format!("127.0.0.1:{}", ports.http),
        format!("127.0.0.1:{}", ports.tunnel),
        format!("127.0.0.1:{}", ports.admin),
        format!("127.0.0.1:{}", ports.api),
    );
    let data = dir.join("edge");
    let mut args = vec![
        "run",
        "--http",
        &http,
        "--https",
        "off",
        "--tunnel",
        &tunnel,
        "--admin",
        &admin,
        "--api",
        &api,
        "--advertise",
        &tunnel,
        "--data-dir",
        data.to_str().unwrap(),
        "--tunnel-idle-timeout",
        "3s",
        "--grace-period",
        "1s",
    ];
    args.extend_from_slice(extra);
    Process::spawn(bin, &args, &[("BURROW_HOME", dir)])
}

/// Run a CLI command to completion with `home` as BURROW_HOME; returns (exit code, output).
pub async fn cli(bin: &str, home: &Path, args: &[&str]) -> (Option<i32>, String) {
    Process::spawn(bin, args, &[("BURROW_HOME", home)])
        .wait(Duration::from_secs(30))
        .await
}

pub async fn ok(bin: &str, home: &Path, args: &[&str]) -> String {
    let (code, output) = cli(bin, home, args).await;
    assert_eq!(code, Some(0), "{args:?}: {output}");
    output
}

/// The secret a CLI printed once (`… (shown once, keep it secret): SECRET`).
pub fn shown_once(output: &str) -> String {
    output
        .lines()
        .find_map(|l| l.split("keep it secret): ").nth(1))
        .unwrap()
        .trim()
        .to_owned()
}

/// `GET /` for `host` on the edge's HTTP listener: status and body, or `None` if it failed.
pub async fn served(ports: &Ports, host: &str) -> Option<(StatusCode, String)> {
    get(&http1_client(), ports.http(), host, "/")
        .await
        .ok()
        .map(|r| (r.status, r.text()))
}
