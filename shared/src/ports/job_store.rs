//! Durable home of jobs and API keys.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{
    ApiKeyRecord, Cursor, IdempotencyKey, IdempotencyRecord, Job, JobId, JobStatus, Template,
    UserId,
};

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

/// What claiming an idempotency key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key was free (or its old record had expired) and is now the caller's.
    Claimed,
    /// Another request holds or held the key; its record as stored.
    Existing(IdempotencyRecord),
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

    /// Stores new jobs; the local store writes them in one transaction. Stops at the first
    /// failure, returning it with how many were stored before it.
    async fn insert_many(&self, jobs: &[Job]) -> Result<(), (usize, StoreError)> {
        for (i, job) in jobs.iter().enumerate() {
            self.insert(job).await.map_err(|e| (i, e))?;
        }
        Ok(())
    }

    /// Claims `record.key` for `record.user_id` with a conditional insert, unless a live record
    /// holds it already (an expired one is replaced): exactly one of any number of concurrent
    /// claims of one key wins.
    async fn claim_idempotency_key(
        &self,
        record: &IdempotencyRecord,
        now: DateTime<Utc>,
    ) -> Result<IdempotencyClaim, StoreError>;

    /// Overwrites the caller's claimed record (to mark it completed).
    async fn complete_idempotency_key(&self, record: &IdempotencyRecord) -> Result<(), StoreError>;

    /// Forgets a claim that is still in progress (its submit failed), so a retry may claim it.
    async fn release_idempotency_key(
        &self,
        user: &UserId,
        key: &IdempotencyKey,
    ) -> Result<(), StoreError>;

    /// Counts one request in `user`'s rate window that starts at `window_start`, unless the
    /// window holds `limit` already: `false` then, and nothing changes. Atomic across
    /// processes. The window's record expires some time after `window_start + window`.
    async fn take_rate_token(
        &self,
        user: &UserId,
        window_start: DateTime<Utc>,
        window: std::time::Duration,
        limit: u32,
    ) -> Result<bool, StoreError>;

    /// How many of `user`'s jobs are `pending` or `running`, counting no further than `up_to`.
    async fn count_in_flight(&self, user: &UserId, up_to: usize) -> Result<usize, StoreError>;

    /// Stores a new template; `Conflict` if its owner has one of that name.
    async fn insert_template(&self, template: &Template) -> Result<(), StoreError>;

    /// The template of `owner` (`None`: global) named `name`.
    async fn get_template(
        &self,
        owner: Option<&UserId>,
        name: &str,
    ) -> Result<Option<Template>, StoreError>;

    /// Every template of `owner` (`None`: the global ones), by name.
    async fn list_templates(&self, owner: Option<&UserId>) -> Result<Vec<Template>, StoreError>;

    /// Deletes the template; `false` if there was none.
    async fn delete_template(&self, owner: Option<&UserId>, name: &str)
        -> Result<bool, StoreError>;
}
