//! Durable home of jobs and API keys.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{ApiKeyRecord, Cursor, Job, JobId, JobStatus, UserId};

/// Failures of a [`JobStore`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A conditional write lost: the stored item is not the version the change was made from,
    /// or an item with that id already exists.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The backend refused for load; try again later.
    #[error("store throttled")]
    Throttled,
    /// Anything else from the backend.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Which of a user's jobs to list.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only jobs in this state.
    pub status: Option<JobStatus>,
    /// Page size (the caller bounds it).
    pub limit: usize,
    /// Continue after this cursor.
    pub cursor: Option<Cursor>,
}

/// A page of jobs, newest first.
#[derive(Debug, Clone)]
pub struct JobPage {
    /// The jobs.
    pub jobs: Vec<Job>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

/// Jobs, API keys and the other records the API and workers share.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Stores a new job; `Conflict` if the id exists.
    async fn insert(&self, job: &Job) -> Result<(), StoreError>;

    /// The job, if it exists.
    async fn get(&self, id: &JobId) -> Result<Option<Job>, StoreError>;

    /// Writes `job` only if the stored version is `job.version - 1`; `Conflict` otherwise.
    async fn update(&self, job: &Job) -> Result<(), StoreError>;

    /// A user's jobs, newest first.
    async fn list(&self, user: &UserId, query: &ListQuery) -> Result<JobPage, StoreError>;

    /// Pending jobs created before `before`, oldest first: candidates for re-enqueueing when a
    /// submit crashed between writing the job and enqueueing it.
    async fn stale_pending(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError>;

    /// Deletes jobs whose `expires_at` has passed; returns how many went.
    async fn delete_expired(&self, now: DateTime<Utc>, limit: usize) -> Result<usize, StoreError>;

    /// Stores a new API key record.
    async fn insert_api_key(&self, record: &ApiKeyRecord) -> Result<(), StoreError>;

    /// The key record with this hash, revoked or not.
    async fn find_api_key(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError>;

    /// All key records, newest first.
    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;

    /// Marks the key with this id (or id prefix, if unambiguous) revoked; `None` if no key matched.
    async fn revoke_api_key(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<ApiKeyRecord>, StoreError>;
}
