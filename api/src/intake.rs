//! Admission and submission of jobs, shared by every submit route: rate limit, idempotency key,
//! validation, template expansion, the cap on jobs in flight, then the store and the queue.

use axum::http::HeaderMap;
use kiln_shared::domain::{ItemOutcome, Job, SubmitJob};

use crate::idempotency::{self, Begun};
use crate::{limits, submit, templates, ApiError, AppState, Caller};

/// One submitted item's result.
#[derive(Debug)]
pub enum Item {
    /// Its job (as stored now, for a replay).
    Job(Box<Job>),
    /// Why it has no job.
    Failed(ApiError),
}

/// A submit request.
#[derive(Debug)]
pub struct Submission<'a> {
    /// The route, part of what an idempotency key is bound to.
    pub route: &'static str,
    /// Hex SHA-256 of the canonical body.
    pub body_hash: &'a str,
    /// The bodies.
    pub bodies: Vec<SubmitJob>,
    /// The body's list field for a batch (`jobs`, `items`), naming fields as `jobs[3].prompt`;
    /// `None` for a single job.
    pub list: Option<&'static str>,
}

/// Admits and submits; one [`Item`] per body, in order. An error means nothing was stored.
pub async fn submit(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    req: Submission<'_>,
) -> Result<Vec<Item>, ApiError> {
    limits::take_rate_token(state, caller).await?;
    let key = idempotency::key(headers)?;
    let held = match key {
        None => None,
        Some(key) => {
            match idempotency::begin(state, caller, key, req.route, req.body_hash).await? {
                Begun::Fresh(record) => Some(record),
                Begun::Replay(items) => return replay(state, caller, items).await,
            }
        }
    };
    let made = make(state, caller, req).await;
    let items = match made {
        Ok(items) => items,
        Err(e) => {
            if let Some(record) = &held {
                idempotency::abandon(state, record).await;
            }
            return Err(e);
        }
    };
    if let Some(record) = held {
        if items.iter().all(|i| matches!(i, Item::Failed(_))) {
            idempotency::abandon(state, &record).await;
        } else {
            let outcomes = items
                .iter()
                .map(|i| match i {
                    Item::Job(j) => ItemOutcome::Job { id: j.id },
                    Item::Failed(e) => ItemOutcome::Failed {
                        code: e.code().to_owned(),
                        message: e.to_string(),
                    },
                })
                .collect();
            idempotency::finish(state, record, outcomes).await;
        }
    }
    Ok(items)
}

async fn make(
    state: &AppState,
    caller: &Caller,
    req: Submission<'_>,
) -> Result<Vec<Item>, ApiError> {
    let mut jobs = submit::prepare(state, caller, req.bodies, req.list.is_some())
        .await
        .map_err(|e| rename_list(e, req.list))?;
    templates::expand_all(&*state.store, &caller.user_id, &mut jobs, req.list).await?;
    limits::check_in_flight(state, caller, jobs.len()).await?;
    Ok(submit::store(state, jobs)
        .await
        .into_iter()
        .map(|r| match r {
            Ok(job) => Item::Job(Box::new(job)),
            Err(e) => Item::Failed(e),
        })
        .collect())
}

/// `prepare` names a batch's items `items[i]`; a route whose list is called otherwise says so.
fn rename_list(e: ApiError, list: Option<&str>) -> ApiError {
    match (e, list) {
        (
            ApiError::InvalidRequest {
                field: Some(f),
                message,
            },
            Some(list),
        ) if list != "items" => {
            let field = match f.strip_prefix("items[") {
                Some(rest) => format!("{list}[{rest}"),
                None => f,
            };
            ApiError::InvalidRequest {
                field: Some(field),
                message,
            }
        }
        (e, _) => e,
    }
}

/// The items an earlier request with the same key made, read again.
async fn replay(
    state: &AppState,
    caller: &Caller,
    outcomes: Vec<ItemOutcome>,
) -> Result<Vec<Item>, ApiError> {
    let mut items = Vec::with_capacity(outcomes.len());
    for outcome in outcomes {
        items.push(match outcome {
            ItemOutcome::Job { id } => match state.store.get(&id).await? {
                Some(job) if job.user_id == caller.user_id => Item::Job(Box::new(job)),
                _ => Item::Failed(ApiError::NotFound("job")),
            },
            ItemOutcome::Failed { message, .. } => Item::Failed(ApiError::Unavailable(message)),
        });
    }
    Ok(items)
}
