//! The one submit pipeline behind `POST /v1/jobs` and the seed routes: validate everything,
//! store the pending jobs, enqueue their ids.

use kiln_shared::domain::{Job, NewJob, SubmitJob, ValidationError, WebhookSpec};

use crate::{ApiError, AppState, Caller};

/// Most jobs one batch may carry.
pub const MAX_BATCH: usize = 100;

/// Validates every body, then stores and enqueues the jobs in order, all or none: the first
/// job that cannot be stored is the error. See [`prepare`] and [`store`].
pub async fn submit(
    state: &AppState,
    caller: &Caller,
    bodies: Vec<SubmitJob>,
    batch: bool,
) -> Result<Vec<Job>, ApiError> {
    let jobs = prepare(state, caller, bodies, batch).await?;
    store(state, jobs).await.into_iter().collect()
}

/// Validates every body and makes the pending jobs, storing nothing. If any body is invalid,
/// the error's field is prefixed by `items[i].` when there is more than one body, so the client
/// knows which item to fix.
pub async fn prepare(
    state: &AppState,
    caller: &Caller,
    bodies: Vec<SubmitJob>,
    batch: bool,
) -> Result<Vec<Job>, ApiError> {
    let now = state.clock.now();
    let jobs = bodies
        .into_iter()
        .enumerate()
        .map(|(i, mut body)| {
            let name = |e: ValidationError| {
                if batch {
                    ValidationError::new(format!("items[{i}].{}", e.field), e.message)
                } else {
                    e
                }
            };
            let webhook = body.webhook.take();
            let (request, metadata) = body.validate().map_err(name)?;
            let webhook = webhook
                .map(WebhookSpec::validate)
                .transpose()
                .map_err(name)?;
            let new = NewJob {
                user_id: caller.user_id.clone(),
                tier: caller.tier,
                request,
                webhook,
                metadata,
            };
            Ok(Job::new(new, now, state.config.retention))
        })
        .collect::<Result<Vec<_>, ValidationError>>()?;
    // The address check resolves names, so it runs once the cheap checks have all passed.
    for (i, job) in jobs.iter().enumerate() {
        if let Some(webhook) = &job.webhook {
            if let Err(e) = state.config.webhook_guard.check(&webhook.url).await {
                let field = if batch {
                    format!("items[{i}].webhook.url")
                } else {
                    "webhook.url".to_owned()
                };
                return Err(ValidationError::new(field, e.0).into());
            }
        }
    }

    Ok(jobs)
}

/// Stores and enqueues the jobs through the intake; one result per job, in order: the job, or
/// why it was not stored.
pub async fn store(state: &AppState, jobs: Vec<Job>) -> Vec<Result<Job, ApiError>> {
    let (stored, mut first_error) = match state.intake.accept(&jobs).await {
        Ok(()) => (jobs.len(), None),
        Err((n, e)) => {
            tracing::warn!(error = %e, stored = n, of = jobs.len(), "storing jobs failed");
            (n, Some(ApiError::from(e)))
        }
    };
    jobs.into_iter()
        .enumerate()
        .map(|(i, job)| {
            if i < stored {
                tracing::info!(job_id = %job.id, user_id = %job.user_id, "job accepted");
                Ok(job)
            } else {
                Err(first_error.take().unwrap_or_else(|| {
                    ApiError::Unavailable(format!("job {} was not stored", job.id))
                }))
            }
        })
        .collect()
}
