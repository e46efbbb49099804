//! The OpenAPI 3.1 document of the API, generated with utoipa and served at `/openapi.json`,
//! and `/docs`, a self-contained page that renders it (no assets from a CDN, so it works
//! offline and behind strict content security policies).
//!
//! The schemas here describe the wire format; the handlers' own types stay free of OpenAPI
//! attributes. A test checks that the documented request fields are exactly those the
//! handlers accept, and another that every route of the router is documented.

use std::collections::BTreeMap;

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{Html, IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// Every route of the router, as (method, OpenAPI path); the document must list each.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs"),
    ("post", "/v1/jobs/batch"),
    ("get", "/v1/jobs/{id}"),
    ("post", "/v1/jobs/{id}/cancel"),
    ("get", "/v1/images/{key}"),
    ("get", "/v1/usage"),
    ("post", "/v1/templates"),
    ("get", "/v1/templates"),
    ("get", "/v1/templates/{name}"),
    ("delete", "/v1/templates/{name}"),
    ("get", "/healthz"),
    ("get", "/openapi.json"),
    ("get", "/docs"),
    ("post", "/api/generate/image"),
    ("post", "/api/generate/batch"),
];

// The patterns below refuse what `SubmitJob::validate` refuses: control characters other than
// tab, line feed and carriage return, and (for the prompt) text that is all blank.

/// A job request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SubmitJob)]
pub struct SubmitJobDoc {
    /// What to draw; at least one non-blank character.
    #[schema(
        min_length = 1,
        max_length = 4000,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*[^\s\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F][^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    pub prompt: String,
    /// What to avoid.
    #[schema(
        max_length = 2000,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    pub negative_prompt: Option<String>,
    /// How many images.
    #[schema(minimum = 1, maximum = 4)]
    pub n: Option<i64>,
    /// Image size.
    pub size: Option<SizeDoc>,
    /// A style: the style fragment of the template of that name, else a label.
    #[schema(
        max_length = 64,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    pub style: Option<String>,
    /// A character: the character fragment of the template of that name, else a label.
    #[schema(
        max_length = 64,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    pub character: Option<String>,
    /// A template to expand into the prompt (yours, else a global one); unknown is a `400`.
    #[schema(max_length = 64, pattern = "^[A-Za-z0-9._-]*$")]
    pub template: Option<String>,
    /// Same prompt and seed, same image (built-in renderer).
    #[schema(minimum = 0)]
    pub seed: Option<u64>,
    /// Quality.
    pub quality: Option<QualityDoc>,
    /// Your own data, returned with the job: at most 32 keys and 4 KiB as JSON.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<BTreeMap<String, serde_json::Value>>,
    /// Where to POST events about the job.
    pub webhook: Option<WebhookDoc>,
}

/// A webhook subscription.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = WebhookRequest)]
pub struct WebhookDoc {
    /// `https` URL of the subscriber; it must not resolve to a private or loopback address.
    #[schema(max_length = 2048)]
    pub url: String,
    /// Events wanted; default `["completed"]`.
    #[schema(min_items = 1)]
    pub events: Option<Vec<WebhookEventDoc>>,
}

/// A webhook event kind.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = WebhookEvent)]
pub enum WebhookEventDoc {
    /// The job started running.
    Running,
    /// The job ended.
    Completed,
}

/// An allowed image size.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = ImageSize)]
pub enum SizeDoc {
    /// 256 x 256.
    #[serde(rename = "256x256")]
    S256,
    /// 512 x 512.
    #[serde(rename = "512x512")]
    S512,
    /// 768 x 768.
    #[serde(rename = "768x768")]
    S768,
    /// 1024 x 1024 (default).
    #[serde(rename = "1024x1024")]
    S1024,
    /// 1024 x 1536.
    #[serde(rename = "1024x1536")]
    P1024x1536,
    /// 1536 x 1024.
    #[serde(rename = "1536x1024")]
    L1536x1024,
    /// 1024 x 1792.
    #[serde(rename = "1024x1792")]
    P1024x1792,
    /// 1792 x 1024.
    #[serde(rename = "1792x1024")]
    L1792x1024,
}

/// Requested quality.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = Quality)]
pub enum QualityDoc {
    /// The provider's default.
    Standard,
    /// The provider's best.
    High,
}

/// A job's state.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = JobStatus)]
pub enum StatusDoc {
    /// Waiting for a worker.
    Pending,
    /// A worker is on it.
    Running,
    /// Images stored.
    Success,
    /// Ended without images.
    Failed,
    /// Canceled by its owner.
    Canceled,
}

/// A job.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Job)]
pub struct JobDoc {
    /// UUID v7.
    #[schema(format = Uuid)]
    pub id: String,
    /// State.
    pub status: StatusDoc,
    /// Owner.
    pub user_id: String,
    /// The request as validated, with templates expanded into `prompt`.
    #[schema(value_type = Object)]
    pub request: serde_json::Value,
    /// Provider that produced the images.
    pub provider: Option<String>,
    /// Every provider call made.
    #[schema(value_type = Vec<Object>)]
    pub attempts: Vec<serde_json::Value>,
    /// Times a worker claimed the job.
    #[schema(minimum = 0)]
    pub runs: u32,
    /// Images, once `success`.
    pub images: Vec<ImageDoc>,
    /// Why it failed.
    #[schema(value_type = Option<Object>)]
    pub error: Option<serde_json::Value>,
    /// Cost so far, in US dollars.
    pub cost_usd: f64,
    /// Webhook subscription.
    #[schema(value_type = Option<Object>)]
    pub webhook: Option<serde_json::Value>,
    /// Your metadata.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// Accepted at.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// First claimed at.
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Ended at.
    pub completed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// May be deleted after.
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// Links.
    #[schema(value_type = Object)]
    pub urls: serde_json::Value,
}

/// A stored image.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Image)]
pub struct ImageDoc {
    /// Blob key.
    pub key: String,
    /// Signed, expiring URL.
    pub url: String,
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
    /// MIME type.
    pub content_type: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Hex SHA-256.
    pub sha256: String,
}

/// A page of jobs.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = JobList)]
pub struct JobListDoc {
    /// Newest first.
    pub data: Vec<JobDoc>,
    /// Whether another page follows.
    pub has_more: bool,
    /// Pass as `cursor` for the next page.
    pub next_cursor: Option<String>,
}

/// Body of `POST /v1/jobs/batch`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = BatchRequest)]
pub struct BatchRequestDoc {
    /// 1 to 100 jobs.
    #[schema(min_items = 1, max_items = 100)]
    pub jobs: Vec<SubmitJobDoc>,
}

/// One job's result in a batch: `id` and `status`, or `error`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = BatchItem)]
pub struct BatchItemDoc {
    /// Position in the request's `jobs`.
    pub index: usize,
    /// The job's id, if it was stored.
    #[schema(format = Uuid)]
    pub id: Option<String>,
    /// The job's state, if it was stored.
    pub status: Option<StatusDoc>,
    /// Why it was not stored.
    pub error: Option<ErrorDoc>,
}

/// Answer of `POST /v1/jobs/batch`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = BatchResponse)]
pub struct BatchResponseDoc {
    /// One result per job, in request order.
    pub data: Vec<BatchItemDoc>,
}

/// Usage by month and provider.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Usage)]
pub struct UsageDoc {
    /// Rows by month and provider.
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<serde_json::Value>,
    /// Job counts by state.
    #[schema(value_type = Object)]
    pub jobs_by_status: serde_json::Value,
    /// Total cost in US dollars.
    pub total_cost_usd: f64,
    /// Whether only the newest jobs were counted.
    pub truncated: bool,
}

/// A template as sent.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewTemplate)]
pub struct NewTemplateDoc {
    /// Unique among your templates.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._-]+$")]
    pub name: String,
    /// Put before the prompt when a request's `character` (or `template`) names this template.
    #[schema(max_length = 1000, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub character: Option<String>,
    /// Put after the prompt when a request's `style` (or `template`) names this template.
    #[schema(max_length = 1000, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub style: Option<String>,
    /// Put first when a request's `template` names this template.
    #[schema(max_length = 1000, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub prompt_prefix: Option<String>,
    /// Put last when a request's `template` names this template.
    #[schema(max_length = 1000, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub prompt_suffix: Option<String>,
}

/// A stored template.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Template)]
pub struct TemplateDoc {
    /// Name.
    pub name: String,
    /// `user` (yours) or `global`.
    #[schema(pattern = "^(user|global)$")]
    pub scope: String,
    /// Character fragment.
    pub character: Option<String>,
    /// Style fragment.
    pub style: Option<String>,
    /// Prefix.
    pub prompt_prefix: Option<String>,
    /// Suffix.
    pub prompt_suffix: Option<String>,
    /// Made at.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// A list of templates.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = TemplateList)]
pub struct TemplateListDoc {
    /// Yours, then the global ones.
    pub data: Vec<TemplateDoc>,
}

/// What went wrong.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = ErrorDetail)]
pub struct ErrorDoc {
    /// Stable code: `invalid_request`, `unauthorized`, `invalid_signature`, `not_found`,
    /// `method_not_allowed`, `job_finished`, `conflict`, `idempotency_conflict`,
    /// `idempotency_in_progress`, `payload_too_large`, `unsupported_media_type`,
    /// `rate_limited`, `internal`, `unavailable`.
    pub code: String,
    /// For people.
    pub message: String,
    /// The field, header or query parameter at fault.
    pub field: Option<String>,
}

/// An error.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorEnvelopeDoc {
    /// The error.
    pub error: ErrorDoc,
}

/// The seed routes' error.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = SeedError)]
pub struct SeedErrorDoc {
    /// Always `false`.
    pub success: bool,
    /// The error.
    pub error: ErrorDoc,
}

/// A job in the seed's words.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Work)]
pub struct WorkDoc {
    /// The job id.
    #[schema(format = Uuid)]
    pub work_id: String,
    /// Its state.
    pub status: StatusDoc,
}

/// The seed's answer to one job.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = SeedWork)]
pub struct SeedWorkDoc {
    /// Always `true`.
    pub success: bool,
    /// The job.
    pub data: WorkDoc,
}

/// The seed's answer to a batch.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = SeedWorks)]
pub struct SeedWorksDoc {
    /// Always `true`.
    pub success: bool,
    /// The jobs, in order.
    pub data: Vec<WorkDoc>,
}

/// Body of `POST /api/generate/batch`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SeedBatch)]
pub struct SeedBatchDoc {
    /// 1 to 100 jobs.
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<SubmitJobDoc>,
}

/// Health.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Health)]
pub struct HealthDoc {
    /// `ok`.
    pub status: String,
}

#[allow(dead_code)]
mod paths {
    use super::*;

    /// Submit a job.
    ///
    /// Validates the request, stores the pending job and enqueues it. Counts against the
    /// caller's rate limit and cap on jobs in flight.
    #[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
        request_body = SubmitJobDoc,
        params(
            ("Idempotency-Key" = Option<String>, Header, description = "1-255 printable ASCII characters: a retry with the same key and body answers with the same job; another body is `409 idempotency_conflict`; kept 24 h", max_length = 255, pattern = r"^[\x20-\x7E]+$"),
            ("Prefer" = Option<String>, Header, description = "`wait=N` (N <= 25): hold the answer until the job ends or N seconds pass"),
        ),
        responses(
            (status = 200, description = "The job ended within `Prefer: wait`", body = JobDoc, headers(
                ("Location" = String, description = "The job's URL"),
                ("Preference-Applied" = String, description = "`wait=N` as honoured"))),
            (status = 202, description = "Accepted: the pending (or running) job", body = JobDoc, headers(
                ("Location" = String, description = "The job's URL"),
                ("Preference-Applied" = String, description = "`wait=N` as honoured, when asked"))),
            (status = 400, description = "Invalid request; `field` names what to fix", body = ErrorEnvelopeDoc),
            (status = 401, description = "No valid API key or JWT", body = ErrorEnvelopeDoc),
            (status = 409, description = "`idempotency_conflict` or `idempotency_in_progress`", body = ErrorEnvelopeDoc,
                headers(("Retry-After" = u64, description = "Seconds, for `idempotency_in_progress`"))),
            (status = 413, description = "Body too large", body = ErrorEnvelopeDoc),
            (status = 415, description = "Not `application/json`", body = ErrorEnvelopeDoc),
            (status = 429, description = "`rate_limited`: too many requests or jobs in flight", body = ErrorEnvelopeDoc,
                headers(("Retry-After" = u64, description = "Seconds to wait"))),
            (status = 503, description = "A backend is down; retry", body = ErrorEnvelopeDoc),
        ))]
    fn create_job() {}

    /// Submit up to 100 jobs.
    ///
    /// All are validated before any is stored (`field` names `jobs[i].field`); then they are
    /// written in one batch and enqueued in batches of ten. Counts one request against the
    /// rate limit and every job against the cap on jobs in flight.
    #[utoipa::path(post, path = "/v1/jobs/batch", tag = "jobs",
        request_body = BatchRequestDoc,
        params(
            ("Idempotency-Key" = Option<String>, Header, description = "As for `POST /v1/jobs`", max_length = 255, pattern = r"^[\x20-\x7E]+$"),
        ),
        responses(
            (status = 202, description = "One result per job", body = BatchResponseDoc),
            (status = 400, description = "Invalid request", body = ErrorEnvelopeDoc),
            (status = 401, description = "Unauthenticated", body = ErrorEnvelopeDoc),
            (status = 409, description = "Idempotency conflict or in progress", body = ErrorEnvelopeDoc,
                headers(("Retry-After" = u64, description = "Seconds"))),
            (status = 413, description = "Body too large", body = ErrorEnvelopeDoc),
            (status = 415, description = "Not JSON", body = ErrorEnvelopeDoc),
            (status = 429, description = "Rate limited", body = ErrorEnvelopeDoc,
                headers(("Retry-After" = u64, description = "Seconds to wait"))),
            (status = 503, description = "A backend is down", body = ErrorEnvelopeDoc),
        ))]
    fn create_batch() {}

    /// Your jobs, newest first.
    #[utoipa::path(get, path = "/v1/jobs", tag = "jobs",
        params(
            ("status" = Option<StatusDoc>, Query, description = "Only jobs in this state"),
            ("limit" = Option<u32>, Query, description = "Page size, 1-100 (default 20)", minimum = 1, maximum = 100),
            ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ),
        responses(
            (status = 200, description = "A page", body = JobListDoc),
            (status = 400, description = "Bad parameter", body = ErrorEnvelopeDoc),
            (status = 401, description = "Unauthenticated", body = ErrorEnvelopeDoc),
            (status = 503, description = "A backend is down", body = ErrorEnvelopeDoc),
        ))]
    fn list_jobs() {}

    /// A job, with fresh signed image URLs. Another user's job is `404`.
    #[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
        params(("id" = String, Path, description = "Job id")),
        responses(
            (status = 200, description = "The job", body = JobDoc),
            (status = 400, description = "Bad path", body = ErrorEnvelopeDoc),
            (status = 401, description = "Unauthenticated", body = ErrorEnvelopeDoc),
            (status = 404, description = "No such job of yours", body = ErrorEnvelopeDoc),
            (status = 503, description = "A backend is down", body = ErrorEnvelopeDoc),
        ))]
    fn get_job() {}

    /// Cancel a pending or running job.
    #[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
        params(("id" = String, Path, description = "Job id")),
        responses(
            (status = 200, description = "The canceled job", body = JobDoc),
            (status = 400, description = "Bad path", body = ErrorEnvelopeDoc),
            (status = 401, description = "Unauthenticated", body = ErrorEnvelopeDoc),
            (status = 404, description = "No such job of yours", body = ErrorEnvelopeDoc),
            (status = 409, description = "`job_finished`, or the job kept changing", body = ErrorEnvelopeDoc),
            (status = 503, description = "A backend is down", body = ErrorEnvelopeDoc),
        ))]
    fn cancel_job() {}

    /// Image bytes behind a signed, expiring URL (local backend).
    #[utoipa::path(get, path = "/v1/images/{key}", tag = "images", security(()),
        params(
            ("key" = String, Path, description = "Image key, as in a job's `images[].key`"),
            ("expires" = Option<i64>, Query, description = "Expiry, Unix seconds (from the signed URL)"),
            ("sig" = Option<String>, Query, description = "Signature (from the signed URL)"),
        ),
        responses(
            (status = 200, description = "The image", content_type = "image/png", body = Vec<u8>),
            (status = 400, description = "Bad path or query", body = ErrorEnvelopeDoc),
            (status = 403, description = "`invalid_signature`: missing, forged or expired", body = ErrorEnvelopeDoc),
            (status = 404, description = "No such image", body = ErrorEnvelopeDoc),
            (status = 503, description = "A backend is down", body = ErrorEnvelopeDoc),
        ))]
    fn get_image() {}

    /// Your jobs, images and cost by provider and month.
    #[utoipa::path(get, path = "/v1/usage", tag = "usage",
        responses(
            (status = 200, description = "Usage", body = UsageDoc),
            (status = 400, description = "Unknown parameter", body = ErrorEnvelopeDoc),
            (status = 401, description = "Unauthenticated", body = ErrorEnvelopeDoc),
            (status = 503, description = "A backend is down", body = ErrorEnvelopeDoc),
        ))]
    fn get_usage() {}

    /// Create a template of yours.
    #[utoipa::path(post, path = "/v1/templates", tag = "templates",
        request_body = NewTemplateDoc,
        responses(
            (status = 201, description = "Created", body = TemplateDoc,
                headers(("Location" = String, description = "The template's URL"))),
            (status = 400, description = "Invalid template", body = ErrorEnvelopeDoc),
            (status = 401, description = "Unauthenticated", body = ErrorEnvelopeDoc),
            (status = 409, description = "You have one of that name", body = ErrorEnvelopeDoc),
            (status = 413, description = "Body too large", body = ErrorEnvelopeDoc),
            (status = 415, description = "Not JSON", body = ErrorEnvelopeDoc),
            (status = 503, description = "A backend is down", body = ErrorEnvelopeDoc),
        ))]
    fn create_template() {}

    /// Your templates, then the global ones.
    #[utoipa::path(get, path = "/v1/templates", tag = "templates",
        responses(
            (status = 200, description = "Templates", body = TemplateListDoc),
            (status = 401, description = "Unauthenticated", body = ErrorEnvelopeDoc),
            (status = 503, description = "A backend is down", body = ErrorEnvelopeDoc),
        ))]
    fn list_templates() {}

    /// A template: yours of that name, else the global one.
    #[utoipa::path(get, path = "/v1/templates/{name}", tag = "templates",
        params(("name" = String, Path, description = "Template name")),
        responses(
            (status = 200, description = "The template", body = TemplateDoc),
            (status = 400, description = "Bad path", body = ErrorEnvelopeDoc),
            (status = 401, description = "Unauthenticated", body = ErrorEnvelopeDoc),
            (status = 404, description = "No such template", body = ErrorEnvelopeDoc),
            (status = 503, description = "A backend is down", body = ErrorEnvelopeDoc),
        ))]
    fn get_template() {}

    /// Delete a template of yours (global ones are the operator's).
    #[utoipa::path(delete, path = "/v1/templates/{name}", tag = "templates",
        params(("name" = String, Path, description = "Template name")),
        responses(
            (status = 204, description = "Deleted"),
            (status = 400, description = "Bad path", body = ErrorEnvelopeDoc),
            (status = 401, description = "Unauthenticated", body = ErrorEnvelopeDoc),
            (status = 404, description = "No such template of yours", body = ErrorEnvelopeDoc),
            (status = 503, description = "A backend is down", body = ErrorEnvelopeDoc),
        ))]
    fn delete_template() {}

    /// `200` once the job store answers.
    #[utoipa::path(get, path = "/healthz", tag = "meta", security(()),
        responses(
            (status = 200, description = "Healthy", body = HealthDoc),
            (status = 503, description = "The job store does not answer", body = ErrorEnvelopeDoc),
        ))]
    fn health() {}

    /// This document.
    #[utoipa::path(get, path = "/openapi.json", tag = "meta", security(()),
        responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
    fn openapi_json() {}

    /// A page that renders this document.
    #[utoipa::path(get, path = "/docs", tag = "meta", security(()),
        responses((status = 200, description = "HTML", content_type = "text/html", body = String)))]
    fn docs_page() {}

    /// The seed design's submit route.
    #[utoipa::path(post, path = "/api/generate/image", tag = "seed",
        request_body = SubmitJobDoc,
        params(
            ("Idempotency-Key" = Option<String>, Header, description = "As for `POST /v1/jobs`", max_length = 255, pattern = r"^[\x20-\x7E]+$"),
        ),
        responses(
            (status = 202, description = "Accepted", body = SeedWorkDoc),
            (status = 400, description = "Invalid request", body = SeedErrorDoc),
            (status = 401, description = "Unauthenticated", body = SeedErrorDoc),
            (status = 409, description = "Idempotency conflict or in progress", body = SeedErrorDoc,
                headers(("Retry-After" = u64, description = "Seconds"))),
            (status = 413, description = "Body too large", body = SeedErrorDoc),
            (status = 415, description = "Not JSON", body = SeedErrorDoc),
            (status = 429, description = "Rate limited", body = SeedErrorDoc,
                headers(("Retry-After" = u64, description = "Seconds to wait"))),
            (status = 503, description = "A backend is down", body = SeedErrorDoc),
        ))]
    fn seed_image() {}

    /// The seed design's batch route: all stored or none.
    #[utoipa::path(post, path = "/api/generate/batch", tag = "seed",
        request_body = SeedBatchDoc,
        params(
            ("Idempotency-Key" = Option<String>, Header, description = "As for `POST /v1/jobs`", max_length = 255, pattern = r"^[\x20-\x7E]+$"),
        ),
        responses(
            (status = 202, description = "Accepted", body = SeedWorksDoc),
            (status = 400, description = "Invalid request", body = SeedErrorDoc),
            (status = 401, description = "Unauthenticated", body = SeedErrorDoc),
            (status = 409, description = "Idempotency conflict or in progress", body = SeedErrorDoc,
                headers(("Retry-After" = u64, description = "Seconds"))),
            (status = 413, description = "Body too large", body = SeedErrorDoc),
            (status = 415, description = "Not JSON", body = SeedErrorDoc),
            (status = 429, description = "Rate limited", body = SeedErrorDoc,
                headers(("Retry-After" = u64, description = "Seconds to wait"))),
            (status = 503, description = "A backend is down", body = SeedErrorDoc),
        ))]
    fn seed_batch() {}
}

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`kiln_...`) or, where configured, a JWT (HS256 or RS256)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document's source.
#[derive(OpenApi)]
#[openapi(
    info(title = "Kiln", description = "Asynchronous image generation: submit a prompt, get a job, poll it or hold the request open with `Prefer: wait`."),
    paths(
        paths::create_job, paths::create_batch, paths::list_jobs, paths::get_job,
        paths::cancel_job, paths::get_image, paths::get_usage, paths::create_template,
        paths::list_templates, paths::get_template, paths::delete_template, paths::health,
        paths::openapi_json, paths::docs_page, paths::seed_image, paths::seed_batch,
    ),
    modifiers(&Bearer),
    security(("bearer" = [])),
    tags(
        (name = "jobs", description = "Submit, read, list and cancel jobs"),
        (name = "templates", description = "Prompt templates"),
        (name = "images", description = "Signed image URLs"),
        (name = "usage", description = "Cost and counts"),
        (name = "meta", description = "Health and this document"),
        (name = "seed", description = "The original design's routes"),
    ),
)]
pub struct ApiDoc;

/// The document, as JSON, with the constraints utoipa's attributes cannot state.
pub fn spec() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let props = &mut doc["components"]["schemas"]["SubmitJob"]["properties"];
    if let Some(m) = props["metadata"].as_object_mut() {
        m.insert("maxProperties".into(), 32.into());
    }
    // The whole u64 range, as exact JSON integers (utoipa states u64 as int64).
    props["seed"] = serde_json::json!({
        "type": ["integer", "null"],
        "minimum": 0,
        "maximum": u64::MAX,
        "description": "Same prompt and seed, same image (built-in renderer).",
    });
    doc
}

/// `GET /openapi.json`.
pub async fn document() -> Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let body = DOC.get_or_init(|| spec().to_string()).clone();
    ([(CONTENT_TYPE, "application/json")], body).into_response()
}

/// `GET /docs`: a page that fetches `/openapi.json` and renders every operation with its
/// parameters, bodies and answers.
pub async fn docs() -> Response {
    (
        [(CACHE_CONTROL, "public, max-age=300")],
        Html(include_str!("docs.html")),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_shared::domain::{NewTemplate, SubmitJob};

    /// The fields serde lists as expected when it refuses an unknown one.
    fn accepted_fields<T: serde::de::DeserializeOwned + std::fmt::Debug>() -> Vec<String> {
        let err = serde_json::from_str::<T>(r#"{"\u0000unknown": 1}"#)
            .unwrap_err()
            .to_string();
        let list = err.split("expected one of ").nth(1).unwrap_or_default();
        let mut fields: Vec<String> = list
            .split(", ")
            .map(|f| f.trim().trim_matches(|c| c == '`' || c == ' ').to_owned())
            .map(|f| f.split('`').next().unwrap_or_default().to_owned())
            .filter(|f| !f.is_empty())
            .collect();
        fields.sort();
        fields
    }

    fn documented(schema: &str) -> Vec<String> {
        let doc = spec();
        let mut fields: Vec<String> = doc["components"]["schemas"][schema]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{schema} is documented"))
            .keys()
            .cloned()
            .collect();
        fields.sort();
        fields
    }

    #[test]
    fn documented_request_fields_are_those_the_handlers_accept() {
        assert_eq!(documented("SubmitJob"), accepted_fields::<SubmitJob>());
        assert_eq!(documented("NewTemplate"), accepted_fields::<NewTemplate>());
    }

    #[test]
    fn the_document_is_openapi_3_1_with_a_bearer_scheme() {
        let doc = spec();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        for (method, path) in ROUTES {
            assert!(doc["paths"][path][method].is_object(), "{method} {path}");
        }
    }
}
