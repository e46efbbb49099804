//! `kiln dlq` on the local backend: a job whose provider keeps failing ends in the jobs
//! dead-letter queue as `failed`, is listed, shown and replayed to `success`; bad arguments and
//! purges without confirmation are refused.

use std::path::Path;
use std::time::Duration;

use kiln_shared::providers::{file, Providers};
use kiln_tests::app::{TestApp, TestOptions};
use kiln_tests::fake_provider::{Behavior, FakeProvider};
use kiln_tests::process::kiln_command;
use serde_json::{json, Value};
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_kiln-under-test");

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn kiln(dir: &Path, args: &[&str]) -> Run {
    let out = kiln_command(Path::new(BIN), dir, &[])
        .args(args)
        .output()
        .await
        .expect("kiln runs");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn providers(fake: &FakeProvider) -> Providers {
    let text = format!(
        "[[provider]]\nname = \"flaky\"\nprotocol = \"openai\"\nendpoint = \"{}/v1\"\nmodel = \"m\"\napi_key_env = \"FAKE_KEY\"\ncost_per_image_usd = 0.01\npriority = 1\ntiers = [\"standard\", \"vip\"]\ntimeout = \"5s\"\nmax_concurrency = 4\n",
        fake.base_url
    );
    let env = |k: &str| (k == "FAKE_KEY").then(|| "k".to_owned());
    file::parse(&text, "dlq-providers.toml", &env, reqwest::Client::new()).expect("providers")
}

#[tokio::test]
async fn a_failed_job_goes_to_the_dead_letter_queue_and_a_replay_finishes_it() {
    let fake = FakeProvider::start().await;
    fake.set_default(Behavior::ServerError(500));
    let app = TestApp::spawn_with(TestOptions {
        env: vec![
            ("KILN_MAX_RECEIVE_COUNT", "1".into()),
            ("KILN_JOB_TIMEOUT_SECS", "5".into()),
        ],
        providers: Some(providers(&fake)),
        ..Default::default()
    })
    .await;
    let id = app
        .submit_ok(json!({"prompt": "doomed", "size": "256x256"}))
        .await;
    let job = app.wait_for(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "failed", "{job}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.services.jobs_dlq.depth().await.unwrap() == 0 {
        assert!(
            Instant::now() < deadline,
            "the message never reached the dead-letter queue"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let list = kiln(app.dir.path(), &["dlq", "list", "--queue", "jobs"]).await;
    assert!(list.ok, "{}", list.stderr);
    assert!(
        list.stdout.contains(&id) && list.stdout.contains("failed"),
        "{}",
        list.stdout
    );
    assert!(
        list.stdout.contains("provider_unavailable"),
        "{}",
        list.stdout
    );
    let json = kiln(
        app.dir.path(),
        &["dlq", "list", "--queue", "jobs", "--json"],
    )
    .await;
    let parked: Value = serde_json::from_str(&json.stdout).unwrap();
    let message_id = parked[0]["message_id"].as_str().unwrap().to_owned();
    assert_eq!(parked[0]["job_status"], "failed");

    let show = kiln(
        app.dir.path(),
        &["dlq", "show", "--queue", "jobs", &message_id],
    )
    .await;
    assert!(show.ok, "{}", show.stderr);
    let shown: Value = serde_json::from_str(&show.stdout).unwrap();
    assert_eq!(shown["job"]["id"], id.as_str());
    assert_eq!(shown["message"]["body"]["job_id"], id.as_str());

    let dry = kiln(
        app.dir.path(),
        &["dlq", "replay", "--queue", "jobs", "--dry-run"],
    )
    .await;
    assert!(
        dry.ok && dry.stdout.contains("would replay 1 message(s)"),
        "{}",
        dry.stdout
    );
    assert_eq!(
        app.services.jobs_dlq.depth().await.unwrap(),
        1,
        "a dry run moves nothing"
    );
    assert_eq!(app.get_job(&id).await["status"], "failed");

    fake.set_default(Behavior::Ok);
    let replay = kiln(
        app.dir.path(),
        &["dlq", "replay", "--queue", "jobs", "--id", &message_id],
    )
    .await;
    assert!(replay.ok, "{} {}", replay.stdout, replay.stderr);
    assert!(
        replay
            .stdout
            .contains("1 failed job(s) put back to pending"),
        "{}",
        replay.stdout
    );
    let job = app.wait_for(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "success", "{job}");
    assert_eq!(app.services.jobs_dlq.depth().await.unwrap(), 0);
    app.stop().await;
}

#[tokio::test]
async fn bad_arguments_and_unconfirmed_purges_are_refused() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    let unknown = kiln(app.dir.path(), &["dlq", "list", "--queue", "nope"]).await;
    assert!(!unknown.ok);
    assert!(
        unknown
            .stderr
            .contains("unknown queue \"nope\": expected jobs or webhooks"),
        "{}",
        unknown.stderr
    );
    let missing = kiln(app.dir.path(), &["dlq", "replay"]).await;
    assert!(
        !missing.ok && missing.stderr.contains("--queue"),
        "{}",
        missing.stderr
    );
    let show = kiln(
        app.dir.path(),
        &["dlq", "show", "--queue", "jobs", "no-such-id"],
    )
    .await;
    assert!(
        !show.ok && show.stderr.contains("no message"),
        "{}",
        show.stderr
    );

    app.services
        .jobs_dlq
        .send(
            &[
                "{\"job_id\":\"0190b5b0-0000-7000-8000-000000000000\"}".to_owned(),
                "junk".to_owned(),
            ],
            Duration::ZERO,
        )
        .await
        .unwrap();
    let list = kiln(app.dir.path(), &["dlq", "list", "--queue", "jobs"]).await;
    assert!(
        list.ok && list.stdout.contains("gone") && list.stdout.contains("unreadable"),
        "{}",
        list.stdout
    );
    let refused = kiln(app.dir.path(), &["dlq", "purge", "--queue", "jobs"]).await;
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("without --yes"),
        "{}",
        refused.stderr
    );
    assert_eq!(app.services.jobs_dlq.depth().await.unwrap(), 2);
    let purged = kiln(
        app.dir.path(),
        &["dlq", "purge", "--queue", "jobs", "--yes"],
    )
    .await;
    assert!(
        purged.ok && purged.stdout.contains("purged 2 message(s)"),
        "{}",
        purged.stdout
    );
    assert_eq!(app.services.jobs_dlq.depth().await.unwrap(), 0);
    let empty = kiln(app.dir.path(), &["dlq", "list", "--queue", "webhooks"]).await;
    assert!(
        empty.ok && empty.stdout.contains("nothing parked"),
        "{}",
        empty.stdout
    );
    app.stop().await;
}
