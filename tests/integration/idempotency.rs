//! `Idempotency-Key`: retries make one job, however many race.

use std::collections::HashSet;

use futures::future::join_all;
use kiln_tests::app::{TestApp, TestOptions};
use serde_json::{json, Value};

async fn submit_keyed(app: &TestApp, path: &str, key: &str, body: &Value) -> reqwest::Response {
    app.http
        .post(app.url(path))
        .bearer_auth(&app.api_key)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("submit")
}

async fn job_count(app: &TestApp) -> usize {
    let list: Value = app
        .http
        .get(app.url("/v1/jobs?limit=100"))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list["data"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_retries_with_one_key_make_exactly_one_job() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    let body = json!({"prompt": "once only", "size": "256x256"});
    let answers =
        join_all((0..50).map(|_| submit_keyed(&app, "/v1/jobs", "order-42", &body))).await;
    let mut ids = HashSet::new();
    for resp in answers {
        let status = resp.status().as_u16();
        let json: Value = resp.json().await.unwrap();
        match status {
            202 => {
                ids.insert(json["id"].as_str().unwrap().to_owned());
            }
            409 => assert_eq!(json["error"]["code"], "idempotency_in_progress"),
            other => panic!("unexpected {other}: {json}"),
        }
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(job_count(&app).await, 1);

    // Key order and whitespace do not make another body.
    let same = submit_keyed(
        &app,
        "/v1/jobs",
        "order-42",
        &json!({"size": "256x256", "prompt": "once only"}),
    )
    .await;
    assert_eq!(same.status(), 202);
    let job: Value = same.json().await.unwrap();
    assert!(ids.contains(job["id"].as_str().unwrap()));

    let other = submit_keyed(
        &app,
        "/v1/jobs",
        "order-42",
        &json!({"prompt": "something else"}),
    )
    .await;
    assert_eq!(other.status(), 409);
    let err: Value = other.json().await.unwrap();
    assert_eq!(err["error"]["code"], "idempotency_conflict");
    // The same key on another route is another request too.
    let batch = submit_keyed(&app, "/v1/jobs/batch", "order-42", &json!({"jobs": [body]})).await;
    assert_eq!(batch.status(), 409);
    assert_eq!(job_count(&app).await, 1);

    // Keys are per user: Bob's "order-42" is his own.
    let bob = app
        .new_key("bob", kiln_shared::domain::Tier::Standard)
        .await;
    let resp = app
        .http
        .post(app.url("/v1/jobs"))
        .bearer_auth(&bob)
        .header("Idempotency-Key", "order-42")
        .json(&json!({"prompt": "something else"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    app.stop().await;
}

#[tokio::test]
async fn batches_replay_their_items_and_bad_keys_are_named() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    let body = json!({"jobs": [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}]});
    let first: Value = submit_keyed(&app, "/v1/jobs/batch", "b-1", &body)
        .await
        .json()
        .await
        .unwrap();
    let again: Value = submit_keyed(&app, "/v1/jobs/batch", "b-1", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["data"].as_array().unwrap().len(), 3);
    assert_eq!(first, again);
    assert_eq!(job_count(&app).await, 3);

    for bad in ["", &"k".repeat(256), "caf\u{e9}"] {
        let resp = app
            .http
            .post(app.url("/v1/jobs"))
            .bearer_auth(&app.api_key)
            .header(
                "Idempotency-Key",
                reqwest::header::HeaderValue::from_bytes(bad.as_bytes()).unwrap(),
            )
            .json(&json!({"prompt": "a"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{bad:?}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["field"], "Idempotency-Key");
    }
    // An invalid body under a key leaves the key free for the corrected retry.
    let bad = submit_keyed(&app, "/v1/jobs", "fix-me", &json!({"prompt": ""})).await;
    assert_eq!(bad.status(), 400);
    let fixed = submit_keyed(&app, "/v1/jobs", "fix-me", &json!({"prompt": "fixed"})).await;
    assert_eq!(fixed.status(), 202);
    app.stop().await;
}
