//! One job message, start to end: claim the job under a lease, call the providers its tier may
//! use, check and store the images, and write the result, every write conditional on the version
//! read so that duplicates, cancels and takeovers cannot make a job end twice.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kiln_shared::clock::Clock;
use kiln_shared::domain::{
    Attempt, ImageRef, Job, JobError, JobId, JobRequest, JobStatus, TransitionError,
};
use kiln_shared::metrics;
use kiln_shared::ports::{
    BlobStore, GenerationRequest, JobMessage, JobStore, Queue, ReceivedMessage, StoreError,
};
use kiln_shared::providers::{CheckedImage, DispatchError, Dispatcher, Providers};
use kiln_shared::webhooks::WebhookMessage;
use tokio::time::Instant;
use tracing::{field, info, info_span, warn, Span};
use uuid::Uuid;

use crate::batch::{run_batch, Outcome};

/// How a worker runs jobs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// How long a claim holds before another worker may take the job over.
    pub lease: Duration,
    /// Time one run of a job may take.
    pub job_timeout: Duration,
    /// Deliveries of a message before the queue moves it to the dead-letter queue.
    pub max_receive_count: u32,
    /// Jobs run at once.
    pub concurrency: usize,
}

/// Runs job messages against the store, the blob store and the providers.
pub struct Worker {
    store: Arc<dyn JobStore>,
    blobs: Arc<dyn BlobStore>,
    dispatcher: Arc<Dispatcher>,
    clock: Arc<dyn Clock>,
    config: WorkerConfig,
    webhooks: Option<Arc<dyn Queue>>,
}

/// The code of a job that every provider failed on, transiently.
pub const PROVIDER_UNAVAILABLE: &str = "provider_unavailable";

/// Part of the lease kept free for storing the images and writing the result.
const MAX_LEASE_MARGIN: Duration = Duration::from_secs(5);

/// Tries of a conditional write that keeps losing to other writers (webhook deliveries record
/// their attempts on the job while it runs) before giving up for this delivery.
const WRITE_ROUNDS: usize = 4;

/// How a conditional write of the job went.
enum Write {
    /// Written; the job as stored now.
    Done(Job),
    /// The job moved on without us (canceled, finished, taken over, deleted); the current
    /// version if it still exists.
    Lost(Option<Job>),
    /// The store failed.
    Failed(StoreError),
}

impl Worker {
    /// A worker over these ports.
    pub fn new(
        store: Arc<dyn JobStore>,
        blobs: Arc<dyn BlobStore>,
        providers: Arc<Providers>,
        clock: Arc<dyn Clock>,
        config: WorkerConfig,
    ) -> Self {
        let dispatcher = Arc::new(Dispatcher::new(providers, clock.clone()));
        Self::with_dispatcher(store, blobs, dispatcher, clock, config)
    }

    /// A worker whose provider calls go through `dispatcher` (its retry and breaker policies).
    pub fn with_dispatcher(
        store: Arc<dyn JobStore>,
        blobs: Arc<dyn BlobStore>,
        dispatcher: Arc<Dispatcher>,
        clock: Arc<dyn Clock>,
        config: WorkerConfig,
    ) -> Self {
        Self {
            store,
            blobs,
            dispatcher,
            clock,
            config,
            webhooks: None,
        }
    }

    /// Sends the webhook events that transitions leave on jobs to `queue`.
    pub fn with_webhooks(mut self, queue: Arc<dyn Queue>) -> Self {
        self.webhooks = Some(queue);
        self
    }

    /// The worker's settings.
    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// The job store the worker writes to.
    pub fn store(&self) -> &Arc<dyn JobStore> {
        &self.store
    }

    /// The worker's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Runs a batch of job messages concurrently (at most `config.concurrency` at once), none
    /// past `deadline`, and returns the ids of the messages that must come back.
    pub async fn process_batch(
        &self,
        messages: Vec<ReceivedMessage>,
        deadline: Instant,
    ) -> Vec<String> {
        run_batch(
            messages,
            self.config.concurrency,
            message_span,
            |msg| async move { self.process_message(&msg, deadline).await },
        )
        .await
    }

    /// Runs one job message; the outcome says whether the message is done with or must come
    /// back.
    pub async fn process_message(&self, msg: &ReceivedMessage, deadline: Instant) -> Outcome {
        let job_id = match JobMessage::decode(&msg.body) {
            Ok(m) => m.job_id,
            Err(e) => {
                warn!(
                    message_id = %msg.message_id,
                    receive_count = msg.receive_count,
                    error = %e,
                    "undecodable message; leaving it to reach the dead-letter queue"
                );
                return Outcome::Retry;
            }
        };
        let job = match self.claim(job_id).await {
            Ok(job) => job,
            Err(outcome) => return outcome,
        };
        Span::current().record("user_id", field::display(&job.user_id));
        let Some(lease) = job.lease else {
            // `Job::claim` always sets a lease; nothing sensible to do without one.
            return Outcome::Retry;
        };
        let deadline = self.run_deadline(deadline, lease.until);
        self.run(job, lease.token, msg.receive_count, deadline)
            .await
    }

    /// Reads and claims the job; `Err` is the outcome when the job is not ours to run.
    async fn claim(&self, id: JobId) -> Result<Job, Outcome> {
        let mut job = self.read(&id).await?;
        for round in 0..2 {
            if job.status.is_terminal() {
                info!(status = %job.status, "job already ended; dropping the message");
                // A run that crashed between ending the job and enqueueing its webhook event
                // left the mark; this delivery repairs it.
                return Err(self.ended(job).await);
            }
            let claimed = match job.claim(self.clock.now(), self.config.lease) {
                Ok(claimed) => claimed,
                Err(TransitionError::Leased(until)) => {
                    info!(%until, "another worker holds the job; the message will come back");
                    return Err(Outcome::Retry);
                }
                Err(e) => {
                    info!(error = %e, "job cannot be claimed; dropping the message");
                    return Err(Outcome::Ack);
                }
            };
            match self.store.update(&claimed).await {
                Ok(()) => {
                    info!(run = claimed.runs, "job claimed");
                    if let (1, Some(started)) = (claimed.runs, claimed.started_at) {
                        metrics::queue_wait(claimed.created_at, started);
                    }
                    // A failed enqueue keeps the mark; the job's end sends it with its own.
                    return Ok(self.flush_webhooks(claimed).await.unwrap_or_else(|j| j));
                }
                Err(StoreError::Conflict(_)) if round == 0 => {
                    job = self.read(&id).await?;
                }
                Err(e) => {
                    warn!(error = %e, "could not claim the job");
                    return Err(Outcome::Retry);
                }
            }
        }
        Err(Outcome::Retry)
    }

    async fn read(&self, id: &JobId) -> Result<Job, Outcome> {
        match self.store.get(id).await {
            Ok(Some(job)) => Ok(job),
            Ok(None) => {
                warn!("job not found (expired or deleted); dropping the message");
                Err(Outcome::Ack)
            }
            Err(e) => {
                warn!(error = %e, "could not read the job");
                Err(Outcome::Retry)
            }
        }
    }

    /// The earliest of: the batch's deadline, the job timeout, and the lease's end less a margin
    /// for storing the result while the lease still holds.
    fn run_deadline(&self, batch_deadline: Instant, lease_until: DateTime<Utc>) -> Instant {
        let now = Instant::now();
        let lease_left = (lease_until - self.clock.now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        let margin = (self.config.lease / 10).min(MAX_LEASE_MARGIN);
        batch_deadline
            .min(now + self.config.job_timeout)
            .min(now + lease_left.saturating_sub(margin))
    }

    /// Has the dispatcher generate the images (retries, fallback and breakers are its business),
    /// then stores them, or ends or releases the job by what went wrong.
    async fn run(&self, job: Job, token: Uuid, receive_count: u32, deadline: Instant) -> Outcome {
        let req = generation_request(&job.request);
        let failure = match self.dispatcher.generate(job.tier, &req, deadline).await {
            Ok(generated) => {
                return self
                    .store_result(
                        job,
                        token,
                        generated.provider,
                        generated.images,
                        generated.attempts,
                    )
                    .await;
            }
            Err(failure) => failure,
        };
        let DispatchError { error, attempts } = failure;
        if !error.retriable {
            return self
                .end_failed(&job, token, error, attempts, Outcome::Ack)
                .await;
        }
        if receive_count >= self.config.max_receive_count {
            warn!(receive_count, message = %error.message, "last allowed delivery; failing the job");
            // Retry even once failed, so that the queue parks the message in the dead-letter
            // queue where operators look for replays.
            return self
                .end_failed(&job, token, error, attempts, Outcome::Retry)
                .await;
        }
        warn!(receive_count, message = %error.message, "releasing the job for a later delivery");
        metrics::job_ended("released");
        let now = self.clock.now();
        match self
            .write(&job, |j| j.release(token, attempts.clone(), now))
            .await
        {
            Write::Lost(Some(current)) if current.status.is_terminal() => self.ended(current).await,
            Write::Lost(None) => Outcome::Ack,
            _ => Outcome::Retry,
        }
    }

    /// Stores the images under their deterministic keys and marks the job `success`.
    async fn store_result(
        &self,
        job: Job,
        token: Uuid,
        provider: String,
        images: Vec<CheckedImage>,
        attempts: Vec<Attempt>,
    ) -> Outcome {
        let mut refs = Vec::with_capacity(images.len());
        for (i, image) in images.into_iter().enumerate() {
            let key = job.image_key(i, image.info.extension);
            let stored = self
                .blobs
                .put(&key, image.bytes, image.info.content_type)
                .await;
            refs.push(ImageRef {
                key,
                width: image.info.width,
                height: image.info.height,
                content_type: image.info.content_type.to_owned(),
                bytes: image.info.bytes,
                sha256: image.info.sha256,
            });
            if let Err(e) = stored {
                warn!(error = %e, "could not store an image; releasing the job");
                self.delete_images(&refs, &[]).await;
                let now = self.clock.now();
                return match self
                    .write(&job, |j| j.release(token, attempts.clone(), now))
                    .await
                {
                    Write::Lost(Some(current)) if current.status.is_terminal() => {
                        self.ended(current).await
                    }
                    Write::Lost(None) => Outcome::Ack,
                    _ => Outcome::Retry,
                };
            }
        }
        let now = self.clock.now();
        let cost: f64 = attempts.iter().map(|a| a.cost_usd).sum();
        match self
            .write(&job, |j| {
                j.succeed(token, provider.clone(), refs.clone(), attempts.clone(), now)
            })
            .await
        {
            Write::Done(done) => {
                info!(provider = %provider, images = done.images.len(), cost_usd = cost, "job succeeded");
                metrics::job_ended("success");
                self.ended(done).await
            }
            Write::Lost(current) => {
                let (keep, outcome) = match &current {
                    // Whoever holds the job now may be about to write these same keys.
                    Some(c) if !c.status.is_terminal() => {
                        info!(status = %c.status, "lease lost before the result was written; leaving the job to its holder");
                        return Outcome::Retry;
                    }
                    Some(c) if c.status == JobStatus::Success => (c.images.clone(), Outcome::Ack),
                    _ => (Vec::new(), Outcome::Ack),
                };
                info!(
                    status = current
                        .as_ref()
                        .map(|c| c.status.as_str())
                        .unwrap_or("deleted"),
                    "job ended without this run; deleting its images"
                );
                self.delete_images(&refs, &keep).await;
                match current {
                    Some(c) if outcome == Outcome::Ack => self.ended(c).await,
                    _ => outcome,
                }
            }
            Write::Failed(e) => {
                // The lease still holds: a later delivery takes over and overwrites the images.
                warn!(error = %e, "could not write the result");
                Outcome::Retry
            }
        }
    }

    /// Marks the job `failed`; `done` is the outcome once written.
    async fn end_failed(
        &self,
        job: &Job,
        token: Uuid,
        error: JobError,
        attempts: Vec<Attempt>,
        done: Outcome,
    ) -> Outcome {
        let now = self.clock.now();
        match self
            .write(job, |j| j.fail(token, error.clone(), attempts.clone(), now))
            .await
        {
            Write::Done(failed) => {
                info!(code = %error.code, retriable = error.retriable, "job failed");
                metrics::job_ended("failed");
                match self.ended(failed).await {
                    Outcome::Ack => done,
                    retry => retry,
                }
            }
            Write::Lost(Some(current)) if current.status.is_terminal() => self.ended(current).await,
            Write::Lost(None) => Outcome::Ack,
            Write::Lost(Some(_)) => Outcome::Retry,
            Write::Failed(e) => {
                warn!(error = %e, "could not mark the job failed");
                Outcome::Retry
            }
        }
    }

    /// The outcome for a message whose job has ended: done with, once the job's pending webhook
    /// events are on the webhook queue; otherwise it must come back to try again.
    async fn ended(&self, job: Job) -> Outcome {
        match self.flush_webhooks(job).await {
            Ok(_) => Outcome::Ack,
            Err(_) => Outcome::Retry,
        }
    }

    /// Sends the job's pending webhook events to the webhook queue, then clears their marks
    /// with a conditional write. Returns the job as stored now; `Err` (with the job as known)
    /// when the events could not be sent, so the marks stay for the next reader. An event sent
    /// whose mark could not be cleared is sent again later with the same id: receivers see a
    /// duplicate, never a loss.
    pub async fn flush_webhooks(&self, job: Job) -> Result<Job, Job> {
        let Some(queue) = &self.webhooks else {
            return Ok(job);
        };
        if job.webhook_pending.is_empty() {
            return Ok(job);
        }
        let bodies: Vec<String> = job
            .webhook_pending
            .iter()
            .map(|e| WebhookMessage::first(job.id, e).encode())
            .collect();
        if let Err(e) = queue.send(&bodies, Duration::ZERO).await {
            warn!(error = %e, "could not enqueue webhook events; the job keeps them marked");
            return Err(job);
        }
        let ids: Vec<String> = job.webhook_pending.iter().map(|e| e.id.clone()).collect();
        info!(events = ids.len(), "webhook events enqueued");
        let mut base = job;
        for _ in 0..WRITE_ROUNDS {
            let Some(next) = base.webhooks_enqueued(&ids) else {
                return Ok(base);
            };
            match self.store.update(&next).await {
                Ok(()) => return Ok(next),
                Err(StoreError::Conflict(_)) => match self.store.get(&base.id).await {
                    Ok(Some(fresh)) => base = fresh,
                    Ok(None) => return Ok(base),
                    Err(e) => {
                        warn!(error = %e, "could not clear webhook marks");
                        return Ok(base);
                    }
                },
                Err(e) => {
                    warn!(error = %e, "could not clear webhook marks");
                    return Ok(base);
                }
            }
        }
        Ok(base)
    }

    /// Applies `transition` and writes it if the stored job is still the version it was made
    /// from; on a conflict, re-reads once and applies it to the fresh version (it only applies
    /// while this worker's lease is current).
    async fn write(
        &self,
        job: &Job,
        transition: impl Fn(&Job) -> Result<Job, TransitionError>,
    ) -> Write {
        let mut base = job.clone();
        for round in 0..WRITE_ROUNDS {
            let next = match transition(&base) {
                Ok(next) => next,
                Err(_) => return Write::Lost(Some(base)),
            };
            match self.store.update(&next).await {
                Ok(()) => return Write::Done(next),
                Err(StoreError::Conflict(_)) if round + 1 < WRITE_ROUNDS => {
                    match self.store.get(&job.id).await {
                        Ok(Some(fresh)) => base = fresh,
                        Ok(None) => return Write::Lost(None),
                        Err(e) => return Write::Failed(e),
                    }
                }
                Err(e) => return Write::Failed(e),
            }
        }
        Write::Failed(StoreError::Conflict(
            "the job kept changing while writing it".into(),
        ))
    }

    /// Deletes the images of `refs` whose keys are not in `keep`; failures are only logged, a
    /// leftover file costs space, not correctness.
    async fn delete_images(&self, refs: &[ImageRef], keep: &[ImageRef]) {
        for r in refs {
            if keep.iter().any(|k| k.key == r.key) {
                continue;
            }
            if let Err(e) = self.blobs.delete(&r.key).await {
                warn!(key = %r.key, error = %e, "could not delete an image");
            }
        }
    }
}

/// The span of one message: the job id when the body has one; `user_id` once the job is read.
fn message_span(msg: &ReceivedMessage) -> Span {
    let job_id = JobMessage::decode(&msg.body)
        .map(|m| m.job_id.to_string())
        .unwrap_or_default();
    info_span!(
        "job_message",
        message_id = %msg.message_id,
        receive_count = msg.receive_count,
        job_id = %job_id,
        user_id = field::Empty,
    )
}

/// What providers are asked for. Style and character are labels the client chose; providers
/// only take text, so they travel as prompt fragments.
fn generation_request(r: &JobRequest) -> GenerationRequest {
    let mut prompt = r.prompt.clone();
    for (label, value) in [("character", &r.character), ("style", &r.style)] {
        if let Some(v) = value {
            prompt.push_str(&format!(", {label}: {v}"));
        }
    }
    GenerationRequest {
        prompt,
        negative_prompt: r.negative_prompt.clone(),
        n: r.n,
        size: r.size,
        seed: r.seed,
        quality: r.quality,
    }
}
