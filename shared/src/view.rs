//! What clients see of a job, in the API's answers and in webhook payloads alike: no lease, no
//! version, no pending event marks; image URLs freshly signed and every URL absolute.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::{
    Attempt, Job, JobError, JobId, JobRequest, JobStatus, UserId, Webhook, WebhookDelivery,
};
use crate::ports::{BlobError, BlobStore};

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

/// A job as clients see it.
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
    pub attempts: Vec<Attempt>,
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
    /// The last webhook delivery attempts, oldest first.
    pub webhook_deliveries: Vec<WebhookDelivery>,
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

/// `path` (starting with `/`) made absolute under `base` (`http://host`, no trailing slash); an
/// absolute URL (a presigned S3 URL) is kept.
pub fn absolute(base: &str, path: &str) -> String {
    if path.starts_with('/') {
        format!("{base}{path}")
    } else {
        path.to_owned()
    }
}

impl JobView {
    /// Renders `job`, signing a URL valid for `url_ttl` for each of its images; relative URLs
    /// are made absolute under `base`.
    pub async fn render(
        blobs: &dyn BlobStore,
        url_ttl: Duration,
        base: &str,
        job: Job,
    ) -> Result<Self, BlobError> {
        let mut images = Vec::with_capacity(job.images.len());
        for image in job.images {
            let url = blobs.signed_url(&image.key, url_ttl).await?;
            images.push(ImageView {
                url: absolute(base, &url),
                key: image.key,
                width: image.width,
                height: image.height,
                content_type: image.content_type,
                bytes: image.bytes,
                sha256: image.sha256,
            });
        }
        let self_ = format!("{base}/v1/jobs/{}", job.id);
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
            webhook_deliveries: job.webhook_deliveries,
            metadata: job.metadata,
            created_at: job.created_at,
            started_at: job.started_at,
            completed_at: job.completed_at,
            expires_at: job.expires_at,
        })
    }
}
