//! Client of the control-plane API (`/v1` on an edge's admin listener), for the CLI verbs. It
//! sends and reads `burrow_api`'s types, the ones the edge's handlers are written with.
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
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use burrow_api::ErrorBody;
use burrow_shared::files::{burrow_home, write_private};

/// Answers bigger than this are not what the API sends.
const MAX_RESPONSE: usize = 8 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(30);
const JSON: &str = "application/json";

/// What `burrow login` saves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Login {
    /// Base URL of the API, e.g. `http://127.0.0.1:9090`.
    pub api: String,
    pub token: String,
    /// PEM of the CA that signed the API's certificate, when it is not publicly trusted
    /// (`burrow login --api-ca`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_ca: Option<String>,
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
        let connector = burrow_tunnel::tls::api_connector(login.api_ca.as_deref().map(str::as_bytes))?;
        Ok(Self {
            login,
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// `GET path`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.request(Method::GET, path).await
    }

    /// A request without a body (a delete, a zone's verify).
    pub async fn request<T: DeserializeOwned>(&self, method: Method, path: &str) -> Result<T> {
        self.exchange(method, path, Bytes::new(), JSON, &[]).await
    }

    /// A request with a JSON body and extra headers (e.g. `If-Match`).
    pub async fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
        headers: &[(&str, String)],
    ) -> Result<T> {
        let body = serde_json::to_vec(body)?;
        self.exchange(method, path, body.into(), JSON, headers).await
    }

    /// `PUT path` with a body that is not JSON (a plugin's `.wasm`).
    pub async fn upload<T: DeserializeOwned>(&self, path: &str, body: Bytes, content_type: &str) -> Result<T> {
        self.exchange(Method::PUT, path, body, content_type, &[]).await
    }

    /// Call the API; a non-2xx answer becomes an [`ApiError`].
    async fn exchange<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        content_type: &str,
        headers: &[(&str, String)],
    ) -> Result<T> {
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
        if !status.is_success() {
            let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => (Some(body.error.code), body.error.message),
                // Something in front of the API answered (a proxy's error page).
                Err(_) => (None, format!("HTTP {status}")),
            };
            return Err(ApiError { status, code, message }.into());
        }
        // An answer without a body (204) reads as `null`, which `()`, `Option` and `Value` accept.
        let json: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(json).with_context(|| format!("{url}: unexpected answer (an edge of another version?)"))
    }
}

/// The API answered, with an error status (as opposed to not answering at all).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: http::StatusCode,
    /// The API's machine-readable code (`not_found`, `conflict`, …); `None` when the answer was
    /// not the API's.
    pub code: Option<String>,
    pub message: String,
}

/// The API's error code, when `e` is the API answering with an error.
fn code(e: &anyhow::Error) -> Option<&str> {
    e.downcast_ref::<ApiError>().and_then(|e| e.code.as_deref())
}

/// Whether `e` is the API saying "not found".
pub fn is_not_found(e: &anyhow::Error) -> bool {
    code(e) == Some("not_found")
}

/// Whether `e` is the API refusing a write that conflicts with what it holds. For a write with
/// `If-Match`, what was read changed meanwhile: reading it again and retrying can succeed.
pub fn is_conflict(e: &anyhow::Error) -> bool {
    code(e) == Some("conflict")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An API that answers every request with `answer`, a whole HTTP/1.1 response.
    async fn api_answering(answer: impl Into<String>) -> ApiClient {
        let answer = answer.into();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut request = [0; 4096];
                let _ = socket.read(&mut request).await;
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        ApiClient::new(Login {
            api,
            token: "t".into(),
            api_ca: None,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn an_answer_without_a_body_reads_as_nothing() {
        let api = api_answering("HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n").await;
        api.request::<()>(Method::DELETE, "/v1/x").await.unwrap();
        let value: serde_json::Value = api.request(Method::DELETE, "/v1/x").await.unwrap();
        assert_eq!(value, serde_json::Value::Null);
    }

    #[tokio::test]
    async fn errors_carry_the_status_and_the_api_code() {
        let body = r#"{"error":{"code":"conflict","message":"pool \"web\" changed concurrently"}}"#;
        let answer = format!(
            "HTTP/1.1 409 Conflict\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let api = api_answering(answer).await;
        let e = api.get::<burrow_api::PoolView>("/v1/pools/web").await.unwrap_err();
        assert!(is_conflict(&e) && !is_not_found(&e));
        assert_eq!(e.to_string(), "pool \"web\" changed concurrently");
        let e = e.downcast::<ApiError>().unwrap();
        assert_eq!(e.status, http::StatusCode::CONFLICT);

        // Not the API answering: no code, the status as the message.
        let proxy = "HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope";
        let e = api_answering(proxy)
            .await
            .get::<serde_json::Value>("/v1/account")
            .await
            .unwrap_err();
        assert!(!is_not_found(&e));
        assert_eq!(e.to_string(), "HTTP 404 Not Found");
    }
}
