//! Request bodies: bounded in size and in time, JSON errors answered as [`ApiError`]s.

use std::time::Duration;

use axum::extract::{FromRequest, Request};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Limited};
use serde::de::DeserializeOwned;

use super::ApiError;

/// API request bodies are small JSON documents.
pub const MAX_BODY: usize = 64 * 1024;
/// A JSON body must arrive within this.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// A JSON body of at most [`MAX_BODY`] bytes, received within 30 s.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let bytes = read(req, MAX_BODY, BODY_TIMEOUT).await?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_json", format!("request body: {e}")))
    }
}

/// The whole request body, at most `limit` bytes, received within `timeout`.
pub async fn read(req: Request, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    let read = Limited::new(req.into_body(), limit).collect();
    let bytes = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!("the request body took over {}s", timeout.as_secs()),
            )
        })?
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("this request body is limited to {limit} bytes"),
            )
        })?;
    Ok(bytes.to_bytes())
}
