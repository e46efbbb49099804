//! `GET /v1/images/{*key}?expires=&sig=`: images of the local backend behind HMAC-signed,
//! expiring URLs. Without a URL signer (the AWS backend hands out presigned S3 URLs) the route
//! answers `404`.

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kiln_shared::ports::BlobError;

use super::{ApiPath, ApiQuery};
use crate::{ApiError, AppState};

/// Serves the image if the URL's signature holds and has not expired.
pub async fn get(
    State(state): State<AppState>,
    ApiPath(key): ApiPath<String>,
    ApiQuery(params): ApiQuery<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let Some(signer) = &state.url_signer else {
        return Err(ApiError::NotFound("route"));
    };
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let expires = param("expires")
        .and_then(|e| e.parse::<i64>().ok())
        .ok_or(ApiError::InvalidSignature)?;
    let sig = param("sig").ok_or(ApiError::InvalidSignature)?;
    let now = state.clock.now().timestamp();
    if !signer.verify(&key, expires, sig, now) {
        return Err(ApiError::InvalidSignature);
    }
    let blob = match state.blobs.get(&key).await {
        Ok(Some(blob)) => blob,
        Ok(None) | Err(BlobError::InvalidKey(_)) => return Err(ApiError::NotFound("image")),
        Err(e) => return Err(e.into()),
    };
    let content_type = HeaderValue::from_str(&blob.content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    let max_age = expires.saturating_sub(now).max(0);
    let cache = HeaderValue::from_str(&format!("private, max-age={max_age}"))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((
        StatusCode::OK,
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, cache),
            (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ],
        blob.bytes,
    )
        .into_response())
}
