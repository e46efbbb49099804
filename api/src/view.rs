//! What clients see of a job: no lease, no version; image URLs freshly signed and every URL
//! absolute.

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::http::header::HOST;
use axum::http::request::Parts;
use axum::http::uri::Authority;
use chrono::{DateTime, Utc};
use kiln_shared::domain::{Job, JobError, JobId, JobRequest, JobStatus, UserId, Webhook};
use serde::Serialize;

use crate::{ApiError, AppState};

/// The scheme and authority absolute URLs start with: `ApiConfig::public_url` if set, else
/// `http://{Host}` from the request (`http://localhost` if the request names no valid host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl(pub String);

impl BaseUrl {
    /// `path` (starting with `/`) made absolute; an absolute URL (a presigned S3 URL) is kept.
    pub fn absolute(&self, path: &str) -> String {
        if path.starts_with('/') {
            format!("{}{path}", self.0)
        } else {
            path.to_owned()
        }
    }

    /// The URL of a job.
    pub fn job(&self, id: &JobId) -> String {
        format!("{}/v1/jobs/{id}", self.0)
    }
}

impl FromRequestParts<AppState> for BaseUrl {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Infallible> {
        if let Some(url) = &state.config.public_url {
            return Ok(Self(url.trim_end_matches('/').to_owned()));
        }
        // Only a syntactically valid authority goes into URLs and the Location header.
        let host = parts
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<Authority>().ok())
            .or_else(|| parts.uri.authority().cloned())
            .filter(|a| a.as_str().find('@').is_none());
        Ok(Self(match host {
            Some(a) => format!("http://{a}"),
            None => "http://localhost".to_owned(),
        }))
    }
}

/// A stored image with a URL to fetch it.
#[derive(Debug, Clone, Serialize)]
pub struct ImageView {
    /// Blob key.
    pub key: String,
    /// Signed, expiring, absolute URL.
    pub url: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// MIME type.
    pub content_type: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Hex SHA-256.
    pub sha256: String,
}

/// Links of a job.
#[derive(Debug, Clone, Serialize)]
pub struct JobUrls {
    /// `GET` the job.
    #[serde(rename = "self")]
    pub self_: String,
    /// `POST` to cancel it.
    pub cancel: String,
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    /// Id.
    pub id: JobId,
    /// State.
    pub status: JobStatus,
    /// Owner.
    pub user_id: UserId,
    /// What was asked for.
    pub request: JobRequest,
    /// Provider that produced the images.
    pub provider: Option<String>,
    /// Every provider call made.
    pub attempts: Vec<kiln_shared::domain::Attempt>,
    /// How many times a worker claimed the job.
    pub runs: u32,
    /// Images, once `success`.
    pub images: Vec<ImageView>,
    /// Why it failed.
    pub error: Option<JobError>,
    /// Cost so far.
    pub cost_usd: f64,
    /// Webhook subscription.
    pub webhook: Option<Webhook>,
    /// Client's own data.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Accepted at.
    pub created_at: DateTime<Utc>,
    /// First claimed at.
    pub started_at: Option<DateTime<Utc>>,
    /// Ended at.
    pub completed_at: Option<DateTime<Utc>>,
    /// May be deleted after.
    pub expires_at: DateTime<Utc>,
    /// Links.
    pub urls: JobUrls,
}

impl JobView {
    /// Renders `job`, signing a URL for each of its images.
    pub async fn render(state: &AppState, base: &BaseUrl, job: Job) -> Result<Self, ApiError> {
        let mut images = Vec::with_capacity(job.images.len());
        for image in job.images {
            let url = state
                .blobs
                .signed_url(&image.key, state.config.url_ttl)
                .await?;
            images.push(ImageView {
                url: base.absolute(&url),
                key: image.key,
                width: image.width,
                height: image.height,
                content_type: image.content_type,
                bytes: image.bytes,
                sha256: image.sha256,
            });
        }
        let self_ = base.job(&job.id);
        Ok(Self {
            urls: JobUrls {
                cancel: format!("{self_}/cancel"),
                self_,
            },
            id: job.id,
            status: job.status,
            user_id: job.user_id,
            request: job.request,
            provider: job.provider,
            attempts: job.attempts,
            runs: job.runs,
            images,
            error: job.error,
            cost_usd: job.cost_usd,
            webhook: job.webhook,
            metadata: job.metadata,
            created_at: job.created_at,
            started_at: job.started_at,
            completed_at: job.completed_at,
            expires_at: job.expires_at,
        })
    }
}
