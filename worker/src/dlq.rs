//! Operators' work on the dead-letter queues, for `kiln dlq` on either backend: list and show
//! what is parked (with the job's state, attempts and last error), replay messages to their
//! source queue (putting failed jobs back to `pending`), and purge.
//!
//! Only the [`Queue`] port is used, so SQS and the local queue behave alike: looking at parked
//! messages receives them (hiding them for the visibility timeout) and makes them visible again
//! when done. A replay sends to the source queue before deleting from the dead-letter queue, so
//! a failure in between leaves a duplicate (which the job store and webhook ids absorb), never a
//! loss.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kiln_shared::adapters::Services;
use kiln_shared::domain::{EventType, Job, JobId, JobStatus};
use kiln_shared::ports::{JobMessage, JobStore, Queue, QueueError, ReceivedMessage, StoreError};
use kiln_shared::webhooks::WebhookMessage;
use serde::Serialize;
use tracing::warn;

/// Most messages one listing looks at.
pub const MAX_LIST: usize = 10_000;

/// Which pair of queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueKind {
    /// Job messages.
    Jobs,
    /// Webhook events.
    Webhooks,
}

impl FromStr for QueueKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "jobs" => Ok(Self::Jobs),
            "webhooks" => Ok(Self::Webhooks),
            other => Err(format!(
                "unknown queue {other:?}: expected jobs or webhooks"
            )),
        }
    }
}

/// Failures of a dead-letter operation.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// A queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The job store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A parked message and what is known of its job.
#[derive(Debug, Clone, Serialize)]
pub struct Parked {
    /// The message's id.
    pub message_id: String,
    /// When it was first sent (to the source queue).
    pub sent_at: DateTime<Utc>,
    /// The body as parked.
    pub body: String,
    /// The job the message is about, if the body names one.
    pub job_id: Option<JobId>,
    /// The job's state; `None` if it is gone (or the body is unreadable).
    pub job_status: Option<JobStatus>,
    /// Job messages: runs of the job; webhook events: delivery attempts.
    pub attempts: u32,
    /// The last error: the job's, or the event's last delivery's.
    pub last_error: Option<String>,
    /// Webhook events: the event's id and type.
    pub event: Option<(String, EventType)>,
    /// The job as stored, for `show`.
    #[serde(skip)]
    pub job: Option<Job>,
}

/// What a replay should do.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Only this message.
    pub id: Option<String>,
    /// At most this many.
    pub limit: Option<usize>,
    /// Only report what would be replayed.
    pub dry_run: bool,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Messages sent back to the source queue (or that would be, on a dry run).
    pub replayed: Vec<String>,
    /// Failed jobs put back to `pending`.
    pub requeued_jobs: usize,
    /// The message whose send failed, which stays parked, and why; the replay stopped there.
    pub failed: Option<(String, String)>,
}

/// One dead-letter queue, its source queue, and the job store.
pub struct DeadLetters {
    kind: QueueKind,
    store: Arc<dyn JobStore>,
    source: Arc<dyn Queue>,
    dlq: Arc<dyn Queue>,
    poll: Duration,
}

impl DeadLetters {
    /// The `kind` pair of `services`. `poll` is how long a receive waits before the queue
    /// counts as drained: zero for the local queue, about a second for SQS, whose short polls
    /// may miss messages.
    pub fn new(services: &Services, kind: QueueKind, poll: Duration) -> Self {
        let (source, dlq) = match kind {
            QueueKind::Jobs => (services.jobs_queue.clone(), services.jobs_dlq.clone()),
            QueueKind::Webhooks => (
                services.webhooks_queue.clone(),
                services.webhooks_dlq.clone(),
            ),
        };
        Self {
            kind,
            store: services.store.clone(),
            source,
            dlq,
            poll,
        }
    }

    /// Messages waiting in the dead-letter queue (approximate on SQS).
    pub async fn depth(&self) -> Result<u64, DlqError> {
        Ok(self.dlq.depth().await?)
    }

    /// Up to `limit` parked messages, with their jobs.
    pub async fn list(&self, limit: usize) -> Result<Vec<Parked>, DlqError> {
        let held = self.receive_up_to(limit.min(MAX_LIST)).await?;
        let mut out = Vec::with_capacity(held.len());
        for m in &held {
            out.push(self.describe(m).await);
        }
        self.release(&held).await;
        Ok(out)
    }

    /// One parked message by id.
    pub async fn show(&self, message_id: &str) -> Result<Option<Parked>, DlqError> {
        Ok(self
            .list(MAX_LIST)
            .await?
            .into_iter()
            .find(|p| p.message_id == message_id))
    }

    /// Moves parked messages back to the source queue; failed jobs go back to `pending`.
    /// `progress` is called with the count handled so far.
    pub async fn replay(
        &self,
        opts: &ReplayOptions,
        progress: &(dyn Fn(usize) + Send + Sync),
    ) -> Result<ReplayReport, DlqError> {
        let limit = opts.limit.unwrap_or(usize::MAX);
        let mut report = ReplayReport::default();
        let mut keep: Vec<ReceivedMessage> = Vec::new();
        let mut handled = 0usize;
        'outer: while report.replayed.len() < limit {
            let want = (limit - report.replayed.len()).min(10);
            let batch = match self.dlq.receive(want, self.poll).await {
                Ok(b) => b,
                Err(e) => {
                    self.release(&keep).await;
                    return Err(e.into());
                }
            };
            if batch.is_empty() {
                break;
            }
            let mut rest = batch.into_iter();
            while let Some(m) = rest.next() {
                let wanted = opts.id.as_deref().is_none_or(|id| id == m.message_id);
                if !wanted || opts.dry_run || report.replayed.len() >= limit {
                    if wanted && report.replayed.len() < limit {
                        report.replayed.push(m.message_id.clone());
                    }
                    keep.push(m);
                    continue;
                }
                match self.replay_one(&m).await {
                    Ok(requeued) => {
                        report.requeued_jobs += usize::from(requeued);
                        report.replayed.push(m.message_id.clone());
                        if let Err(e) = self.dlq.delete(&m.receipt_handle).await {
                            warn!(message_id = %m.message_id, error = %e, "replayed but could not delete from the dead-letter queue; it may be replayed twice");
                        }
                    }
                    Err(e) => {
                        report.failed = Some((m.message_id.clone(), e.to_string()));
                        keep.push(m);
                        keep.extend(rest);
                        break 'outer;
                    }
                }
                handled += 1;
                progress(handled);
                if opts.id.is_some() {
                    break 'outer;
                }
            }
        }
        self.release(&keep).await;
        progress(handled);
        Ok(report)
    }

    /// Deletes every parked message; returns how many went.
    pub async fn purge(&self) -> Result<u64, DlqError> {
        let mut n = 0;
        loop {
            let batch = self.dlq.receive(10, self.poll).await?;
            if batch.is_empty() {
                return Ok(n);
            }
            for m in batch {
                self.dlq.delete(&m.receipt_handle).await?;
                n += 1;
            }
        }
    }

    /// Puts the job back to `pending` if it failed (jobs), resets the attempt count (webhook
    /// events), and sends the message to the source queue. `Ok(true)` if a job was requeued.
    async fn replay_one(&self, m: &ReceivedMessage) -> Result<bool, DlqError> {
        let (body, requeued) = match self.kind {
            QueueKind::Jobs => {
                let requeued = match JobMessage::decode(&m.body) {
                    Ok(msg) => self.requeue(&msg.job_id).await?,
                    Err(_) => false,
                };
                (m.body.clone(), requeued)
            }
            QueueKind::Webhooks => match WebhookMessage::decode(&m.body) {
                // A fresh round of retries.
                Ok(msg) => (
                    WebhookMessage {
                        attempts: 0,
                        not_before: None,
                        ..msg
                    }
                    .encode(),
                    false,
                ),
                Err(_) => (m.body.clone(), false),
            },
        };
        self.source.send(&[body], Duration::ZERO).await?;
        Ok(requeued)
    }

    /// `failed -> pending` for the job, through the domain's transition; `false` if the job is
    /// in another state (it is left alone) or gone.
    async fn requeue(&self, id: &JobId) -> Result<bool, DlqError> {
        for _ in 0..5 {
            let Some(job) = self.store.get(id).await? else {
                return Ok(false);
            };
            let Ok(pending) = job.requeue() else {
                return Ok(false);
            };
            match self.store.update(&pending).await {
                Ok(()) => return Ok(true),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict(format!("job {id} kept changing")).into())
    }

    async fn receive_up_to(&self, limit: usize) -> Result<Vec<ReceivedMessage>, DlqError> {
        let mut held = Vec::new();
        while held.len() < limit {
            match self
                .dlq
                .receive((limit - held.len()).min(10), self.poll)
                .await
            {
                Ok(b) if b.is_empty() => break,
                Ok(b) => held.extend(b),
                Err(e) => {
                    self.release(&held).await;
                    return Err(e.into());
                }
            }
        }
        Ok(held)
    }

    /// Makes received messages visible again at once.
    async fn release(&self, held: &[ReceivedMessage]) {
        for m in held {
            if let Err(e) = self
                .dlq
                .change_visibility(&m.receipt_handle, Duration::ZERO)
                .await
            {
                warn!(message_id = %m.message_id, error = %e, "could not release a parked message; it comes back after its visibility timeout");
            }
        }
    }

    async fn describe(&self, m: &ReceivedMessage) -> Parked {
        let mut p = Parked {
            message_id: m.message_id.clone(),
            sent_at: m.sent_at,
            body: m.body.clone(),
            job_id: None,
            job_status: None,
            attempts: 0,
            last_error: None,
            event: None,
            job: None,
        };
        let event = match self.kind {
            QueueKind::Jobs => {
                p.job_id = JobMessage::decode(&m.body).ok().map(|j| j.job_id);
                None
            }
            QueueKind::Webhooks => WebhookMessage::decode(&m.body).ok().inspect(|w| {
                p.job_id = Some(w.job_id);
                p.attempts = w.attempts;
                p.event = Some((w.event_id.clone(), w.event_type));
            }),
        };
        if p.job_id.is_none() {
            p.last_error = Some("unreadable message body".into());
            return p;
        }
        let job = match self.store.get(&p.job_id.expect("checked above")).await {
            Ok(j) => j,
            Err(e) => {
                p.last_error = Some(format!("cannot read the job: {e}"));
                return p;
            }
        };
        if let Some(job) = &job {
            p.job_status = Some(job.status);
            match &event {
                None => {
                    p.attempts = job.runs;
                    p.last_error = job
                        .error
                        .as_ref()
                        .map(|e| format!("{}: {}", e.code, e.message));
                }
                Some(w) => {
                    p.last_error = job
                        .webhook_deliveries
                        .iter()
                        .rev()
                        .find(|d| d.event_id == w.event_id)
                        .and_then(|d| d.error.clone());
                }
            }
        } else {
            p.last_error = Some("job not found (expired or deleted)".into());
        }
        p.job = job;
        p
    }
}
