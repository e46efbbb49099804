//! The job and the only transitions it may make:
//!
//! ```text
//! pending -> running -> success | failed
//! pending | running -> canceled
//! running (lease expired) -> running (taken over by another worker)
//! failed -> pending (operator replay)
//! ```
//!
//! A transition a webhook subscriber asked to hear about also leaves a [`PendingEvent`] on the
//! job, in the same write: the mark stays until the event is on the webhook queue, so a crash
//! between the two is repaired by whoever next reads the job, with the same event id.
//!
//! Every transition returns the next version of the job with `version` bumped; stores write it
//! only if the stored version is still the one it was computed from, so two writers that raced
//! (an SQS duplicate, a cancel during a run, a worker whose lease expired) cannot both win.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{JobId, JobRequest, Tier, UserId};
use crate::clock::after;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Accepted, waiting for a worker.
    Pending,
    /// A worker holds a lease on it.
    Running,
    /// Images stored.
    Success,
    /// Ended without images; `error` says why.
    Failed,
    /// Canceled by its owner.
    Canceled,
}

impl JobStatus {
    /// All states, for parsing and docs.
    pub const ALL: [JobStatus; 5] = [
        Self::Pending,
        Self::Running,
        Self::Success,
        Self::Failed,
        Self::Canceled,
    ];

    /// Whether the job has ended.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Success | Self::Failed | Self::Canceled)
    }

    /// The state's name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    /// Parses a state's name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    /// Stable machine-readable code (`provider_unavailable`, `content_policy`, ...).
    pub code: String,
    /// Human-readable detail; never contains secrets.
    pub message: String,
    /// Whether running the job again could succeed.
    pub retriable: bool,
}

/// A stored image of a finished job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// Blob key: `images/{user}/{job}/{index}.{ext}`.
    pub key: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `image/png`, `image/jpeg` or `image/webp`.
    pub content_type: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
}

/// One call to a provider while running the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// Provider name.
    pub provider: String,
    /// `success`, or the error code.
    pub outcome: String,
    /// HTTP status the provider answered, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// How long the call took.
    pub latency_ms: u64,
    /// What the call cost.
    pub cost_usd: f64,
    /// When the call started.
    pub started_at: DateTime<Utc>,
}

/// Which transitions a webhook subscriber wants to hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEvent {
    /// The job started running.
    Running,
    /// The job reached a terminal state.
    Completed,
}

/// Where to send events about the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// `https` URL of the subscriber.
    pub url: String,
    /// Events wanted.
    pub events: Vec<WebhookEvent>,
}

/// The type of a webhook event, as sent in the payload's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// A worker started the job.
    #[serde(rename = "job.running")]
    JobRunning,
    /// The job produced its images.
    #[serde(rename = "job.succeeded")]
    JobSucceeded,
    /// The job ended without images.
    #[serde(rename = "job.failed")]
    JobFailed,
    /// The job was canceled.
    #[serde(rename = "job.canceled")]
    JobCanceled,
    /// An operator's test event; never stored on a job.
    #[serde(rename = "webhook.test")]
    Test,
}

impl EventType {
    /// The type's name in payloads.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::JobRunning => "job.running",
            Self::JobSucceeded => "job.succeeded",
            Self::JobFailed => "job.failed",
            Self::JobCanceled => "job.canceled",
            Self::Test => "webhook.test",
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event the job owes its webhook subscriber and that is not yet known to be on the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEvent {
    /// Stable id: every delivery of this event carries it as `webhook-id`.
    pub id: String,
    /// What happened.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// When it happened.
    pub at: DateTime<Utc>,
}

/// Most delivery attempts kept on a job; older ones are dropped first.
pub const MAX_WEBHOOK_DELIVERIES: usize = 20;

/// One attempt at delivering a webhook event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    /// The event's id (`webhook-id`).
    pub event_id: String,
    /// The event's type.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// 1 for the first attempt at this event.
    pub attempt: u32,
    /// When the attempt started.
    pub at: DateTime<Utc>,
    /// Whether the subscriber answered 2xx.
    pub delivered: bool,
    /// HTTP status the subscriber answered, if it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// Why the attempt failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long the attempt took.
    pub latency_ms: u64,
}

/// A worker's claim on a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Only the holder of this token may write the job's result.
    pub token: Uuid,
    /// After this, another worker may take the job over.
    pub until: DateTime<Utc>,
}

/// A generation job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Time-ordered id.
    pub id: JobId,
    /// Current state.
    pub status: JobStatus,
    /// Owner.
    pub user_id: UserId,
    /// Owner's tier when the job was submitted; routing uses it.
    pub tier: Tier,
    /// What to generate.
    pub request: JobRequest,
    /// The provider that produced the images.
    pub provider: Option<String>,
    /// Every provider call made for this job.
    pub attempts: Vec<Attempt>,
    /// How many times a worker claimed the job.
    pub runs: u32,
    /// Stored images, once `success`.
    pub images: Vec<ImageRef>,
    /// Why it failed, once `failed`.
    pub error: Option<JobError>,
    /// Sum of the attempts' costs.
    pub cost_usd: f64,
    /// Webhook subscription.
    pub webhook: Option<Webhook>,
    /// Client's own data.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// When a worker first claimed it.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub completed_at: Option<DateTime<Utc>>,
    /// When it may be deleted.
    pub expires_at: DateTime<Utc>,
    /// Current lease, while `running`.
    pub lease: Option<Lease>,
    /// Webhook events not yet known to be on the webhook queue.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhook_pending: Vec<PendingEvent>,
    /// The last [`MAX_WEBHOOK_DELIVERIES`] delivery attempts, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhook_deliveries: Vec<WebhookDelivery>,
    /// Optimistic-concurrency version; bumped by every transition.
    pub version: u64,
}

/// A transition the job's state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The job is already in a terminal state.
    #[error("job is already {0}")]
    Finished(JobStatus),
    /// Another worker holds a live lease.
    #[error("job is leased by another worker until {0}")]
    Leased(DateTime<Utc>),
    /// The caller's lease token is not the current one.
    #[error("lease lost")]
    LeaseLost,
    /// Any other disallowed move.
    #[error("cannot go from {from} to {to}")]
    NotAllowed {
        /// Current state.
        from: JobStatus,
        /// Wanted state.
        to: JobStatus,
    },
}

/// What a new job is made of.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Owner.
    pub user_id: UserId,
    /// Owner's tier.
    pub tier: Tier,
    /// Validated request.
    pub request: JobRequest,
    /// Webhook subscription.
    pub webhook: Option<Webhook>,
    /// Client's own data.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Job {
    /// A new pending job, kept for `retention`.
    pub fn new(new: NewJob, now: DateTime<Utc>, retention: Duration) -> Self {
        Self {
            id: JobId::new(),
            status: JobStatus::Pending,
            user_id: new.user_id,
            tier: new.tier,
            request: new.request,
            provider: None,
            attempts: Vec::new(),
            runs: 0,
            images: Vec::new(),
            error: None,
            cost_usd: 0.0,
            webhook: new.webhook,
            metadata: new.metadata,
            created_at: now,
            started_at: None,
            completed_at: None,
            expires_at: after(now, retention),
            lease: None,
            webhook_pending: Vec::new(),
            webhook_deliveries: Vec::new(),
            version: 1,
        }
    }

    fn next(&self) -> Self {
        let mut j = self.clone();
        j.version += 1;
        j
    }

    /// Leaves a [`PendingEvent`] on the job if its subscriber wants `wanted`.
    fn owe_event(&mut self, wanted: WebhookEvent, event_type: EventType, now: DateTime<Utc>) {
        let subscribed = self
            .webhook
            .as_ref()
            .is_some_and(|w| w.events.contains(&wanted));
        if subscribed {
            self.webhook_pending.push(PendingEvent {
                id: format!("msg_{}", Uuid::now_v7().simple()),
                event_type,
                at: now,
            });
        }
    }

    /// The terminal event of the job's current state, if it has ended.
    fn terminal_event(&self) -> Option<EventType> {
        match self.status {
            JobStatus::Success => Some(EventType::JobSucceeded),
            JobStatus::Failed => Some(EventType::JobFailed),
            JobStatus::Canceled => Some(EventType::JobCanceled),
            _ => None,
        }
    }

    fn owe_terminal_event(&mut self, now: DateTime<Utc>) {
        if let Some(t) = self.terminal_event() {
            self.owe_event(WebhookEvent::Completed, t, now);
        }
    }

    /// Drops the marks of the events with these ids: they are on the webhook queue now.
    /// `None` if none of them was still marked (nothing to write).
    pub fn webhooks_enqueued(&self, event_ids: &[String]) -> Option<Self> {
        if !self
            .webhook_pending
            .iter()
            .any(|e| event_ids.contains(&e.id))
        {
            return None;
        }
        let mut j = self.next();
        j.webhook_pending.retain(|e| !event_ids.contains(&e.id));
        Some(j)
    }

    /// Records a delivery attempt, keeping the last [`MAX_WEBHOOK_DELIVERIES`]. Allowed in every
    /// state: deliveries go on after the job ended.
    pub fn record_delivery(&self, delivery: WebhookDelivery) -> Self {
        let mut j = self.next();
        j.webhook_deliveries.push(delivery);
        let extra = j
            .webhook_deliveries
            .len()
            .saturating_sub(MAX_WEBHOOK_DELIVERIES);
        j.webhook_deliveries.drain(..extra);
        j
    }

    /// Claims the job for a worker: from `pending`, or from `running` whose lease has expired.
    pub fn claim(&self, now: DateTime<Utc>, lease_for: Duration) -> Result<Self, TransitionError> {
        match (self.status, self.lease) {
            (JobStatus::Pending, _) => {}
            (JobStatus::Running, Some(lease)) if lease.until > now => {
                return Err(TransitionError::Leased(lease.until))
            }
            (JobStatus::Running, _) => {}
            (s, _) => return Err(TransitionError::Finished(s)),
        }
        let mut j = self.next();
        if self.status == JobStatus::Pending {
            // A takeover of a running job is the same run as far as subscribers know.
            j.owe_event(WebhookEvent::Running, EventType::JobRunning, now);
        }
        j.status = JobStatus::Running;
        j.runs += 1;
        j.started_at.get_or_insert(now);
        j.lease = Some(Lease {
            token: Uuid::new_v4(),
            until: after(now, lease_for),
        });
        Ok(j)
    }

    fn check_lease(&self, token: Uuid) -> Result<(), TransitionError> {
        match (self.status, self.lease) {
            (JobStatus::Running, Some(l)) if l.token == token => Ok(()),
            (s, _) if s.is_terminal() => Err(TransitionError::Finished(s)),
            _ => Err(TransitionError::LeaseLost),
        }
    }

    /// Records provider calls made under the lease (kept even if the job later fails).
    pub fn record_attempts(
        &self,
        token: Uuid,
        attempts: Vec<Attempt>,
    ) -> Result<Self, TransitionError> {
        self.check_lease(token)?;
        let mut j = self.next();
        j.cost_usd += attempts.iter().map(|a| a.cost_usd).sum::<f64>();
        j.attempts.extend(attempts);
        Ok(j)
    }

    /// `running -> success`, for the lease holder only.
    pub fn succeed(
        &self,
        token: Uuid,
        provider: String,
        images: Vec<ImageRef>,
        attempts: Vec<Attempt>,
        now: DateTime<Utc>,
    ) -> Result<Self, TransitionError> {
        let mut j = self.record_attempts(token, attempts)?;
        j.status = JobStatus::Success;
        j.provider = Some(provider);
        j.images = images;
        j.error = None;
        j.completed_at = Some(now);
        j.lease = None;
        j.owe_terminal_event(now);
        Ok(j)
    }

    /// `running -> failed`, for the lease holder only.
    pub fn fail(
        &self,
        token: Uuid,
        error: JobError,
        attempts: Vec<Attempt>,
        now: DateTime<Utc>,
    ) -> Result<Self, TransitionError> {
        let mut j = self.record_attempts(token, attempts)?;
        j.status = JobStatus::Failed;
        j.error = Some(error);
        j.completed_at = Some(now);
        j.lease = None;
        j.owe_terminal_event(now);
        Ok(j)
    }

    /// Gives the lease up after a retriable failure, so the next delivery may claim at once.
    pub fn release(
        &self,
        token: Uuid,
        attempts: Vec<Attempt>,
        now: DateTime<Utc>,
    ) -> Result<Self, TransitionError> {
        let mut j = self.record_attempts(token, attempts)?;
        if let Some(lease) = j.lease.as_mut() {
            lease.until = now;
        }
        Ok(j)
    }

    /// `pending | running -> canceled`.
    pub fn cancel(&self, now: DateTime<Utc>) -> Result<Self, TransitionError> {
        if self.status.is_terminal() {
            return Err(TransitionError::Finished(self.status));
        }
        let mut j = self.next();
        j.status = JobStatus::Canceled;
        j.completed_at = Some(now);
        j.lease = None;
        j.owe_terminal_event(now);
        Ok(j)
    }

    /// `failed -> pending`, an operator's replay.
    pub fn requeue(&self) -> Result<Self, TransitionError> {
        if self.status != JobStatus::Failed {
            return Err(TransitionError::NotAllowed {
                from: self.status,
                to: JobStatus::Pending,
            });
        }
        let mut j = self.next();
        j.status = JobStatus::Pending;
        j.error = None;
        j.completed_at = None;
        j.lease = None;
        Ok(j)
    }

    /// Blob key of the `index`th image: deterministic, so a retry overwrites instead of adding.
    pub fn image_key(&self, index: usize, ext: &str) -> String {
        format!("images/{}/{}/{index}.{ext}", self.user_id, self.id)
    }
}

#[cfg(test)]
impl Job {
    /// A pending job of `user` with prompt "a kiln", kept an hour: for the crate's tests.
    pub(crate) fn sample(user: &str, now: DateTime<Utc>) -> Job {
        let (request, metadata) = crate::domain::SubmitJob {
            prompt: Some("a kiln".into()),
            ..Default::default()
        }
        .validate()
        .unwrap();
        Job::new(
            NewJob {
                user_id: UserId::parse(user).unwrap(),
                tier: Tier::Standard,
                request,
                webhook: None,
                metadata,
            },
            now,
            Duration::from_secs(3600),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(now: DateTime<Utc>) -> Job {
        Job::sample("u", now)
    }

    #[test]
    fn happy_path_bumps_version_and_checks_lease() {
        let now = Utc::now();
        let j = job(now);
        let running = j.claim(now, Duration::from_secs(60)).unwrap();
        assert_eq!(running.status, JobStatus::Running);
        assert_eq!(running.version, j.version + 1);
        let token = running.lease.unwrap().token;
        assert_eq!(
            running.succeed(Uuid::new_v4(), "p".into(), vec![], vec![], now),
            Err(TransitionError::LeaseLost)
        );
        let done = running
            .succeed(token, "local".into(), vec![], vec![], now)
            .unwrap();
        assert_eq!(done.status, JobStatus::Success);
        assert!(done.lease.is_none());
        assert_eq!(
            done.claim(now, Duration::from_secs(60)),
            Err(TransitionError::Finished(JobStatus::Success))
        );
        assert!(done.cancel(now).is_err());
        assert!(done.requeue().is_err());
    }

    #[test]
    fn live_lease_blocks_expired_lease_allows_takeover() {
        let now = Utc::now();
        let running = job(now).claim(now, Duration::from_secs(60)).unwrap();
        assert!(matches!(
            running.claim(now, Duration::from_secs(60)),
            Err(TransitionError::Leased(_))
        ));
        let later = now + chrono::Duration::seconds(61);
        let taken = running.claim(later, Duration::from_secs(60)).unwrap();
        assert_ne!(taken.lease.unwrap().token, running.lease.unwrap().token);
        assert_eq!(taken.runs, 2);
    }

    #[test]
    fn subscribed_transitions_leave_event_marks_in_the_same_version() {
        let now = Utc::now();
        let mut j = job(now);
        assert!(j
            .claim(now, Duration::from_secs(60))
            .unwrap()
            .webhook_pending
            .is_empty());
        j.webhook = Some(Webhook {
            url: "https://example.com/h".into(),
            events: vec![WebhookEvent::Running, WebhookEvent::Completed],
        });
        let running = j.claim(now, Duration::from_secs(60)).unwrap();
        assert_eq!(running.webhook_pending.len(), 1);
        assert_eq!(running.webhook_pending[0].event_type, EventType::JobRunning);
        // A takeover is not a new start.
        let later = now + chrono::Duration::seconds(61);
        let taken = running.claim(later, Duration::from_secs(60)).unwrap();
        assert_eq!(taken.webhook_pending.len(), 1);
        let token = taken.lease.unwrap().token;
        let done = taken
            .succeed(token, "p".into(), vec![], vec![], later)
            .unwrap();
        let types: Vec<_> = done.webhook_pending.iter().map(|e| e.event_type).collect();
        assert_eq!(types, [EventType::JobRunning, EventType::JobSucceeded]);
        assert_eq!(done.version, taken.version + 1);

        let first = done.webhook_pending[0].id.clone();
        let cleared = done
            .webhooks_enqueued(std::slice::from_ref(&first))
            .unwrap();
        assert_eq!(cleared.webhook_pending.len(), 1);
        assert_eq!(cleared.version, done.version + 1);
        assert!(cleared.webhooks_enqueued(&[first]).is_none());

        let mut recorded = cleared;
        for attempt in 1..=25 {
            recorded = recorded.record_delivery(WebhookDelivery {
                event_id: "e".into(),
                event_type: EventType::JobSucceeded,
                attempt,
                at: now,
                delivered: false,
                status_code: Some(500),
                error: None,
                latency_ms: 1,
            });
        }
        assert_eq!(recorded.webhook_deliveries.len(), MAX_WEBHOOK_DELIVERIES);
        assert_eq!(recorded.webhook_deliveries[0].attempt, 6);

        j.webhook = Some(Webhook {
            url: "https://example.com/h".into(),
            events: vec![WebhookEvent::Completed],
        });
        let canceled = j.cancel(now).unwrap();
        assert_eq!(
            canceled.webhook_pending[0].event_type,
            EventType::JobCanceled
        );
    }

    #[test]
    fn released_lease_can_be_claimed_at_once_and_failed_jobs_requeue() {
        let now = Utc::now();
        let running = job(now).claim(now, Duration::from_secs(60)).unwrap();
        let token = running.lease.unwrap().token;
        let released = running.release(token, vec![], now).unwrap();
        let again = released.claim(now, Duration::from_secs(60)).unwrap();
        let token = again.lease.unwrap().token;
        let err = JobError {
            code: "x".into(),
            message: "y".into(),
            retriable: true,
        };
        let failed = again.fail(token, err, vec![], now).unwrap();
        let pending = failed.requeue().unwrap();
        assert_eq!(pending.status, JobStatus::Pending);
        assert!(pending.error.is_none());
        assert_eq!(pending.cancel(now).unwrap().status, JobStatus::Canceled);
    }
}
