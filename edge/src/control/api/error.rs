//! The one error type of the API, and the one place it becomes an answer.

use axum::Json;
use axum::response::{IntoResponse, Response};
use burrow_api::{ErrorBody, ErrorDetail};
use std::time::Duration;

use http::{HeaderValue, StatusCode, header};

use crate::control::resources::CpError;

/// Why a request failed, as the client sees it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<&'static str>,
    /// Sent as `Retry-After` (whole seconds, rounded up).
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    /// The same error, telling the client when to try again.
    pub fn retry_after(self, wait: Duration) -> Self {
        Self {
            retry_after: Some(wait),
            ..self
        }
    }

    /// 422 naming the field at fault.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field: Some(field),
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
        }
    }
}

impl From<CpError> for ApiError {
    fn from(e: CpError) -> Self {
        match e {
            CpError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            CpError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            CpError::Forbidden(_) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string()),
            CpError::Unavailable(_) => ApiError::new(StatusCode::BAD_GATEWAY, "unavailable", e.to_string()),
            CpError::Invalid { field, reason } => ApiError::invalid(field, format!("{field}: {reason}")),
            CpError::Store(_) | CpError::Corrupt { .. } => {
                tracing::error!("control plane: {e}");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the control plane's store is unavailable: nothing was changed, and the edges keep \
                     serving their last config; retry later",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                field: self.field.map(str::to_owned),
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(wait) = self.retry_after {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}
