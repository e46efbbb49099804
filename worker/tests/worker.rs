//! The worker against the local adapters in a temporary directory, with a manual clock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use kiln_shared::adapters::local::{LocalBackend, LocalOptions};
use kiln_shared::clock::{Clock, ManualClock};
use kiln_shared::domain::{Job, JobStatus, NewJob, SubmitJob, Tier, UserId};
use kiln_shared::ports::{
    BlobStore, GeneratedImage, GenerationRequest, ImageProvider, JobMessage, JobStore,
    ProviderError, Queue, ReceivedMessage,
};
use kiln_shared::providers::breaker::BreakerPolicy;
use kiln_shared::providers::{Dispatcher, LocalProvider, ProviderEntry, Providers, RetryPolicy};
use kiln_worker::{run_pool, sweep, Outcome, Worker, WorkerConfig, PROVIDER_UNAVAILABLE};
use tokio::time::Instant;

const LEASE: Duration = Duration::from_secs(60);
const MAX_RECEIVES: u32 = 3;

/// What a test provider does when called.
#[derive(Clone)]
enum Behaviour {
    /// Render with the built-in renderer, after a real delay.
    Render(Duration),
    /// Fail transiently.
    Transient,
    /// Refuse for good.
    Reject,
    /// Return bytes that are not an image.
    Garbage,
    /// Cancel the job in the store, then render.
    CancelThenRender(Arc<dyn JobStore>, Arc<dyn Clock>),
}

struct Fake {
    name: String,
    behaviour: Behaviour,
    calls: AtomicUsize,
}

#[async_trait]
impl ImageProvider for Fake {
    fn name(&self) -> &str {
        &self.name
    }

    async fn generate(
        &self,
        req: &GenerationRequest,
        deadline: Instant,
    ) -> Result<Vec<GeneratedImage>, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let local = LocalProvider::new(Duration::ZERO);
        match &self.behaviour {
            Behaviour::Render(delay) => {
                tokio::time::sleep(*delay).await;
                local.generate(req, deadline).await
            }
            Behaviour::Transient => Err(ProviderError::Transient {
                status: Some(503),
                message: "overloaded".into(),
                retry_after: None,
            }),
            Behaviour::Reject => Err(ProviderError::Rejected {
                status: Some(400),
                code: "content_policy".into(),
                message: "not allowed".into(),
            }),
            Behaviour::Garbage => Ok(vec![GeneratedImage {
                bytes: b"<html>oops</html>".to_vec(),
            }]),
            Behaviour::CancelThenRender(store, clock) => {
                let jobs = store
                    .list(&UserId::parse("alice").unwrap(), &Default::default())
                    .await
                    .unwrap();
                for job in jobs.jobs {
                    store
                        .update(&job.cancel(clock.now()).unwrap())
                        .await
                        .unwrap();
                }
                local.generate(req, deadline).await
            }
        }
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    backend: LocalBackend,
    clock: ManualClock,
    worker: Arc<Worker>,
    fakes: Vec<Arc<Fake>>,
}

impl Harness {
    /// A worker whose providers behave as given, as (name, cost, behaviour), all serving both
    /// tiers, tried in the order given.
    fn new(providers: Vec<(&'static str, f64, Behaviour)>) -> Self {
        Self::with(|_, _| providers)
    }

    fn with(
        make: impl FnOnce(Arc<dyn JobStore>, Arc<dyn Clock>) -> Vec<(&'static str, f64, Behaviour)>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(Utc::now());
        let backend = LocalBackend::open(
            dir.path(),
            &LocalOptions {
                visibility_timeout: Duration::from_secs(30),
                max_receive_count: MAX_RECEIVES,
                url_signing_secret: None,
            },
            Arc::new(clock.clone()),
        )
        .unwrap();
        let store: Arc<dyn JobStore> = backend.store.clone();
        let configured: Vec<(Arc<Fake>, f64)> = make(store.clone(), Arc::new(clock.clone()))
            .into_iter()
            .map(|(name, cost, behaviour)| {
                let fake = Arc::new(Fake {
                    name: name.into(),
                    behaviour,
                    calls: AtomicUsize::new(0),
                });
                (fake, cost)
            })
            .collect();
        let entries = configured
            .iter()
            .enumerate()
            .map(|(i, (fake, cost))| ProviderEntry {
                provider: fake.clone(),
                cost_per_image_usd: *cost,
                priority: i as u32 + 1,
                tiers: vec![Tier::Standard, Tier::Vip],
            })
            .collect();
        let fakes = configured.into_iter().map(|(f, _)| f).collect();
        // Retries happen (three calls a provider) but their waits are skipped.
        let dispatcher = Dispatcher::with_policies(
            Arc::new(Providers::new(entries)),
            Arc::new(clock.clone()),
            RetryPolicy::default(),
            BreakerPolicy::default(),
            Arc::new(|_| Box::pin(async {})),
        );
        let worker = Arc::new(Worker::with_dispatcher(
            store,
            backend.blobs.clone(),
            Arc::new(dispatcher),
            Arc::new(clock.clone()),
            WorkerConfig {
                lease: LEASE,
                job_timeout: Duration::from_secs(30),
                max_receive_count: MAX_RECEIVES,
                concurrency: 4,
            },
        ));
        Self {
            _dir: dir,
            backend,
            clock,
            worker,
            fakes,
        }
    }

    fn calls(&self) -> usize {
        self.fakes
            .iter()
            .map(|f| f.calls.load(Ordering::SeqCst))
            .sum()
    }

    async fn job(&self, n: i64) -> Job {
        let (request, _) = SubmitJob {
            prompt: Some("a kiln at night".into()),
            n: Some(n),
            size: Some("256x256".into()),
            ..Default::default()
        }
        .validate()
        .unwrap();
        let job = Job::new(
            NewJob {
                user_id: UserId::parse("alice").unwrap(),
                tier: Tier::Standard,
                request,
                webhook: None,
                metadata: None,
            },
            self.clock.now(),
            Duration::from_secs(86_400),
        );
        self.backend.store.insert(&job).await.unwrap();
        job
    }

    async fn get(&self, job: &Job) -> Job {
        self.backend.store.get(&job.id).await.unwrap().unwrap()
    }

    async fn process(&self, job: &Job, receive_count: u32) -> Outcome {
        self.worker
            .process_message(
                &message(&JobMessage { job_id: job.id }.encode(), receive_count),
                far(),
            )
            .await
    }
}

fn message(body: &str, receive_count: u32) -> ReceivedMessage {
    ReceivedMessage {
        message_id: uuid::Uuid::new_v4().to_string(),
        receipt_handle: uuid::Uuid::new_v4().to_string(),
        body: body.into(),
        receive_count,
        sent_at: Utc::now(),
    }
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

fn render() -> Behaviour {
    Behaviour::Render(Duration::ZERO)
}

#[tokio::test]
async fn success_stores_decodable_pngs_under_deterministic_keys() {
    let h = Harness::new(vec![("paid", 0.02, render())]);
    let job = h.job(2).await;
    assert_eq!(h.process(&job, 1).await, Outcome::Ack);

    let done = h.get(&job).await;
    assert_eq!(done.status, JobStatus::Success);
    assert_eq!(done.provider.as_deref(), Some("paid"));
    assert!((done.cost_usd - 0.04).abs() < 1e-9, "{}", done.cost_usd);
    assert_eq!(done.attempts.len(), 1);
    assert_eq!(done.attempts[0].outcome, "success");
    assert!(done.lease.is_none());
    assert_eq!(done.images.len(), 2);
    for (i, img) in done.images.iter().enumerate() {
        assert_eq!(img.key, job.image_key(i, "png"));
        assert_eq!(img.content_type, "image/png");
        let blob = h.backend.blobs.get(&img.key).await.unwrap().unwrap();
        assert_eq!(blob.bytes.len() as u64, img.bytes);
        let decoded = image::load_from_memory(&blob.bytes).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (256, 256));
        assert_eq!((img.width, img.height), (256, 256));
    }
}

#[tokio::test]
async fn a_message_for_a_finished_job_is_acked_without_calling_a_provider() {
    let h = Harness::new(vec![("local", 0.0, render())]);
    let job = h.job(1).await;
    assert_eq!(h.process(&job, 1).await, Outcome::Ack);
    assert_eq!(h.calls(), 1);
    assert_eq!(h.process(&job, 1).await, Outcome::Ack);
    assert_eq!(h.calls(), 1);
    assert_eq!(h.get(&job).await.runs, 1);
}

#[tokio::test]
async fn duplicates_processed_concurrently_call_the_provider_once() {
    let h = Harness::new(vec![(
        "local",
        0.0,
        Behaviour::Render(Duration::from_millis(200)),
    )]);
    let job = h.job(1).await;
    let body = JobMessage { job_id: job.id }.encode();
    let (a, b) = (message(&body, 1), message(&body, 1));
    let failed = h
        .worker
        .process_batch(vec![a.clone(), b.clone()], far())
        .await;
    assert_eq!(h.calls(), 1);
    // The loser found a live lease and must come back; once back, the job is done.
    assert_eq!(failed.len(), 1);
    assert!(failed[0] == a.message_id || failed[0] == b.message_id);
    assert_eq!(h.get(&job).await.status, JobStatus::Success);
    assert_eq!(h.worker.process_message(&a, far()).await, Outcome::Ack);
    assert_eq!(h.calls(), 1);
}

#[tokio::test]
async fn a_live_lease_makes_the_message_come_back_an_expired_one_is_taken_over() {
    let h = Harness::new(vec![("local", 0.0, render())]);
    let job = h.job(1).await;
    let held = job.claim(h.clock.now(), LEASE).unwrap();
    h.backend.store.update(&held).await.unwrap();

    assert_eq!(h.process(&job, 1).await, Outcome::Retry);
    assert_eq!(h.calls(), 0);

    h.clock.advance(LEASE + Duration::from_secs(1));
    assert_eq!(h.process(&job, 2).await, Outcome::Ack);
    let done = h.get(&job).await;
    assert_eq!(done.status, JobStatus::Success);
    assert_eq!(done.runs, 2);
}

#[tokio::test]
async fn transient_failures_release_then_fail_retriable_on_the_last_receive() {
    let h = Harness::new(vec![
        ("first", 0.0, Behaviour::Transient),
        ("second", 0.0, Behaviour::Garbage),
    ]);
    let job = h.job(1).await;

    assert_eq!(h.process(&job, 1).await, Outcome::Retry);
    let released = h.get(&job).await;
    assert_eq!(released.status, JobStatus::Running);
    assert_eq!(released.lease.unwrap().until, h.clock.now());
    let outcomes: Vec<_> = released
        .attempts
        .iter()
        .map(|a| a.outcome.as_str())
        .collect();
    // The transient provider is retried before falling back; a bad image is not retried.
    assert_eq!(
        outcomes,
        [
            "provider_error",
            "provider_error",
            "provider_error",
            "invalid_image"
        ]
    );
    assert_eq!(released.attempts[0].status_code, Some(503));

    // Released: the next delivery claims at once, without waiting for the lease.
    assert_eq!(h.process(&job, MAX_RECEIVES).await, Outcome::Retry);
    let failed = h.get(&job).await;
    assert_eq!(failed.status, JobStatus::Failed);
    let error = failed.error.unwrap();
    assert_eq!(error.code, PROVIDER_UNAVAILABLE);
    assert!(error.retriable);
    assert!(error.message.contains("first") && error.message.contains("second"));
    assert_eq!(failed.attempts.len(), 8, "both runs' attempts are kept");
    assert_eq!(failed.runs, 2);
    assert_eq!(h.calls(), 8);
}

#[tokio::test]
async fn a_rejection_fails_the_job_for_good_without_fallback() {
    let h = Harness::new(vec![
        ("strict", 0.0, Behaviour::Reject),
        ("local", 0.0, render()),
    ]);
    let job = h.job(1).await;
    assert_eq!(h.process(&job, 1).await, Outcome::Ack);
    let failed = h.get(&job).await;
    assert_eq!(failed.status, JobStatus::Failed);
    let error = failed.error.unwrap();
    assert_eq!(error.code, "content_policy");
    assert!(!error.retriable);
    assert_eq!(h.fakes[1].calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_poison_body_comes_back_so_it_reaches_the_dead_letter_queue() {
    let h = Harness::new(vec![("local", 0.0, render())]);
    for body in [
        "",
        "not json",
        r#"{"job_id": "nope"}"#,
        r#"{"job_id": null}"#,
    ] {
        let outcome = h.worker.process_message(&message(body, 1), far()).await;
        assert_eq!(outcome, Outcome::Retry, "{body:?}");
    }
    assert_eq!(h.calls(), 0);
}

#[tokio::test]
async fn a_job_canceled_during_the_run_stays_canceled_and_loses_its_images() {
    let h = Harness::with(|store, clock| {
        vec![("local", 0.0, Behaviour::CancelThenRender(store, clock))]
    });
    let job = h.job(2).await;
    assert_eq!(h.process(&job, 1).await, Outcome::Ack);
    let canceled = h.get(&job).await;
    assert_eq!(canceled.status, JobStatus::Canceled);
    assert!(canceled.images.is_empty());
    for i in 0..2 {
        assert!(h
            .backend
            .blobs
            .get(&job.image_key(i, "png"))
            .await
            .unwrap()
            .is_none());
    }
}

#[tokio::test]
async fn a_batch_returns_exactly_the_failed_message_ids() {
    let h = Harness::new(vec![("local", 0.0, render())]);
    let good = h.job(1).await;
    let gone = JobMessage {
        job_id: kiln_shared::domain::JobId::new(),
    };
    let held = h.job(1).await;
    h.backend
        .store
        .update(&held.claim(h.clock.now(), LEASE).unwrap())
        .await
        .unwrap();
    let messages = vec![
        message(&JobMessage { job_id: good.id }.encode(), 1),
        message("poison", 1),
        message(&gone.encode(), 1),
        message(&JobMessage { job_id: held.id }.encode(), 1),
    ];
    let expected = vec![
        messages[1].message_id.clone(),
        messages[3].message_id.clone(),
    ];
    assert_eq!(h.worker.process_batch(messages, far()).await, expected);
    assert_eq!(h.get(&good).await.status, JobStatus::Success);
}

#[tokio::test]
async fn the_pool_runs_queued_jobs_and_stops_on_shutdown() {
    let h = Harness::new(vec![("local", 0.0, render())]);
    let jobs = [h.job(1).await, h.job(1).await, h.job(1).await];
    let bodies: Vec<String> = jobs
        .iter()
        .map(|j| JobMessage { job_id: j.id }.encode())
        .collect();
    h.backend
        .jobs_queue
        .send(&bodies, Duration::ZERO)
        .await
        .unwrap();

    let (stop, rx) = tokio::sync::watch::channel(false);
    let queue: Arc<dyn Queue> = h.backend.jobs_queue.clone();
    let pool = tokio::spawn(run_pool(h.worker.clone(), queue, rx));
    let waited = Instant::now();
    loop {
        let mut done = 0;
        for job in &jobs {
            if h.get(job).await.status == JobStatus::Success {
                done += 1;
            }
        }
        if done == jobs.len() {
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "jobs did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the pool settle the messages before stopping it.
    while h.backend.jobs_queue.depth().await.unwrap() > 0 {
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "messages were not deleted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), pool)
        .await
        .expect("pool stops")
        .unwrap();
}

#[tokio::test]
async fn the_sweep_requeues_stale_pending_jobs() {
    let h = Harness::new(vec![("local", 0.0, render())]);
    let stale = h.job(1).await;
    h.clock.advance(Duration::from_secs(6 * 60));
    let _fresh = h.job(1).await;
    let queue: Arc<dyn Queue> = h.backend.jobs_queue.clone();
    let report = sweep(&h.worker, &*queue).await;
    assert_eq!(report.requeued, 1);
    let received = queue.receive(10, Duration::ZERO).await.unwrap();
    assert_eq!(received.len(), 1);
    assert_eq!(
        JobMessage::decode(&received[0].body).unwrap().job_id,
        stale.id
    );
}
