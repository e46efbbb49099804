//! The handlers, one module per resource, and the extractor wrappers that turn axum's
//! rejections into [`ApiError`]s.

pub mod images;
pub mod jobs;
pub mod seed;
pub mod templates;
pub mod usage;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::Json;
use kiln_shared::domain::JobId;
use serde_json::{json, Value};

use crate::{ApiError, AppState};

/// `Path`, rejected with the API's error body.
#[derive(Debug, FromRequestParts)]
#[from_request(via(Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `Query`, rejected with the API's error body.
#[derive(Debug, FromRequestParts)]
#[from_request(via(Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `GET /healthz`: `200` once the job store answers a cheap read, `503` if it does not.
pub async fn health(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state
        .store
        .get(&JobId::from(uuid::Uuid::nil()))
        .await
        .map_err(|e| ApiError::Unavailable(format!("health check: {e}")))?;
    Ok(Json(json!({"status": "ok"})))
}

/// Any path no route matches.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("route")
}

/// A known path with a method it does not serve.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
