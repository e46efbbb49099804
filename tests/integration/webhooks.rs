//! Webhooks end to end: signed deliveries checked with the spec's own library, retries under one
//! webhook-id, the dead-letter queue and its replay, a crash between the job's flip and the
//! enqueue, and the address guard at submit.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kiln_shared::domain::UserId;
use kiln_shared::ports::{
    secrets_for, Queue, QueueError, ReceivedMessage, StoreError, WebhookSecretStore,
};
use kiln_shared::webhooks::Resolve;
use kiln_tests::app::{TestApp, TestOptions};
use kiln_tests::moto::moto;
use kiln_tests::process::kiln_command;
use kiln_tests::webhook_receiver::{Receiver, Tripwire};
use serde_json::{json, Value};
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_kiln-under-test");

/// Deliveries to the loopback receiver need the local-development settings.
fn local_env(delays: &str) -> Vec<(&'static str, String)> {
    vec![
        ("KILN_WEBHOOK_ALLOW_HTTP", "true".into()),
        ("KILN_WEBHOOK_ALLOW_PRIVATE", "true".into()),
        ("KILN_WEBHOOK_RETRY_DELAYS", delays.into()),
    ]
}

async fn spawn(delays: &str) -> TestApp {
    TestApp::spawn_with(TestOptions {
        env: local_env(delays),
        ..Default::default()
    })
    .await
}

/// Alice's secret, made now so the receiver can verify with it.
async fn alice_secret(app: &TestApp) -> String {
    let (s, _) = secrets_for(
        &*app.services.webhook_secrets,
        &UserId::parse("alice").unwrap(),
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    s.current.expose().to_owned()
}

/// Polls the job until `check` holds, or panics after `timeout`.
async fn job_until(
    app: &TestApp,
    id: &str,
    timeout: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let job = app.get_job(id).await;
        if check(&job) {
            return job;
        }
        assert!(Instant::now() < deadline, "job never got there: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn the_reference_library_matches_the_spec_test_vector() {
    let wh = standardwebhooks::Webhook::new("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
    let sig = wh
        .sign(
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            br#"{"email":"test@example.com","username":"test_user"}"#,
        )
        .unwrap();
    assert_eq!(sig, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
}

#[tokio::test]
async fn a_receiver_failing_three_times_gets_the_event_under_one_id() {
    let app = spawn("1,1,1").await;
    let rx = Receiver::start().await;
    rx.set_secret(&alice_secret(&app).await);
    rx.fail_next(3);
    let id = app
        .submit_ok(json!({"prompt": "hooked", "size": "256x256", "webhook": {"url": rx.url}}))
        .await;
    let job = app.wait_for(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "success");
    let got = rx.wait_for(4, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 4, "no more than four attempts");
    assert!(got.iter().all(|d| d.verified), "every signature verifies");
    assert!(
        got.iter().all(|d| d.id == got[0].id),
        "one webhook-id across attempts"
    );
    assert_eq!(
        got.iter().map(|d| d.answered).collect::<Vec<_>>(),
        [503, 503, 503, 200]
    );
    let body = &got[3].body;
    assert_eq!(body["type"], "job.succeeded");
    assert_eq!(body["id"], got[0].id.as_str());
    assert_eq!(body["data"]["id"], id.as_str());
    assert_eq!(body["data"]["status"], "success");
    assert!(body["data"]["images"][0]["url"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1"));
    // Retries waited about the configured second each.
    for w in got.windows(2) {
        assert!(
            w[1].at - w[0].at >= Duration::from_millis(900),
            "retries are delayed"
        );
    }
    let job = job_until(&app, &id, Duration::from_secs(10), |j| {
        j["webhook_deliveries"]
            .as_array()
            .is_some_and(|d| d.len() == 4)
    })
    .await;
    let deliveries = job["webhook_deliveries"].as_array().unwrap();
    assert_eq!(
        deliveries
            .iter()
            .map(|d| d["attempt"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(deliveries[0]["status_code"], 503);
    assert_eq!(deliveries[3]["delivered"], true);
    assert!(deliveries
        .iter()
        .all(|d| d["event_id"] == got[0].id.as_str()));
    app.stop().await;
}

#[tokio::test]
async fn running_and_completed_subscribers_get_both_events_quickly() {
    let app = spawn("1").await;
    let rx = Receiver::start().await;
    rx.set_secret(&alice_secret(&app).await);
    let started = Instant::now();
    let id = app
        .submit_ok(json!({
            "prompt": "both", "size": "256x256",
            "webhook": {"url": rx.url, "events": ["running", "completed"]}
        }))
        .await;
    let got = rx.wait_for(2, Duration::from_secs(30)).await;
    let latency = got[1].at - started;
    eprintln!("submit to job.succeeded delivery: {latency:?}");
    let types: Vec<_> = got
        .iter()
        .map(|d| d.body["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types, ["job.running", "job.succeeded"]);
    assert_ne!(got[0].id, got[1].id);
    assert!(got.iter().all(|d| d.verified));
    assert_eq!(got[1].body["data"]["id"], id.as_str());
    app.stop().await;
}

#[tokio::test]
async fn an_event_parked_in_the_dead_letter_queue_is_delivered_after_a_replay() {
    let app = spawn("1,1").await;
    let rx = Receiver::start().await;
    rx.set_secret(&alice_secret(&app).await);
    rx.set_down(true);
    let id = app
        .submit_ok(json!({"prompt": "nobody home", "size": "256x256", "webhook": {"url": rx.url}}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.services.webhooks_dlq.depth().await.unwrap() == 0 {
        assert!(
            Instant::now() < deadline,
            "the event never reached the dead-letter queue"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rx.deliveries().len(), 3, "three attempts, then parked");

    let listed = kiln_command(Path::new(BIN), app.dir.path(), &[])
        .args(["dlq", "list", "--queue", "webhooks", "--json"])
        .output()
        .await
        .unwrap();
    assert!(listed.status.success());
    let parked: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(parked[0]["job_id"], id.as_str());
    assert_eq!(parked[0]["attempts"], 3);
    assert_eq!(parked[0]["last_error"], "HTTP 503 Service Unavailable");

    rx.set_down(false);
    let replay = kiln_command(Path::new(BIN), app.dir.path(), &[])
        .args(["dlq", "replay", "--queue", "webhooks"])
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&replay.stdout);
    assert!(
        replay.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert!(out.contains("replayed 1 message(s)"), "{out}");
    let got = rx.wait_for(4, Duration::from_secs(30)).await;
    assert_eq!(got[3].answered, 200);
    assert!(got.iter().all(|d| d.id == got[0].id && d.verified));
    assert_eq!(app.services.webhooks_dlq.depth().await.unwrap(), 0);
    app.stop().await;
}

/// A webhook queue whose first sends fail, as if the process died between the job's flip and
/// the enqueue.
struct FailingSends {
    inner: Arc<dyn Queue>,
    fail: AtomicUsize,
    failed: Arc<AtomicUsize>,
}

#[async_trait]
impl Queue for FailingSends {
    async fn send(&self, bodies: &[String], delay: Duration) -> Result<(), QueueError> {
        if self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(QueueError::Unavailable("injected".into()));
        }
        self.inner.send(bodies, delay).await
    }
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        self.inner.receive(max, wait).await
    }
    async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError> {
        self.inner.delete(receipt_handle).await
    }
    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        self.inner.change_visibility(receipt_handle, timeout).await
    }
    async fn depth(&self) -> Result<u64, QueueError> {
        self.inner.depth().await
    }
}

#[tokio::test]
async fn a_crash_between_the_flip_and_the_enqueue_still_sends_one_event() {
    let failed = Arc::new(AtomicUsize::new(0));
    let f = failed.clone();
    let app = TestApp::spawn_with(TestOptions {
        env: local_env("1"),
        services: Some(Box::new(move |s| {
            s.webhooks_queue = Arc::new(FailingSends {
                inner: s.webhooks_queue.clone(),
                fail: AtomicUsize::new(1),
                failed: f,
            });
        })),
        ..Default::default()
    })
    .await;
    let rx = Receiver::start().await;
    rx.set_secret(&alice_secret(&app).await);
    let id = app
        .submit_ok(json!({"prompt": "crash", "size": "256x256", "webhook": {"url": rx.url}}))
        .await;
    let job = app.wait_for(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "success");
    let got = rx.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(failed.load(Ordering::SeqCst), 1, "the first enqueue failed");
    // Let any duplicate arrive before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got_all = rx.deliveries();
    assert!(
        got_all.iter().all(|d| d.id == got[0].id),
        "one logical event: {got_all:?}"
    );
    assert!(got_all.iter().all(|d| d.verified));
    assert_eq!(got_all[0].body["type"], "job.succeeded");
    let job = app.get_job(&id).await;
    assert!(
        job.get("webhook_pending").is_none(),
        "no mark is shown to clients"
    );
    let stored = app
        .services
        .store
        .get(&id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(
        stored.webhook_pending.is_empty(),
        "the mark was cleared once sent"
    );
    app.stop().await;
}

struct MapResolver(HashMap<String, Vec<IpAddr>>);

impl Resolve for MapResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        _port: u16,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<IpAddr>, String>> + Send + 'a>> {
        let out = self
            .0
            .get(host)
            .cloned()
            .ok_or_else(|| "NXDOMAIN".to_owned());
        Box::pin(async move { out })
    }
}

#[tokio::test]
async fn internal_addresses_are_refused_at_submit_and_never_contacted() {
    let trip = Tripwire::start().await;
    let port = trip.addr.port();
    let app = TestApp::spawn_with(TestOptions {
        services: Some(Box::new(|s| {
            s.resolver = Arc::new(MapResolver(HashMap::from([(
                "loopback.kiln.test".to_owned(),
                vec!["127.0.0.1".parse().unwrap()],
            )])));
        })),
        ..Default::default()
    })
    .await;
    for url in [
        format!("http://127.0.0.1:{port}/h"),
        "https://10.0.0.1/h".to_owned(),
        "https://169.254.169.254/latest/meta-data".to_owned(),
        format!("https://[::1]:{port}/h"),
        format!("https://localhost:{port}/h"),
        format!("https://2130706433:{port}/h"),
        format!("https://0x7f.1:{port}/h"),
        format!("https://[::ffff:127.0.0.1]:{port}/h"),
        format!("https://loopback.kiln.test:{port}/h"),
    ] {
        let resp = app
            .submit(json!({"prompt": "ssrf", "webhook": {"url": url}}))
            .await;
        assert_eq!(resp.status(), 400, "{url}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["field"], "webhook.url", "{url}: {body}");
    }
    let listed: Value = app
        .http
        .get(app.url("/v1/jobs"))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["data"].as_array().map(Vec::len),
        Some(0),
        "nothing stored: {listed}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(trip.connections(), 0, "no refused address was contacted");
    app.stop().await;
}

/// What every webhook secret store must do: absent until made, first write wins, rotations
/// are compare-and-swap on the version.
async fn secret_store_contract(store: Arc<dyn WebhookSecretStore>) {
    let user = UserId::parse(&format!("u{}", uuid::Uuid::new_v4().simple())).unwrap();
    let now = chrono::Utc::now();
    assert!(store.get_secrets(&user).await.unwrap().is_none());
    let (first, made) = secrets_for(&*store, &user, now).await.unwrap();
    assert!(made);
    let (again, made) = secrets_for(&*store, &user, now).await.unwrap();
    assert!(!made);
    assert_eq!(again, first);
    let other = kiln_shared::webhooks::UserWebhookSecrets::issue(user.clone(), now);
    assert!(matches!(
        store.put_secrets(&other).await,
        Err(StoreError::Conflict(_))
    ));
    let rotated = first.rotate(now);
    store.put_secrets(&rotated).await.unwrap();
    assert!(matches!(
        store.put_secrets(&first.rotate(now)).await,
        Err(StoreError::Conflict(_))
    ));
    let stored = store.get_secrets(&user).await.unwrap().unwrap();
    assert_eq!(stored, rotated);
    assert_eq!(stored.signing(now).len(), 2);
}

#[tokio::test]
async fn the_sqlite_secret_store_meets_the_contract() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    secret_store_contract(app.services.webhook_secrets.clone()).await;
    app.stop().await;
}

#[tokio::test]
async fn the_dynamodb_secret_store_meets_the_contract() {
    let aws = moto().await.fresh(&[]).await;
    secret_store_contract(aws.backend.webhook_secrets).await;
}
