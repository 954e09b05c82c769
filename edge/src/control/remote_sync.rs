//! Edge-only nodes: follow another node's control plane over HTTP (`GET /v1/watch`, a stream of
//! routing snapshots) instead of a local store.
//!
//! While the control plane is unreachable the node keeps serving its current table (and, after a
//! restart, the snapshot it saved), and retries with backoff. Connector registrations are checked
//! against that table, so tunnels keep working through the outage.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use burrow_shared::backoff::Backoff;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::io::StreamReader;
use tokio_util::sync::CancellationToken;

use crate::EdgeState;
use crate::control::api::WATCH_HEARTBEAT;
use crate::control::config_sync::{RetryLoad, apply};
use crate::control::plugin_catalog::MAX_PLUGIN_SIZE;
use crate::control::resources::Snapshot;
use crate::plugins::version::PluginVersion;

/// Time to download one plugin component.
const PLUGIN_FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// A snapshot line bigger than this is refused (about 300k routes).
const MAX_LINE: usize = 64 * 1024 * 1024;

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The control plane an edge-only node follows (`--control-plane`).
pub struct Remote {
    /// Base URL of its API.
    pub url: String,
    /// This node's token.
    pub token: String,
    /// PEM of the CA of the API's certificate when it is not publicly trusted.
    pub ca_pem: Option<Vec<u8>>,
}

/// Between two attempts to reach the control plane.
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));

/// Follow `remote` until `shutdown`.
pub async fn follow_remote(state: Arc<EdgeState>, remote: Remote, data_dir: PathBuf, shutdown: CancellationToken) {
    let client: HttpClient = match burrow_tunnel::tls::api_connector(remote.ca_pem.as_deref()) {
        Ok(connector) => Client::builder(TokioExecutor::new()).build(connector),
        Err(e) => {
            tracing::error!("cannot build the control-plane client: {e:#}");
            return;
        }
    };
    let Remote {
        url: control_plane,
        token,
        ..
    } = remote;
    tokio::spawn(publish_health(
        state.clone(),
        client.clone(),
        control_plane.clone(),
        token.clone(),
        shutdown.clone(),
    ));
    let mut failures: u32 = 0;
    loop {
        let result = tokio::select! {
            r = stream_once(&client, &control_plane, &token, &state, &data_dir) => r,
            () = shutdown.cancelled() => return,
        };
        match result {
            Ok(()) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!("control plane {control_plane}: {e:#}; serving the current config and retrying");
            }
        }
        let delay = RECONNECT.delay(failures);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Send this node's pool-health view to the control plane (`PUT /v1/health/NODE`) when it
/// changes and every minute, for `burrow pool show`.
async fn publish_health(
    state: Arc<EdgeState>,
    client: HttpClient,
    base: String,
    token: String,
    shutdown: CancellationToken,
) {
    let url = format!("{}/v1/health/{}", base.trim_end_matches('/'), state.config.node_name);
    let mut schedule = crate::control::health_monitor::ReportSchedule::default();
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = shutdown.cancelled() => return,
        }
        let Some(report) = schedule.due(&state) else { continue };
        let body = Bytes::from(serde_json::to_vec(&report).unwrap_or_default());
        let request = Request::put(&url)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body));
        let sent = match request {
            Ok(request) => tokio::time::timeout(Duration::from_secs(10), client.request(request)).await,
            Err(e) => {
                tracing::warn!("health report: {e}");
                schedule.failed();
                continue;
            }
        };
        match sent {
            Ok(Ok(response)) if response.status().is_success() => schedule.succeeded(),
            Ok(Ok(response)) => {
                tracing::debug!("health report refused: HTTP {}", response.status());
                schedule.failed();
            }
            Ok(Err(e)) => {
                tracing::debug!("health report not sent: {e}");
                schedule.failed();
            }
            Err(_) => schedule.failed(),
        }
    }
}

/// One watch stream: apply every snapshot until the stream ends or goes silent.
async fn stream_once(client: &HttpClient, base: &str, token: &str, state: &EdgeState, data_dir: &Path) -> Result<()> {
    let url = format!("{}/v1/watch", base.trim_end_matches('/'));
    let request = Request::get(&url)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))?;
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .context("no answer within 10s")?
        .context("unreachable")?;
    anyhow::ensure!(
        response.status().is_success(),
        "watch refused: HTTP {}",
        response.status()
    );
    // One snapshot per line, each at most MAX_LINE bytes (longer is an error, not a buffer
    // that grows).
    let bytes =
        http_body_util::BodyDataStream::new(response.into_body()).map(|chunk| chunk.map_err(std::io::Error::other));
    let mut lines = FramedRead::new(StreamReader::new(bytes), LinesCodec::new_with_max_length(MAX_LINE));
    let silence = WATCH_HEARTBEAT * 3;
    let mut retry = RetryLoad::default();
    loop {
        let line = tokio::select! {
            line = tokio::time::timeout(silence, lines.next()) => {
                line.with_context(|| format!("silent for {silence:?}"))?
            }
            again = retry.due() => {
                let fetch = |version| fetch_plugin(client, base, token, version);
                let complete = apply(state, &again, data_dir, fetch).await;
                retry.after_apply(again, complete);
                continue;
            }
        };
        let line = line
            .context("the watch stream ended")?
            .map_err(|e| anyhow::anyhow!("reading the watch stream: {e}"))?;
        if line.trim().is_empty() {
            continue; // heartbeat
        }
        let snapshot: Snapshot = serde_json::from_str(&line).context("a snapshot does not parse")?;
        tracing::debug!(revision = snapshot.revision, "snapshot from the control plane");
        let fetch = |version| fetch_plugin(client, base, token, version);
        let complete = apply(state, &snapshot, data_dir, fetch).await;
        retry.after_apply(snapshot, complete);
    }
}

/// The component of an uploaded plugin version (`GET /v1/plugin-wasm/...`, node token).
async fn fetch_plugin(client: &HttpClient, base: &str, token: &str, v: PluginVersion) -> Result<Vec<u8>> {
    let url = format!(
        "{}/v1/plugin-wasm/{}/{}/{}",
        base.trim_end_matches('/'),
        v.account,
        v.name,
        v.version
    );
    let request = Request::get(&url)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))?;
    let fetched = async {
        let response = client.request(request).await.context("unreachable")?;
        anyhow::ensure!(response.status().is_success(), "HTTP {}", response.status());
        let body = Limited::new(response.into_body(), MAX_PLUGIN_SIZE)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the component: {e}"))?;
        Ok(body.to_bytes().to_vec())
    };
    tokio::time::timeout(PLUGIN_FETCH_TIMEOUT, fetched)
        .await
        .with_context(|| format!("{url}: not received within {PLUGIN_FETCH_TIMEOUT:?}"))?
        .with_context(|| format!("fetching {url}"))
}
