//! The seed design's routes, kept for its clients: `POST /api/generate/image` and
//! `POST /api/generate/batch`, over the same submit pipeline as `/v1/jobs`, answering
//! `{"success": true, "data": ...}` and `{"success": false, "error": {...}}`.

use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use kiln_shared::domain::{Job, JobId, JobStatus, SubmitJob};
use serde::{Deserialize, Serialize};

use crate::body::HashedJsonBody;
use crate::error::ErrorBody;
use crate::intake::{self, Item, Submission};
use crate::submit::MAX_BATCH;
use crate::{ApiError, AppState, Caller};

/// The seed's success envelope.
#[derive(Debug, Serialize)]
pub struct Success<T> {
    /// Always `true`.
    pub success: bool,
    /// The payload.
    pub data: T,
}

/// A submitted job, in the seed's words.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Work {
    /// The job id.
    pub work_id: JobId,
    /// Its state.
    pub status: JobStatus,
}

impl From<&Job> for Work {
    fn from(j: &Job) -> Self {
        Self {
            work_id: j.id,
            status: j.status,
        }
    }
}

/// Body of `POST /api/generate/batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// One `/v1/jobs` body per job.
    pub items: Vec<SubmitJob>,
}

/// `POST /api/generate/image`.
pub async fn image(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: HashedJsonBody<SubmitJob>,
) -> Result<(StatusCode, Json<Success<Work>>), ApiError> {
    let submission = Submission {
        route: "POST /api/generate/image",
        body_hash: &body.hash,
        bodies: vec![body.value],
        list: None,
    };
    let job = match intake::submit(&state, &caller, &headers, submission)
        .await?
        .pop()
    {
        Some(Item::Job(job)) => job,
        Some(Item::Failed(e)) => return Err(e),
        None => return Err(ApiError::Internal("submit returned no job".into())),
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(Success {
            success: true,
            data: Work::from(&*job),
        }),
    ))
}

/// `POST /api/generate/batch`: 1 to 100 items, all validated before any is stored, all stored
/// or none.
pub async fn batch(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: HashedJsonBody<BatchBody>,
) -> Result<(StatusCode, Json<Success<Vec<Work>>>), ApiError> {
    let n = body.value.items.len();
    if !(1..=MAX_BATCH).contains(&n) {
        return Err(ApiError::invalid(
            "items",
            format!("must hold 1 to {MAX_BATCH} items (got {n})"),
        ));
    }
    let submission = Submission {
        route: "POST /api/generate/batch",
        body_hash: &body.hash,
        bodies: body.value.items,
        list: Some("items"),
    };
    let mut works = Vec::with_capacity(n);
    for item in intake::submit(&state, &caller, &headers, submission).await? {
        match item {
            Item::Job(job) => works.push(Work::from(&*job)),
            Item::Failed(e) => return Err(e),
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Success {
            success: true,
            data: works,
        }),
    ))
}

#[derive(Serialize)]
struct Failure<'a> {
    success: bool,
    error: &'a ErrorBody,
}

/// Re-renders any [`ApiError`] answered on a seed route (by a handler, an extractor or the
/// method fallback) in the seed's envelope, keeping status and headers.
pub async fn envelope(response: Response) -> Response {
    let Some(error) = response.extensions().get::<ErrorBody>().cloned() else {
        return response;
    };
    let Ok(bytes) = serde_json::to_vec(&Failure {
        success: false,
        error: &error,
    }) else {
        return response;
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(bytes))
}
