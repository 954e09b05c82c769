//! Client of the control-plane API (`/v1` on an edge's admin listener), for the CLI verbs.
//!
//! `burrow login` stores the API address and token in `$BURROW_HOME/cert.json` (mode 0600);
//! every other verb reads it from there.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use burrow_shared::files::{burrow_home, write_private};

/// Answers bigger than this are not what the API sends.
const MAX_RESPONSE: usize = 8 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(30);

/// What `burrow login` saves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Login {
    /// Base URL of the API, e.g. `http://127.0.0.1:9090`.
    pub api: String,
    pub token: String,
}

impl Login {
    pub fn path() -> PathBuf {
        burrow_home().join("cert.json")
    }

    pub fn load() -> Result<Self> {
        let path = Self::path();
        let file = std::fs::File::open(&path).with_context(|| {
            format!(
                "not logged in ({} missing): run `burrow login --api URL --token TOKEN`",
                path.display()
            )
        })?;
        let mut text = String::new();
        file.take(64 * 1024).read_to_string(&mut text)?;
        serde_json::from_str(&text).with_context(|| format!("{} is corrupt; run `burrow login` again", path.display()))
    }

    pub fn save(&self) -> Result<PathBuf> {
        let path = Self::path();
        write_private(&path, serde_json::to_string_pretty(self)?.as_bytes())?;
        Ok(path)
    }
}

pub struct ApiClient {
    login: Login,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl ApiClient {
    pub fn new(login: Login) -> Result<Self> {
        let tls = burrow_tunnel::tls::origin_tls_config(&Default::default())?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            login,
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// Call the API; a non-2xx answer becomes an error carrying the API's message.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        self.call_with(method, path, body, &[]).await
    }

    /// [`Self::call`] with extra request headers (e.g. `If-Match`).
    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, String)],
    ) -> Result<Value> {
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        self.send(method, path, body, "application/json", headers).await
    }

    /// [`Self::call_with`] with a body of any type (e.g. a plugin's `.wasm`).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        content_type: &str,
        headers: &[(&str, String)],
    ) -> Result<Value> {
        let url = format!("{}{path}", self.login.api.trim_end_matches('/'));
        let mut request = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.login.token))
            .header(header::CONTENT_TYPE, content_type);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request.body(Full::new(body))?;
        let response = tokio::time::timeout(TIMEOUT, self.client.request(request))
            .await
            .with_context(|| format!("{url}: no answer within {TIMEOUT:?}"))?
            .with_context(|| format!("cannot reach the API at {}", self.login.api))?;
        let status = response.status();
        let bytes = tokio::time::timeout(TIMEOUT, Limited::new(response.into_body(), MAX_RESPONSE).collect())
            .await
            .with_context(|| format!("{url}: body not received within {TIMEOUT:?}"))?
            .map_err(|e| anyhow::anyhow!("{url}: reading the answer: {e}"))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            let message = value["error"]["message"]
                .as_str()
                .map_or_else(|| format!("HTTP {status}"), str::to_owned);
            return Err(ApiError { status, message }.into());
        }
        Ok(value)
    }
}

/// The API answered, with an error status (as opposed to not answering at all).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: http::StatusCode,
    pub message: String,
}

/// Whether `e` is the API saying "not found".
pub fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ApiError>()
        .is_some_and(|e| e.status == http::StatusCode::NOT_FOUND)
}
