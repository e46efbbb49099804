//! `/v1/jobs`: submit, get, list, cancel.

use std::time::Duration;

use axum::extract::State;
use axum::http::header::LOCATION;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_shared::domain::{Cursor, Job, JobId, JobStatus, SubmitJob};
use kiln_shared::ports::{ListQuery, StoreError};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{ApiPath, ApiQuery};
use crate::body::HashedJsonBody;
use crate::error::ErrorBody;
use crate::intake::{self, Item, Submission};
use crate::prefer::{self, PREFERENCE_APPLIED};
use crate::submit::MAX_BATCH;
use crate::view::{BaseUrl, JobView};
use crate::{ApiError, AppState, Caller};

/// First pause between store reads while holding a `Prefer: wait` response.
const WAIT_POLL_FIRST: Duration = Duration::from_millis(25);
/// Longest pause between store reads while holding a response.
const WAIT_POLL_MAX: Duration = Duration::from_millis(500);
/// Default page size of the job list.
const DEFAULT_LIMIT: usize = 20;
/// Largest page size of the job list.
const MAX_LIMIT: usize = 100;
/// How many times a cancel re-reads the job after losing a race with a worker.
const CANCEL_TRIES: usize = 5;

/// `POST /v1/jobs`: `202` with the pending job, or, with `Prefer: wait=N`, `200` with the job
/// if it ends within N seconds (at most `max_wait`). With an `Idempotency-Key`, a retry with the
/// same body answers with the job the first request made.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    base: BaseUrl,
    headers: HeaderMap,
    body: HashedJsonBody<SubmitJob>,
) -> Result<Response, ApiError> {
    let wait = prefer::wait(&headers)?.map(|w| w.min(state.config.max_wait));
    let submission = Submission {
        route: "POST /v1/jobs",
        body_hash: &body.hash,
        bodies: vec![body.value],
        list: None,
    };
    let job = match intake::submit(&state, &caller, &headers, submission)
        .await?
        .pop()
    {
        Some(Item::Job(job)) => *job,
        Some(Item::Failed(e)) => return Err(e),
        None => return Err(ApiError::Internal("submit returned no job".into())),
    };
    let job = match wait {
        Some(w) if !w.is_zero() => hold(&state, job, w).await,
        _ => job,
    };
    let status = if job.status.is_terminal() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let location = base.job(&job.id);
    let view = JobView::render(&state, &base, job).await?;
    let mut response = (status, Json(view)).into_response();
    let out = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        out.insert(LOCATION, v);
    }
    if let Some(w) = wait.filter(|w| !w.is_zero()) {
        out.insert(
            PREFERENCE_APPLIED.clone(),
            HeaderValue::from_str(&format!("wait={}", w.as_secs()))
                .map_err(|e| ApiError::Internal(e.to_string()))?,
        );
    }
    Ok(response)
}

/// Body of `POST /v1/jobs/batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 to 100 job bodies, as for `POST /v1/jobs`.
    pub jobs: Vec<SubmitJob>,
}

/// One item's result in a batch answer: its job, or why it has none.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum BatchItem {
    /// Stored and enqueued.
    Accepted {
        /// Position in the request's `jobs`.
        index: usize,
        /// The job's id.
        id: JobId,
        /// The job's state.
        status: JobStatus,
    },
    /// Not stored.
    Failed {
        /// Position in the request's `jobs`.
        index: usize,
        /// Why.
        error: ErrorBody,
    },
}

/// Answer of `POST /v1/jobs/batch`.
#[derive(Debug, Serialize)]
pub struct BatchResponse {
    /// One result per job, in request order.
    pub data: Vec<BatchItem>,
}

/// `POST /v1/jobs/batch`: up to [`MAX_BATCH`] jobs, all validated before any is stored (a bad
/// one is a `400` naming `jobs[i].field`), then stored in one batch write and enqueued in
/// batches of ten; `202` with one result per job.
pub async fn batch(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: HashedJsonBody<BatchRequest>,
) -> Result<(StatusCode, Json<BatchResponse>), ApiError> {
    let n = body.value.jobs.len();
    if !(1..=MAX_BATCH).contains(&n) {
        return Err(ApiError::invalid(
            "jobs",
            format!("must hold 1 to {MAX_BATCH} jobs (got {n})"),
        ));
    }
    let submission = Submission {
        route: "POST /v1/jobs/batch",
        body_hash: &body.hash,
        bodies: body.value.jobs,
        list: Some("jobs"),
    };
    let items = intake::submit(&state, &caller, &headers, submission).await?;
    let data = items
        .into_iter()
        .enumerate()
        .map(|(index, item)| match item {
            Item::Job(job) => BatchItem::Accepted {
                index,
                id: job.id,
                status: job.status,
            },
            Item::Failed(e) => BatchItem::Failed {
                index,
                error: e.body(),
            },
        })
        .collect();
    Ok((StatusCode::ACCEPTED, Json(BatchResponse { data })))
}

/// Re-reads the job, with growing pauses, until it ends or `wait` passes. The job is already
/// accepted, so a store error here only ends the wait: the client gets its `202` rather than an
/// error that would make it submit again.
async fn hold(state: &AppState, mut job: Job, wait: Duration) -> Job {
    let deadline = Instant::now() + wait;
    let mut pause = WAIT_POLL_FIRST;
    while !job.status.is_terminal() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(WAIT_POLL_MAX);
        match state.store.get(&job.id).await {
            Ok(Some(latest)) => job = latest,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(job_id = %job.id, error = %e, "stopped waiting for the job");
                break;
            }
        }
    }
    job
}

/// `GET /v1/jobs/{id}`.
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    base: BaseUrl,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = owned_job(&state, &caller, &id).await?;
    Ok(Json(JobView::render(&state, &base, job).await?))
}

/// The caller's job with this id. An id that is not a UUID, a job that does not exist and
/// another user's job all answer the same `404`, so ids reveal nothing.
async fn owned_job(state: &AppState, caller: &Caller, id: &str) -> Result<Job, ApiError> {
    let id: JobId = id.parse().map_err(|_| ApiError::NotFound("job"))?;
    state
        .store
        .get(&id)
        .await?
        .filter(|j| j.user_id == caller.user_id)
        .ok_or(ApiError::NotFound("job"))
}

/// A page of jobs.
#[derive(Debug, Serialize)]
pub struct JobList {
    /// The jobs, newest first.
    pub data: Vec<JobView>,
    /// Whether another page follows.
    pub has_more: bool,
    /// Pass as `cursor` to get the next page.
    pub next_cursor: Option<String>,
}

/// `GET /v1/jobs?status=&limit=&cursor=`: the caller's jobs, newest first. Empty values count
/// as absent; unknown or repeated parameters are refused.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    base: BaseUrl,
    ApiQuery(params): ApiQuery<Vec<(String, String)>>,
) -> Result<Json<JobList>, ApiError> {
    let query = list_query(&params)?;
    let page = state.store.list(&caller.user_id, &query).await?;
    let mut data = Vec::with_capacity(page.jobs.len());
    for job in page.jobs {
        data.push(JobView::render(&state, &base, job).await?);
    }
    Ok(Json(JobList {
        data,
        has_more: page.next.is_some(),
        next_cursor: page.next.map(|c| c.encode()),
    }))
}

fn list_query(params: &[(String, String)]) -> Result<ListQuery, ApiError> {
    let mut query = ListQuery {
        status: None,
        limit: DEFAULT_LIMIT,
        cursor: None,
    };
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in params {
        if seen.contains(&name.as_str()) {
            return Err(ApiError::invalid(name, "must be given at most once"));
        }
        seen.push(name);
        match name.as_str() {
            "status" | "limit" | "cursor" if value.is_empty() => {}
            "status" => {
                query.status = Some(JobStatus::parse(value).ok_or_else(|| {
                    let names: Vec<&str> = JobStatus::ALL.iter().map(|s| s.as_str()).collect();
                    ApiError::invalid(
                        "status",
                        format!("must be one of {} (got {value:?})", names.join(", ")),
                    )
                })?);
            }
            "limit" => {
                query.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "limit",
                            format!("must be a whole number from 1 to {MAX_LIMIT}"),
                        )
                    })?;
            }
            "cursor" => {
                query.cursor = Some(Cursor::decode(value).ok_or_else(|| {
                    ApiError::invalid("cursor", "is not a cursor this API handed out")
                })?);
            }
            other => {
                return Err(ApiError::invalid(
                    other,
                    "unknown query parameter; expected status, limit or cursor",
                ))
            }
        }
    }
    Ok(query)
}

/// `POST /v1/jobs/{id}/cancel`: a pending or running job becomes `canceled`; a job that has
/// already ended is a `409` with code `job_finished`.
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    base: BaseUrl,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobView>, ApiError> {
    for _ in 0..CANCEL_TRIES {
        let job = owned_job(&state, &caller, &id).await?;
        let canceled = job.cancel(state.clock.now()).map_err(|e| match e {
            kiln_shared::domain::TransitionError::Finished(s) => ApiError::JobFinished(s),
            other => ApiError::Conflict(other.to_string()),
        })?;
        match state.store.update(&canceled).await {
            Ok(()) => {
                tracing::info!(job_id = %canceled.id, "job canceled");
                return Ok(Json(JobView::render(&state, &base, canceled).await?));
            }
            // A worker moved the job meanwhile: read it again and decide anew.
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Conflict(
        "the job kept changing while it was being canceled; try again".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn field(q: &[(&str, &str)]) -> Option<String> {
        match list_query(&pairs(q)) {
            Err(ApiError::InvalidRequest { field, .. }) => field,
            other => panic!("{q:?}: {other:?}"),
        }
    }

    #[test]
    fn list_parameters_are_checked_and_named() {
        let q = list_query(&pairs(&[
            ("status", "pending"),
            ("limit", "5"),
            ("cursor", ""),
        ]))
        .expect("valid");
        assert_eq!(q.status, Some(JobStatus::Pending));
        assert_eq!(q.limit, 5);
        assert!(q.cursor.is_none());
        assert_eq!(list_query(&[]).expect("valid").limit, DEFAULT_LIMIT);
        assert_eq!(field(&[("limit", "0")]).as_deref(), Some("limit"));
        assert_eq!(field(&[("limit", "101")]).as_deref(), Some("limit"));
        assert_eq!(field(&[("limit", "-1")]).as_deref(), Some("limit"));
        assert_eq!(field(&[("status", "done")]).as_deref(), Some("status"));
        assert_eq!(field(&[("cursor", "nope")]).as_deref(), Some("cursor"));
        assert_eq!(field(&[("page", "2")]).as_deref(), Some("page"));
        assert_eq!(
            field(&[("limit", "2"), ("limit", "3")]).as_deref(),
            Some("limit")
        );
    }
}
