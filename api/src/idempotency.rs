//! `Idempotency-Key` on submits: the key is claimed with a conditional write in the job store
//! before any job is made, so however many retries race, one request makes the jobs and the
//! others answer with them.

use std::time::Duration;

use axum::http::header::HeaderName;
use axum::http::HeaderMap;
use kiln_shared::domain::{IdempotencyKey, IdempotencyRecord, IdempotencyState, ItemOutcome};
use kiln_shared::ports::IdempotencyClaim;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::{ApiError, AppState, Caller};

/// The `Idempotency-Key` request header.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// How long a retry waits for the request holding its key to finish before answering
/// `409 idempotency_in_progress`.
pub const IN_PROGRESS_WAIT: Duration = Duration::from_secs(5);
/// First pause between looks at a key in progress.
const POLL_FIRST: Duration = Duration::from_millis(20);
/// Longest pause between looks.
const POLL_MAX: Duration = Duration::from_millis(250);

/// The request's key, if it sent one; `400` naming `Idempotency-Key` if it is not 1-255
/// printable ASCII characters or is sent more than once.
pub fn key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            "must be sent at most once",
        ));
    }
    let text = value
        .to_str()
        .map_err(|_| ApiError::invalid("Idempotency-Key", "must be printable ASCII"))?;
    IdempotencyKey::parse(text)
        .map(Some)
        .map_err(|m| ApiError::invalid("Idempotency-Key", m))
}

/// What [`begin`] found.
#[derive(Debug)]
pub enum Begun {
    /// The key is this request's: make the jobs, then [`finish`] or [`abandon`].
    Fresh(IdempotencyRecord),
    /// An earlier request with this key and body made these.
    Replay(Vec<ItemOutcome>),
}

/// Claims `key` for a request to `route` whose canonical body hashes to `body_hash`. Another
/// body (or route) under the same key is `409 idempotency_conflict`; a request with the key
/// that is still running is waited for up to [`IN_PROGRESS_WAIT`], then
/// `409 idempotency_in_progress`.
pub async fn begin(
    state: &AppState,
    caller: &Caller,
    key: IdempotencyKey,
    route: &str,
    body_hash: &str,
) -> Result<Begun, ApiError> {
    let request_hash = hex::encode(Sha256::digest(format!("{route}\n{body_hash}").as_bytes()));
    let deadline = Instant::now() + IN_PROGRESS_WAIT;
    let mut pause = POLL_FIRST;
    loop {
        let record = IdempotencyRecord::claim(
            caller.user_id.clone(),
            key.clone(),
            request_hash.clone(),
            state.clock.now(),
        );
        let existing = match state
            .store
            .claim_idempotency_key(&record, state.clock.now())
            .await?
        {
            IdempotencyClaim::Claimed => return Ok(Begun::Fresh(record)),
            IdempotencyClaim::Existing(existing) => existing,
        };
        if existing.request_hash != request_hash {
            return Err(ApiError::IdempotencyConflict);
        }
        if let IdempotencyState::Completed { items } = existing.state {
            return Ok(Begun::Replay(items));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ApiError::IdempotencyInProgress);
        }
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// Records what the request made under its key, for the retries to come.
pub async fn finish(state: &AppState, mut record: IdempotencyRecord, items: Vec<ItemOutcome>) {
    record.state = IdempotencyState::Completed { items };
    if let Err(e) = state.store.complete_idempotency_key(&record).await {
        // Retries then wait and get `409 idempotency_in_progress` until the key expires: the
        // jobs exist, and making them again would be worse.
        tracing::error!(error = %e, user_id = %record.user_id, "could not complete an idempotency key");
    }
}

/// Gives the key back after the request failed before making anything, so a retry may claim it.
pub async fn abandon(state: &AppState, record: &IdempotencyRecord) {
    if let Err(e) = state
        .store
        .release_idempotency_key(&record.user_id, &record.key)
        .await
    {
        tracing::warn!(error = %e, user_id = %record.user_id, "could not release an idempotency key");
    }
}
