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
use kiln_shared::images::{inspect, ImageInfo, ImageLimits};
use kiln_shared::ports::{
    BlobStore, GeneratedImage, GenerationRequest, JobMessage, JobStore, ProviderError,
    ReceivedMessage, StoreError,
};
use kiln_shared::providers::{ProviderEntry, Providers};
use tokio::time::Instant;
use tracing::{field, info, info_span, warn, Instrument, Span};
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
    providers: Arc<Providers>,
    clock: Arc<dyn Clock>,
    config: WorkerConfig,
    limits: ImageLimits,
}

/// The code of a job that every provider failed on, transiently.
pub const PROVIDER_UNAVAILABLE: &str = "provider_unavailable";

/// Part of the lease kept free for storing the images and writing the result.
const MAX_LEASE_MARGIN: Duration = Duration::from_secs(5);

/// A provider's images after checking.
struct Checked {
    bytes: Vec<u8>,
    info: ImageInfo,
}

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
        Self {
            store,
            blobs,
            providers,
            clock,
            config,
            limits: ImageLimits::default(),
        }
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
                return Err(Outcome::Ack);
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
                    return Ok(claimed);
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

    /// Calls the providers in routing order until one gives usable images or refuses for good.
    async fn run(&self, job: Job, token: Uuid, receive_count: u32, deadline: Instant) -> Outcome {
        let req = generation_request(&job.request);
        let mut attempts = Vec::new();
        let mut reasons = Vec::new();
        for entry in self.providers.route(job.tier) {
            let name = entry.provider.name().to_owned();
            if Instant::now() >= deadline {
                reasons.push(format!("{name}: not tried, out of time"));
                continue;
            }
            let attempt = job.attempts.len() + attempts.len() + 1;
            let span = info_span!("provider", provider = %name, attempt);
            let started_at = self.clock.now();
            let t0 = Instant::now();
            let result = self
                .call(entry, &req, deadline)
                .instrument(span.clone())
                .await;
            let latency_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
            match result {
                Ok(images) => {
                    info!(parent: &span, latency_ms, images = images.len(), "provider succeeded");
                    attempts.push(Attempt {
                        provider: name.clone(),
                        outcome: "success".into(),
                        status_code: None,
                        latency_ms,
                        cost_usd: entry.cost_per_image_usd * images.len() as f64,
                        started_at,
                    });
                    return self.store_result(job, token, name, images, attempts).await;
                }
                Err(e) => {
                    warn!(parent: &span, latency_ms, error = %e, "provider failed");
                    attempts.push(Attempt {
                        provider: name.clone(),
                        outcome: e.code().to_owned(),
                        status_code: e.status(),
                        latency_ms,
                        cost_usd: 0.0,
                        started_at,
                    });
                    if !e.retriable() {
                        let error = JobError {
                            code: e.code().to_owned(),
                            message: e.to_string(),
                            retriable: false,
                        };
                        return self
                            .end_failed(&job, token, error, attempts, Outcome::Ack)
                            .await;
                    }
                    reasons.push(format!("{name}: {e}"));
                }
            }
        }
        if reasons.is_empty() {
            reasons.push(format!("no provider serves the {} tier", job.tier));
        }
        let message = format!("every provider failed: {}", reasons.join("; "));
        if receive_count >= self.config.max_receive_count {
            warn!(receive_count, %message, "last allowed delivery; failing the job");
            let error = JobError {
                code: PROVIDER_UNAVAILABLE.into(),
                message,
                retriable: true,
            };
            // Retry even once failed, so that the queue parks the message in the dead-letter
            // queue where operators look for replays.
            return self
                .end_failed(&job, token, error, attempts, Outcome::Retry)
                .await;
        }
        warn!(receive_count, %message, "releasing the job for a later delivery");
        let now = self.clock.now();
        match self
            .write(&job, |j| j.release(token, attempts.clone(), now))
            .await
        {
            Write::Lost(Some(current)) if current.status.is_terminal() => Outcome::Ack,
            Write::Lost(None) => Outcome::Ack,
            _ => Outcome::Retry,
        }
    }

    /// One provider call, bounded by `deadline` even if the provider ignores it, and its images
    /// checked.
    async fn call(
        &self,
        entry: &ProviderEntry,
        req: &GenerationRequest,
        deadline: Instant,
    ) -> Result<Vec<Checked>, ProviderError> {
        let t0 = Instant::now();
        let images = tokio::time::timeout_at(deadline, entry.provider.generate(req, deadline))
            .await
            .unwrap_or_else(|_| Err(ProviderError::Timeout(t0.elapsed())))?;
        let wanted = usize::from(req.n);
        if images.len() < wanted {
            return Err(ProviderError::InvalidImage(format!(
                "asked for {wanted} images, got {}",
                images.len()
            )));
        }
        let limits = self.limits;
        // Hashing up to 20 MiB per image is CPU work: keep it off the runtime's threads.
        tokio::task::spawn_blocking(move || check_images(images, wanted, &limits))
            .await
            .map_err(|e| ProviderError::InvalidImage(format!("image check did not finish: {e}")))?
    }

    /// Stores the images under their deterministic keys and marks the job `success`.
    async fn store_result(
        &self,
        job: Job,
        token: Uuid,
        provider: String,
        images: Vec<Checked>,
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
                    Write::Lost(Some(current)) if current.status.is_terminal() => Outcome::Ack,
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
                Outcome::Ack
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
                outcome
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
            Write::Done(_) => {
                info!(code = %error.code, retriable = error.retriable, "job failed");
                done
            }
            Write::Lost(Some(current)) if current.status.is_terminal() => Outcome::Ack,
            Write::Lost(None) => Outcome::Ack,
            Write::Lost(Some(_)) => Outcome::Retry,
            Write::Failed(e) => {
                warn!(error = %e, "could not mark the job failed");
                Outcome::Retry
            }
        }
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
        for round in 0..2 {
            let next = match transition(&base) {
                Ok(next) => next,
                Err(_) => return Write::Lost(Some(base)),
            };
            match self.store.update(&next).await {
                Ok(()) => return Write::Done(next),
                Err(StoreError::Conflict(_)) if round == 0 => match self.store.get(&job.id).await {
                    Ok(Some(fresh)) => base = fresh,
                    Ok(None) => return Write::Lost(None),
                    Err(e) => return Write::Failed(e),
                },
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

/// Checks the first `wanted` images; extra images are dropped.
fn check_images(
    images: Vec<GeneratedImage>,
    wanted: usize,
    limits: &ImageLimits,
) -> Result<Vec<Checked>, ProviderError> {
    images
        .into_iter()
        .take(wanted)
        .enumerate()
        .map(|(i, image)| {
            let info = inspect(&image.bytes, limits)
                .map_err(|e| ProviderError::InvalidImage(format!("image {i}: {e}")))?;
            Ok(Checked {
                bytes: image.bytes,
                info,
            })
        })
        .collect()
}
