//! Providers over the real worker, against the fault-injecting fake provider: retries, Retry-After,
//! fallback, fail-fast, the circuit breaker, tier routing, deadlines, bad images, secrets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use kiln_shared::adapters::local::{LocalBackend, LocalOptions};
use kiln_shared::clock::{Clock, ManualClock};
use kiln_shared::domain::{Job, JobStatus, NewJob, SubmitJob, Tier, UserId};
use kiln_shared::ports::{JobMessage, JobStore, ReceivedMessage};
use kiln_shared::providers::breaker::BreakerPolicy;
use kiln_shared::providers::dispatch::Sleeper;
use kiln_shared::providers::{file, Dispatcher, Providers, RetryPolicy};
use kiln_tests::app::{TestApp, TestOptions};
use kiln_tests::fake_provider::{Behavior, FakeProvider};
use kiln_worker::{Outcome, Worker, WorkerConfig};
use serde_json::{json, Value};
use tokio::time::Instant;

const KEY: &str = "sk-test-5f0c1c2e-secret";

/// One provider of a test file: `(name, protocol, fake, cost, priority, tiers)`.
type Spec<'a> = (&'a str, &'a str, &'a FakeProvider, f64, u32, &'a [&'a str]);

/// `[[provider]]` tables for the specs.
fn toml(entries: &[Spec<'_>]) -> String {
    let mut out = String::new();
    for (name, protocol, fake, cost, priority, tiers) in entries {
        let endpoint = if *protocol == "openai" {
            format!("{}/v1", fake.base_url)
        } else {
            fake.base_url.clone()
        };
        let tiers: Vec<String> = tiers.iter().map(|t| format!("\"{t}\"")).collect();
        out.push_str(&format!(
            "[[provider]]\nname = \"{name}\"\nprotocol = \"{protocol}\"\nendpoint = \"{endpoint}\"\nmodel = \"m\"\napi_key_env = \"FAKE_KEY\"\ncost_per_image_usd = {cost}\npriority = {priority}\ntiers = [{}]\ntimeout = \"5s\"\nmax_concurrency = 4\n\n",
            tiers.join(", ")
        ));
    }
    out
}

fn providers(text: &str) -> Providers {
    let env = |k: &str| (k == "FAKE_KEY").then(|| KEY.to_owned());
    file::parse(text, "test-providers.toml", &env, reqwest::Client::new())
        .expect("providers file is valid")
}

/// Records the waits the dispatcher asks for and skips them.
fn recording_sleeper() -> (Sleeper, Arc<Mutex<Vec<Duration>>>) {
    let waits = Arc::new(Mutex::new(Vec::new()));
    let w = waits.clone();
    (
        Arc::new(move |d| {
            w.lock().unwrap().push(d);
            Box::pin(async {})
        }),
        waits,
    )
}

struct Harness {
    worker: Worker,
    store: Arc<dyn JobStore>,
    clock: ManualClock,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new(
        providers: Providers,
        retry: RetryPolicy,
        breaker: BreakerPolicy,
        sleeper: Sleeper,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(Utc::now());
        let opts = LocalOptions {
            visibility_timeout: Duration::from_secs(60),
            max_receive_count: 3,
            url_signing_secret: None,
        };
        let backend = LocalBackend::open(dir.path(), &opts, Arc::new(clock.clone())).unwrap();
        let dispatcher = Dispatcher::with_policies(
            Arc::new(providers),
            Arc::new(clock.clone()),
            retry,
            breaker,
            sleeper,
        );
        let store: Arc<dyn JobStore> = backend.store.clone();
        let worker = Worker::with_dispatcher(
            store.clone(),
            backend.blobs.clone(),
            Arc::new(dispatcher),
            Arc::new(clock.clone()),
            WorkerConfig {
                lease: Duration::from_secs(60),
                job_timeout: Duration::from_secs(20),
                max_receive_count: 3,
                concurrency: 4,
            },
        );
        Self {
            worker,
            store,
            clock,
            _dir: dir,
        }
    }

    fn fast(providers: Providers) -> (Self, Arc<Mutex<Vec<Duration>>>) {
        let (sleeper, waits) = recording_sleeper();
        (
            Self::new(
                providers,
                RetryPolicy::default(),
                BreakerPolicy::default(),
                sleeper,
            ),
            waits,
        )
    }

    async fn job(&self, tier: Tier, n: u8) -> Job {
        let (request, _) = SubmitJob {
            prompt: Some("a fox".into()),
            n: Some(i64::from(n)),
            size: Some("256x256".into()),
            ..Default::default()
        }
        .validate()
        .unwrap();
        let job = Job::new(
            NewJob {
                user_id: UserId::parse("pat").unwrap(),
                tier,
                request,
                webhook: None,
                metadata: None,
            },
            self.clock.now(),
            Duration::from_secs(3600),
        );
        self.store.insert(&job).await.unwrap();
        job
    }

    async fn run(&self, job: &Job, receive_count: u32, budget: Duration) -> (Outcome, Job) {
        let msg = ReceivedMessage {
            message_id: format!("m-{}-{receive_count}", job.id),
            receipt_handle: "r".into(),
            body: JobMessage { job_id: job.id }.encode(),
            receive_count,
            sent_at: Utc::now(),
        };
        let outcome = self
            .worker
            .process_message(&msg, Instant::now() + budget)
            .await;
        (outcome, self.store.get(&job.id).await.unwrap().unwrap())
    }
}

fn outcomes(job: &Job) -> Vec<String> {
    job.attempts
        .iter()
        .map(|a| format!("{}:{}", a.provider, a.outcome))
        .collect()
}

#[tokio::test]
async fn transient_errors_are_retried_then_succeed() {
    let a = FakeProvider::start().await;
    a.script([
        Behavior::ServerError(503),
        Behavior::DropMidBody,
        Behavior::Ok,
    ]);
    let (h, waits) = Harness::fast(providers(&toml(&[(
        "a",
        "openai",
        &a,
        0.01,
        1,
        &["standard", "vip"],
    )])));
    let job = h.job(Tier::Standard, 2).await;
    let (outcome, job) = h.run(&job, 1, Duration::from_secs(20)).await;
    assert_eq!(outcome, Outcome::Ack);
    assert_eq!(job.status, JobStatus::Success);
    assert_eq!(
        outcomes(&job),
        ["a:provider_error", "a:provider_error", "a:success"]
    );
    assert_eq!(job.attempts[0].status_code, Some(503));
    assert_eq!(a.calls(), 3);
    assert!(
        (job.cost_usd - 0.02).abs() < 1e-9,
        "only the successful call costs: {}",
        job.cost_usd
    );
    let waits = waits.lock().unwrap().clone();
    assert_eq!(waits.len(), 2, "two backoffs");
    assert!(
        waits[0] <= Duration::from_millis(250) && waits[1] <= Duration::from_millis(500),
        "full jitter under the exponential ceiling: {waits:?}"
    );
}

#[tokio::test]
async fn retry_after_is_honoured_in_seconds_and_as_a_date() {
    // Seconds, with real time: the second call comes at least 2 s after the first.
    let a = FakeProvider::start().await;
    a.script([Behavior::RateLimited(Some("2".into())), Behavior::Ok]);
    let h = Harness::new(
        providers(&toml(&[("a", "openai", &a, 0.0, 1, &["standard", "vip"])])),
        RetryPolicy::default(),
        BreakerPolicy::default(),
        kiln_shared::providers::dispatch::tokio_sleeper(),
    );
    let job = h.job(Tier::Standard, 1).await;
    let (_, job) = h.run(&job, 1, Duration::from_secs(20)).await;
    assert_eq!(job.status, JobStatus::Success);
    assert_eq!(outcomes(&job), ["a:rate_limited", "a:success"]);
    let r = a.requests();
    let gap = r[1].at - r[0].at;
    assert!(gap >= Duration::from_secs(2), "waited {gap:?}");

    // An HTTP date 3 s ahead: the wait asked of the sleeper covers it.
    let b = FakeProvider::start().await;
    let date = httpdate_in(Duration::from_secs(3));
    b.script([Behavior::RateLimited(Some(date)), Behavior::Ok]);
    let (h, waits) = Harness::fast(providers(&toml(&[(
        "b",
        "openai",
        &b,
        0.0,
        1,
        &["standard", "vip"],
    )])));
    let job = h.job(Tier::Standard, 1).await;
    let (_, job) = h.run(&job, 1, Duration::from_secs(20)).await;
    assert_eq!(job.status, JobStatus::Success);
    let waits = waits.lock().unwrap().clone();
    assert!(
        waits[0] >= Duration::from_secs(1),
        "Retry-After date honoured: {waits:?}"
    );

    // A Retry-After beyond the deadline is not waited for: the provider is left at once.
    let c = FakeProvider::start().await;
    c.set_default(Behavior::RateLimited(Some("60".into())));
    let (h, waits) = Harness::fast(providers(&toml(&[(
        "c",
        "openai",
        &c,
        0.0,
        1,
        &["standard", "vip"],
    )])));
    let job = h.job(Tier::Standard, 1).await;
    let (outcome, job) = h.run(&job, 1, Duration::from_secs(5)).await;
    assert_eq!(outcome, Outcome::Retry);
    assert_eq!(c.calls(), 1);
    assert!(waits.lock().unwrap().is_empty());
    assert_eq!(
        job.status,
        JobStatus::Running,
        "released for a later delivery"
    );
}

fn httpdate_in(d: Duration) -> String {
    // RFC 7231 IMF-fixdate, as chrono prints it.
    (Utc::now() + chrono::Duration::from_std(d).unwrap())
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

#[tokio::test]
async fn a_failing_provider_falls_back_to_the_next_and_the_winner_is_recorded() {
    let a = FakeProvider::start().await;
    a.set_default(Behavior::ServerError(500));
    let b = FakeProvider::start().await;
    let (h, _) = Harness::fast(providers(&toml(&[
        ("cheap", "openai", &a, 0.002, 1, &["standard", "vip"]),
        ("backup", "stability", &b, 0.004, 2, &["standard", "vip"]),
    ])));
    let job = h.job(Tier::Standard, 2).await;
    let (outcome, job) = h.run(&job, 1, Duration::from_secs(20)).await;
    assert_eq!(outcome, Outcome::Ack);
    assert_eq!(job.status, JobStatus::Success);
    assert_eq!(job.provider.as_deref(), Some("backup"));
    assert_eq!(a.calls(), 3, "the first provider got its retries");
    assert_eq!(b.calls(), 2, "stability makes one call per image");
    assert_eq!(
        outcomes(&job),
        [
            "cheap:provider_error",
            "cheap:provider_error",
            "cheap:provider_error",
            "backup:success"
        ]
    );
    assert!((job.cost_usd - 0.008).abs() < 1e-9);
    let form = String::from_utf8_lossy(&b.requests()[0].body).into_owned();
    assert!(
        form.contains("a fox") && form.contains("aspect_ratio"),
        "multipart form: {form}"
    );
}

#[tokio::test]
async fn a_content_policy_refusal_fails_fast_without_fallback() {
    let a = FakeProvider::start().await;
    a.set_default(Behavior::ContentPolicy);
    let b = FakeProvider::start().await;
    let (h, _) = Harness::fast(providers(&toml(&[
        ("a", "openai", &a, 0.0, 1, &["standard", "vip"]),
        ("b", "openai", &b, 0.0, 2, &["standard", "vip"]),
    ])));
    let job = h.job(Tier::Standard, 1).await;
    let (outcome, job) = h.run(&job, 1, Duration::from_secs(20)).await;
    assert_eq!(outcome, Outcome::Ack, "nothing to retry");
    assert_eq!(job.status, JobStatus::Failed);
    let error = job.error.unwrap();
    assert_eq!(error.code, "content_policy");
    assert!(!error.retriable);
    assert_eq!((a.calls(), b.calls()), (1, 0));
}

#[tokio::test]
async fn a_bad_image_is_rejected_and_made_elsewhere() {
    let a = FakeProvider::start().await;
    a.set_default(Behavior::InvalidImage);
    let b = FakeProvider::start().await;
    b.set_default(Behavior::OkUrl);
    let (h, _) = Harness::fast(providers(&toml(&[
        ("a", "openai", &a, 0.0, 1, &["standard", "vip"]),
        ("b", "openai", &b, 0.0, 2, &["standard", "vip"]),
    ])));
    let job = h.job(Tier::Standard, 1).await;
    let (_, job) = h.run(&job, 1, Duration::from_secs(20)).await;
    assert_eq!(job.status, JobStatus::Success);
    assert_eq!(outcomes(&job), ["a:invalid_image", "b:success"]);
    assert_eq!(
        a.calls(),
        1,
        "a bad image is not asked for again from the same provider"
    );
    assert_eq!(
        (job.images[0].width, job.images[0].height),
        (256, 256),
        "downloaded from the url answer"
    );
}

#[tokio::test]
async fn the_breaker_opens_skips_half_opens_and_closes() {
    let a = FakeProvider::start().await;
    a.set_default(Behavior::ServerError(503));
    let b = FakeProvider::start().await;
    let (sleeper, _) = recording_sleeper();
    let h = Harness::new(
        providers(&toml(&[
            ("a", "openai", &a, 0.001, 1, &["standard", "vip"]),
            ("b", "openai", &b, 0.002, 2, &["standard", "vip"]),
        ])),
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
        BreakerPolicy {
            failure_threshold: 2,
            cool_down: Duration::from_secs(30),
        },
        sleeper,
    );
    for _ in 0..2 {
        let job = h.job(Tier::Standard, 1).await;
        let (_, job) = h.run(&job, 1, Duration::from_secs(20)).await;
        assert_eq!(job.provider.as_deref(), Some("b"));
    }
    assert_eq!(a.calls(), 2);
    // Open: "a" is skipped without a call.
    let job = h.job(Tier::Standard, 1).await;
    let (_, job) = h.run(&job, 1, Duration::from_secs(20)).await;
    assert_eq!(outcomes(&job), ["a:circuit_open", "b:success"]);
    assert_eq!(a.calls(), 2);
    // After the cool-down one trial goes through; it succeeds and the circuit closes.
    a.set_default(Behavior::Ok);
    h.clock.advance(Duration::from_secs(31));
    for _ in 0..2 {
        let job = h.job(Tier::Standard, 1).await;
        let (_, job) = h.run(&job, 1, Duration::from_secs(20)).await;
        assert_eq!(job.provider.as_deref(), Some("a"));
    }
    assert_eq!(a.calls(), 4);
}

#[tokio::test]
async fn vip_starts_with_the_best_provider_standard_with_the_cheapest() {
    let cheap = FakeProvider::start().await;
    let best = FakeProvider::start().await;
    let (h, _) = Harness::fast(providers(&toml(&[
        ("deepseek", "openai", &cheap, 0.002, 1, &["standard", "vip"]),
        ("doubao", "openai", &best, 0.008, 2, &["vip"]),
    ])));
    let standard = h.job(Tier::Standard, 1).await;
    let (_, standard) = h.run(&standard, 1, Duration::from_secs(20)).await;
    assert_eq!(standard.provider.as_deref(), Some("deepseek"));
    let vip = h.job(Tier::Vip, 3).await;
    let (_, vip) = h.run(&vip, 1, Duration::from_secs(20)).await;
    assert_eq!(vip.provider.as_deref(), Some("doubao"));
    assert!((vip.cost_usd - 0.024).abs() < 1e-9);
    assert_eq!((cheap.calls(), best.calls()), (1, 1));
}

#[tokio::test]
async fn the_whole_run_is_bounded_by_the_deadline() {
    let a = FakeProvider::start().await;
    a.set_default(Behavior::Slow(Duration::from_secs(30)));
    let b = FakeProvider::start().await;
    b.set_default(Behavior::Slow(Duration::from_secs(30)));
    let (h, _) = Harness::fast(providers(&toml(&[
        ("a", "openai", &a, 0.0, 1, &["standard", "vip"]),
        ("b", "openai", &b, 0.0, 2, &["standard", "vip"]),
    ])));
    let job = h.job(Tier::Standard, 1).await;
    let started = std::time::Instant::now();
    let (outcome, job) = h.run(&job, 1, Duration::from_millis(1500)).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "took {took:?} for a 1.5 s budget"
    );
    assert_eq!(outcome, Outcome::Retry);
    assert!(
        job.attempts.iter().all(|a| a.outcome == "timeout"),
        "{:?}",
        outcomes(&job)
    );
    // On the last allowed delivery the job ends failed and retriable, for the DLQ.
    let (outcome, job) = h.run(&job, 3, Duration::from_millis(500)).await;
    assert_eq!(outcome, Outcome::Retry);
    assert_eq!(job.status, JobStatus::Failed);
    assert!(job.error.as_ref().unwrap().retriable);
}

/// A writer that keeps every log line, for checking what reached the logs.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_provider_key_never_reaches_logs_errors_or_jobs() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let a = FakeProvider::start().await;
    a.set_default(Behavior::Unauthorized);
    let (h, _) = Harness::fast(providers(&toml(&[(
        "a",
        "openai",
        &a,
        0.0,
        1,
        &["standard", "vip"],
    )])));
    let job = h.job(Tier::Standard, 1).await;
    let (_, job) = h.run(&job, 1, Duration::from_secs(20)).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.error.as_ref().unwrap().code, "unauthorized");
    assert_eq!(
        a.requests()[0].authorization.as_deref(),
        Some(format!("Bearer {KEY}").as_str()),
        "the key was sent"
    );
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("provider failed"),
        "logs were captured: {logs}"
    );
    assert!(!logs.contains(KEY), "key in logs:\n{logs}");
    let stored = serde_json::to_string(&job).unwrap();
    assert!(!stored.contains(KEY), "key in the job: {stored}");
    assert!(
        stored.contains("***"),
        "the echoed key was scrubbed: {stored}"
    );
}

#[tokio::test]
async fn usage_adds_up_jobs_images_and_cost_by_provider_and_month() {
    let a = FakeProvider::start().await;
    a.script([Behavior::ServerError(502)]);
    let text = toml(&[("deepseek", "openai", &a, 0.002, 1, &["standard", "vip"])]);
    let app = TestApp::spawn_with(TestOptions {
        providers: Some(providers(&text)),
        ..Default::default()
    })
    .await;
    for n in [1, 3] {
        let id = app
            .submit_ok(json!({"prompt": "count me", "n": n, "size": "256x256"}))
            .await;
        assert_eq!(
            app.wait_for(&id, Duration::from_secs(30)).await["status"],
            "success"
        );
    }
    let usage: Value = app
        .http
        .get(app.url("/v1/usage"))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let row = &usage["data"][0];
    assert_eq!(row["provider"], "deepseek");
    assert_eq!(row["month"], Utc::now().format("%Y-%m").to_string());
    assert_eq!(row["jobs"], 2);
    assert_eq!(row["images"], 4);
    assert_eq!(row["calls"], 3);
    assert_eq!(row["failed_calls"], 1);
    assert!(
        (row["cost_usd"].as_f64().unwrap() - 0.008).abs() < 1e-9,
        "{usage}"
    );
    assert_eq!(usage["jobs_by_status"]["success"], 2);
    let bad = app
        .http
        .get(app.url("/v1/usage?month=2020-01"))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    app.stop().await;
}
