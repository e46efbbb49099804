//! Nothing is lost: crashes (SIGKILL), expired leases and duplicate deliveries.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kiln_shared::ports::JobMessage;
use kiln_shared::providers::local::LocalProvider;
use kiln_tests::app::{TestApp, TestOptions};
use kiln_tests::process::KilnProcess;
use kiln_tests::providers::Counting;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_kiln-under-test");

async fn create_key(data_dir: &Path) -> String {
    let out = kiln_tests::process::kiln_command(Path::new(BIN), data_dir, &[])
        .args(["keys", "create", "--user", "dana"])
        .output()
        .await
        .expect("kiln keys create runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned()
}

async fn get(http: &reqwest::Client, base: &str, key: &str, id: &str) -> Value {
    http.get(format!("{base}/v1/jobs/{id}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_status(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    id: &str,
    want: &[&str],
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let job = get(http, base, key, id).await;
        if want.contains(&job["status"].as_str().unwrap_or("")) {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} stuck at {}",
            job["status"]
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_job_accepted_before_sigkill_completes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path()).await;
    let http = reqwest::Client::new();

    // No worker: the job is only accepted (written and enqueued) when the process dies.
    let env = [("KILN_VISIBILITY_TIMEOUT_SECS", "2".to_owned())];
    let first =
        KilnProcess::start_with_args(Path::new(BIN), dir.path(), &env, &["--no-worker"]).await;
    let resp = http
        .post(format!("{}/v1/jobs", first.base_url))
        .bearer_auth(&key)
        .json(&json!({"prompt": "survive a crash", "size": "256x256"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    first.kill9().await;

    let second = KilnProcess::start(Path::new(BIN), dir.path(), &env).await;
    let job = wait_status(&http, &second.base_url, &key, &id, &["success", "failed"]).await;
    assert_eq!(job["status"], "success", "{job}");
    second.kill9().await;
}

#[tokio::test]
async fn a_claimed_job_whose_worker_died_is_taken_over_after_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path()).await;
    let http = reqwest::Client::new();
    let timing = [
        ("KILN_JOB_TIMEOUT_SECS", "2".to_owned()),
        ("KILN_LEASE_SECS", "3".to_owned()),
        ("KILN_VISIBILITY_TIMEOUT_SECS", "3".to_owned()),
    ];
    // A slow renderer: the job is claimed and still running when the process dies.
    let mut slow = timing.to_vec();
    slow.push(("KILN_LOCAL_LATENCY_MS", "1500".to_owned()));
    let first = KilnProcess::start(Path::new(BIN), dir.path(), &slow).await;
    let resp = http
        .post(format!("{}/v1/jobs", first.base_url))
        .bearer_auth(&key)
        .json(&json!({"prompt": "taken over", "size": "256x256"}))
        .send()
        .await
        .unwrap();
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let running = wait_status(&http, &first.base_url, &key, &id, &["running", "success"]).await;
    assert_eq!(running["status"], "running");
    first.kill9().await;

    let second = KilnProcess::start(Path::new(BIN), dir.path(), &timing).await;
    let job = wait_status(&http, &second.base_url, &key, &id, &["success", "failed"]).await;
    assert_eq!(job["status"], "success", "{job}");
    assert_eq!(
        job["runs"], 2,
        "claimed by the dead worker, then by the new one: {job}"
    );
    second.kill9().await;
}

#[tokio::test]
async fn a_message_delivered_twice_calls_the_provider_once() {
    let (counting, calls) =
        Counting::wrap(Arc::new(LocalProvider::new(Duration::from_millis(200))));
    let app = TestApp::spawn_with(TestOptions {
        providers: Some(counting.into_providers(0.01)),
        ..Default::default()
    })
    .await;
    let id = app
        .submit_ok(json!({"prompt": "only once", "size": "256x256"}))
        .await;
    // The duplicate arrives while the first delivery is running, and again after it finished.
    let dup = JobMessage {
        job_id: id.parse().unwrap(),
    }
    .encode();
    app.services
        .jobs_queue
        .send(std::slice::from_ref(&dup), Duration::ZERO)
        .await
        .unwrap();
    let job = app.wait_for(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "success");
    app.services
        .jobs_queue
        .send(&[dup], Duration::ZERO)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while app.services.jobs_queue.depth().await.unwrap() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "duplicates were not acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the provider ran once for three deliveries"
    );
    let job = app.get_job(&id).await;
    assert_eq!(job["runs"], 1);
    assert_eq!(job["attempts"].as_array().unwrap().len(), 1);
    app.stop().await;
}
