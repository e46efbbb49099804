//! What clients see of a job: no lease, no version; image URLs freshly signed and every URL
//! absolute.

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::http::header::HOST;
use axum::http::request::Parts;
use axum::http::uri::Authority;
use kiln_shared::domain::{Job, JobId};
use serde::Serialize;

use crate::{ApiError, AppState};

/// The scheme and authority absolute URLs start with: `ApiConfig::public_url` if set, else
/// `http://{Host}` from the request (`http://localhost` if the request names no valid host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl(pub String);

impl BaseUrl {
    /// `path` (starting with `/`) made absolute; an absolute URL (a presigned S3 URL) is kept.
    pub fn absolute(&self, path: &str) -> String {
        kiln_shared::view::absolute(&self.0, path)
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

pub use kiln_shared::view::{ImageView, JobUrls};

/// A job as the API shows it: the same view webhook payloads carry.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct JobView(pub kiln_shared::view::JobView);

impl JobView {
    /// Renders `job`, signing a URL for each of its images.
    pub async fn render(state: &AppState, base: &BaseUrl, job: Job) -> Result<Self, ApiError> {
        Ok(Self(
            kiln_shared::view::JobView::render(&*state.blobs, state.config.url_ttl, &base.0, job)
                .await?,
        ))
    }
}
