//! The one error type of the API and its one rendering: `{"error": {"code", "message", "field"?}}`.

use std::time::Duration;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_shared::domain::{JobStatus, ValidationError};
use kiln_shared::ports::{BlobError, QueueError, StoreError};
use serde::Serialize;

/// `Retry-After` of a refusal for too many jobs in flight: jobs of the built-in renderer end in
/// well under that, those of remote providers in seconds to a minute.
const IN_FLIGHT_RETRY_SECS: u64 = 5;

/// Everything a handler can answer instead of success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input; `field` names what to fix, where there is one.
    #[error("{message}")]
    InvalidRequest {
        /// The field, header or query parameter at fault.
        field: Option<String>,
        /// What is wrong with it.
        message: String,
    },
    /// No usable credentials.
    #[error("a valid API key is required: send Authorization: Bearer <key>")]
    Unauthorized,
    /// A signed URL that is malformed, tampered with or expired.
    #[error("the URL's signature is invalid or has expired")]
    InvalidSignature,
    /// Nothing here, or nothing the caller may see.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The path exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The job has already ended, so it cannot change.
    #[error("job is already {0}")]
    JobFinished(JobStatus),
    /// A concurrent change won; the client may retry.
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than the configured limit.
    #[error("request body is too large")]
    PayloadTooLarge,
    /// The body is not JSON.
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// Too many requests; try again after `retry_after`.
    #[error("too many requests")]
    RateLimited {
        /// How long to wait.
        retry_after: Duration,
    },
    /// The caller's jobs in flight would pass the tier's cap.
    #[error("too many jobs in flight: at most {limit} may be pending or running at once")]
    TooManyInFlight {
        /// The cap.
        limit: u32,
    },
    /// The `Idempotency-Key` was sent before with another body (or route).
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyConflict,
    /// A request with this `Idempotency-Key` is still being processed.
    #[error("a request with this Idempotency-Key is still in progress; retry shortly")]
    IdempotencyInProgress,
    /// A bug or an impossible state; the detail is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
    /// A backend is down; the detail is logged, never sent.
    #[error("service unavailable: {0}")]
    Unavailable(String),
}

impl ApiError {
    /// Bad input in `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::InvalidSignature => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::JobFinished(_) | Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited { .. } | Self::TooManyInFlight { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::IdempotencyConflict | Self::IdempotencyInProgress => StatusCode::CONFLICT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. } => "invalid_request",
            Self::Unauthorized => "unauthorized",
            Self::InvalidSignature => "invalid_signature",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::JobFinished(_) => "job_finished",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RateLimited { .. } | Self::TooManyInFlight { .. } => "rate_limited",
            Self::IdempotencyConflict => "idempotency_conflict",
            Self::IdempotencyInProgress => "idempotency_in_progress",
            Self::Internal(_) => "internal",
            Self::Unavailable(_) => "unavailable",
        }
    }

    /// The error as clients see it.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code(),
            message: self.public_message(),
            field: match self {
                Self::InvalidRequest { field, .. } => field.clone(),
                _ => None,
            },
        }
    }

    fn public_message(&self) -> String {
        match self {
            Self::Internal(_) => "internal error".into(),
            Self::Unavailable(_) => "the service is temporarily unavailable; try again".into(),
            other => other.to_string(),
        }
    }
}

/// The error as clients see it. Also left in the response's extensions so that a layer can
/// re-render it in another envelope (the seed routes do).
#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody {
    /// Stable code.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// The field at fault, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: &'a ErrorBody,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, "request refused");
        }
        let body = self.body();
        let mut response = (status, Json(Envelope { error: &body })).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::RateLimited { retry_after } => {
                let secs = retry_after.as_secs().max(1);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            Self::TooManyInFlight { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(IN_FLIGHT_RETRY_SECS));
            }
            Self::IdempotencyInProgress => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(1u64));
            }
            _ => {}
        }
        response.extensions_mut().insert(body);
        response
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self::InvalidRequest {
            field: Some(e.field),
            message: e.message,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Throttled => Self::RateLimited {
                retry_after: Duration::from_secs(1),
            },
            // Callers that expect a conflict handle it before converting; anywhere else it is
            // a state the API cannot explain to the client.
            StoreError::Conflict(m) => Self::Internal(format!("unexpected store conflict: {m}")),
            StoreError::Unavailable(m) => Self::Unavailable(format!("job store: {m}")),
        }
    }
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        Self::Unavailable(format!("blob store: {e}"))
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        Self::Unavailable(format!("queue: {e}"))
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::PayloadTooLarge
        } else {
            Self::InvalidRequest {
                field: None,
                message: format!("could not read the request body: {}", r.body_text()),
            }
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::InvalidRequest {
            field: None,
            message: format!("invalid path: {}", r.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::InvalidRequest {
            field: None,
            message: format!("invalid query string: {}", r.body_text()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn render(e: ApiError) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let (parts, body) = e.into_response().into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .expect("an in-memory body");
        let json = serde_json::from_slice(&bytes).expect("a JSON body");
        (parts.status, parts.headers, json)
    }

    #[tokio::test]
    async fn store_failures_say_nothing_internal() {
        let (status, headers, body) = render(StoreError::Throttled.into()).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            headers.get(header::RETRY_AFTER).map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        assert_eq!(body["error"]["code"], "rate_limited");

        let secret = "sqlite:/var/data/kiln.db is locked";
        let (status, _, body) = render(StoreError::Unavailable(secret.into()).into()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["code"], "unavailable");
        assert!(!body.to_string().contains("sqlite"));

        let (status, _, body) = render(StoreError::Conflict(secret.into()).into()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!body.to_string().contains("sqlite"));
    }

    #[tokio::test]
    async fn validation_errors_carry_their_field() {
        let (status, _, body) = render(ValidationError::new("n", "too many").into()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            serde_json::json!({"error": {"code": "invalid_request", "message": "too many", "field": "n"}})
        );
    }
}
