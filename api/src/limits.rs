//! Per-user admission of submits: a rate limit (requests per fixed window) and a cap on jobs in
//! flight, per tier, both held in the [`JobStore`](kiln_shared::ports::JobStore) so that every
//! process and Lambda instance sees the same counts.

use crate::{ApiError, AppState, Caller};

/// Counts this request in the caller's rate window; `429 rate_limited` with `Retry-After` (the
/// time until the window ends) once the window is full. Every submit route counts one request,
/// whatever it carries; a batch's jobs count against the in-flight cap instead.
pub async fn take_rate_token(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    let Some(limit) = state.config.limits.of(caller.tier).rate else {
        return Ok(());
    };
    let now = state.clock.now();
    let start = limit.window_start(now);
    let admitted = state
        .store
        .take_rate_token(&caller.user_id, start, limit.window, limit.requests)
        .await?;
    if admitted {
        Ok(())
    } else {
        tracing::info!(user_id = %caller.user_id, %limit, "rate limited");
        Err(ApiError::RateLimited {
            retry_after: limit.retry_after(now),
        })
    }
}

/// Refuses with `429` if `adding` more jobs would put the caller over the tier's cap on jobs
/// in flight (pending or running).
///
/// The count is a query over the store (an index of the user's pending and running jobs, read
/// up to the cap), not a counter kept beside the jobs: a counter would have to be decremented
/// on every terminal transition (success, failure, cancel, a lease taken over, an operator's
/// replay, expiry) by every writer, and one missed or doubled update would leave it wrong for
/// good. A query is always right about the jobs as stored, at the price that two submits racing
/// at the cap can both pass: the cap is soft by at most the caller's concurrent submits, which
/// the rate limit bounds.
pub async fn check_in_flight(
    state: &AppState,
    caller: &Caller,
    adding: usize,
) -> Result<(), ApiError> {
    let Some(cap) = state.config.limits.of(caller.tier).max_in_flight else {
        return Ok(());
    };
    let cap_n = usize::try_from(cap).unwrap_or(usize::MAX);
    if adding > cap_n {
        return Err(ApiError::TooManyInFlight { limit: cap });
    }
    let room = cap_n - adding;
    // Counting one past the room is enough to know.
    let current = state
        .store
        .count_in_flight(&caller.user_id, room.saturating_add(1))
        .await?;
    if current > room {
        tracing::info!(user_id = %caller.user_id, cap, current, "too many jobs in flight");
        return Err(ApiError::TooManyInFlight { limit: cap });
    }
    Ok(())
}
