//! Per-user rate limits and caps on jobs in flight (held in the store, so across processes),
//! request size limits and CORS.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use kiln_shared::adapters::local::{LocalBackend, LocalOptions};
use kiln_shared::clock::{Clock, SystemClock};
use kiln_shared::domain::{ApiKeyRecord, Tier, UserId};
use kiln_shared::providers::Providers;
use kiln_tests::app::{TestApp, TestOptions};
use kiln_tests::moto::moto;
use kiln_tests::process::KilnProcess;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_kiln-under-test");

async fn submit(http: &reqwest::Client, base: &str, key: &str, body: Value) -> reqwest::Response {
    http.post(format!("{base}/v1/jobs"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("submit")
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after_per_tier() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        env: vec![
            ("KILN_RATE_LIMIT_STANDARD", "3/h".into()),
            ("KILN_RATE_LIMIT_VIP", "5/h".into()),
        ],
        ..Default::default()
    })
    .await;
    let vip = app.new_key("victor", Tier::Vip).await;
    for _ in 0..3 {
        assert_eq!(app.submit(json!({"prompt": "a"})).await.status(), 202);
    }
    let refused = app.submit(json!({"prompt": "a"})).await;
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    let err: Value = refused.json().await.unwrap();
    assert_eq!(err["error"]["code"], "rate_limited");
    // Another user, another tier, another budget; batches count as one request.
    let batch = app
        .http
        .post(app.url("/v1/jobs/batch"))
        .bearer_auth(&vip)
        .json(
            &json!({"jobs": [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}, {"prompt": "d"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), 202);
    for _ in 0..4 {
        assert_eq!(
            app.submit_as(&vip, json!({"prompt": "a"})).await.status(),
            202
        );
    }
    assert_eq!(
        app.submit_as(&vip, json!({"prompt": "a"})).await.status(),
        429
    );
    app.stop().await;
}

#[tokio::test]
async fn jobs_in_flight_are_capped_until_one_ends() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        env: vec![("KILN_MAX_IN_FLIGHT_STANDARD", "2".into())],
        ..Default::default()
    })
    .await;
    let first = app.submit_ok(json!({"prompt": "a"})).await;
    app.submit_ok(json!({"prompt": "b"})).await;
    let refused = app.submit(json!({"prompt": "c"})).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let err: Value = refused.json().await.unwrap();
    assert_eq!(err["error"]["code"], "rate_limited");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("in flight"));
    let cancel = app
        .http
        .post(app.url(&format!("/v1/jobs/{first}/cancel")))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 200);
    app.submit_ok(json!({"prompt": "c"})).await;
    // A batch that would pass the cap is refused whole.
    let batch = app
        .http
        .post(app.url("/v1/jobs/batch"))
        .bearer_auth(&app.api_key)
        .json(&json!({"jobs": [{"prompt": "a"}, {"prompt": "b"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), 429);
    app.stop().await;
}

/// Two `kiln serve` processes on one data directory share one budget.
#[tokio::test]
async fn two_processes_on_one_data_dir_hold_the_rate_limit_together() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LocalOptions {
        visibility_timeout: Duration::from_secs(30),
        max_receive_count: 5,
        url_signing_secret: None,
    };
    let local = LocalBackend::open(dir.path(), &opts, Arc::new(SystemClock)).unwrap();
    let (key, record) = ApiKeyRecord::issue(
        UserId::parse("shared").unwrap(),
        Tier::Standard,
        chrono::Utc::now(),
    );
    use kiln_shared::ports::JobStore;
    local.store.insert_api_key(&record).await.unwrap();
    let env = [
        ("KILN_RATE_LIMIT_STANDARD", "5/h".to_owned()),
        ("KILN_MAX_IN_FLIGHT_STANDARD", "off".to_owned()),
    ];
    let a = KilnProcess::start(BIN.as_ref(), dir.path(), &env).await;
    let b = KilnProcess::start(BIN.as_ref(), dir.path(), &env).await;
    let http = reqwest::Client::new();
    let answers = join_all((0..12).map(|i| {
        let base = if i % 2 == 0 { &a.base_url } else { &b.base_url };
        submit(
            &http,
            base,
            key.expose(),
            json!({"prompt": "shared", "size": "256x256"}),
        )
    }))
    .await;
    let accepted = answers.iter().filter(|r| r.status() == 202).count();
    let limited = answers.iter().filter(|r| r.status() == 429).count();
    assert_eq!((accepted, limited), (5, 7));
    a.kill9().await;
    b.kill9().await;
}

/// Two servers over one DynamoDB table (each with its own clients) share one budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_table_hold_the_rate_limit_together() {
    let moto = moto().await;
    let aws = moto
        .fresh(&[
            ("KILN_ADDR", "127.0.0.1:0"),
            ("KILN_RATE_LIMIT_STANDARD", "5/h"),
            ("KILN_MAX_IN_FLIGHT_STANDARD", "off"),
        ])
        .await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (key, record) = ApiKeyRecord::issue(
        UserId::parse("shared").unwrap(),
        Tier::Standard,
        clock.now(),
    );
    aws.backend.store.insert_api_key(&record).await.unwrap();
    let providers = Arc::new(Providers::local_only(Duration::ZERO));
    let second =
        kiln_shared::adapters::aws::AwsBackend::from_clients(moto.clients().await, &aws.resources);
    let a = kiln_cli::serve::start(
        &aws.settings,
        aws.services(clock.clone()),
        providers.clone(),
        false,
    )
    .await
    .unwrap();
    let b = kiln_cli::serve::start(&aws.settings, second.into_services(clock), providers, false)
        .await
        .unwrap();
    let (ua, ub) = (format!("http://{}", a.addr), format!("http://{}", b.addr));
    let http = reqwest::Client::new();
    let answers = join_all((0..10).map(|i| {
        let base = if i % 2 == 0 { &ua } else { &ub };
        submit(&http, base, key.expose(), json!({"prompt": "shared"}))
    }))
    .await;
    let accepted = answers.iter().filter(|r| r.status() == 202).count();
    assert_eq!(
        accepted,
        5,
        "{:?}",
        answers.iter().map(|r| r.status()).collect::<Vec<_>>()
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn each_request_limit_has_its_own_4xx() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    let post = |path: &'static str, body: String| {
        let req = app
            .http
            .post(app.url(path))
            .bearer_auth(&app.api_key)
            .header("content-type", "application/json")
            .body(body);
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let json: Value = resp.json().await.unwrap_or(Value::Null);
            (status, json["error"]["field"].as_str().map(str::to_owned))
        }
    };
    let deep = format!(
        r#"{{"prompt": "a", "metadata": {{"k": {}1{}}}}}"#,
        "[".repeat(40),
        "]".repeat(40)
    );
    assert_eq!(post("/v1/jobs", deep).await, (400, Some("body".into())));
    assert_eq!(
        post("/v1/jobs", json!({"prompt": "a", "n": 5}).to_string()).await,
        (400, Some("n".into()))
    );
    let too_many: Vec<Value> = (0..101).map(|_| json!({"prompt": "a"})).collect();
    assert_eq!(
        post("/v1/jobs/batch", json!({"jobs": too_many}).to_string()).await,
        (400, Some("jobs".into()))
    );
    assert_eq!(
        post("/v1/jobs/batch", json!({"jobs": []}).to_string()).await,
        (400, Some("jobs".into()))
    );
    let mut jobs: Vec<Value> = (0..5).map(|_| json!({"prompt": "a"})).collect();
    jobs[3] = json!({"prompt": " "});
    assert_eq!(
        post("/v1/jobs/batch", json!({"jobs": jobs}).to_string()).await,
        (400, Some("jobs[3].prompt".into()))
    );
    let huge = json!({"prompt": "a", "metadata": {"k": "v".repeat(70_000)}}).to_string();
    assert_eq!(post("/v1/jobs", huge).await.0, 413);
    // Nothing of the refused requests was stored.
    let list: Value = app
        .http
        .get(app.url("/v1/jobs"))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 0);

    // A batch answers one result per job, in order.
    let ok = app
        .http
        .post(app.url("/v1/jobs/batch"))
        .bearer_auth(&app.api_key)
        .json(&json!({"jobs": (0..25).map(|i| json!({"prompt": format!("job {i}")})).collect::<Vec<_>>()}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 202);
    let body: Value = ok.json().await.unwrap();
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 25);
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["index"], i);
        assert_eq!(item["status"], "pending");
    }
    app.stop().await;
}

#[tokio::test]
async fn cors_is_off_by_default_and_allows_only_the_configured_origins() {
    let preflight = |app: &TestApp, origin: &str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url("/v1/jobs"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,idempotency-key",
            )
            .send()
    };
    let plain = TestApp::spawn_with(TestOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    let resp = preflight(&plain, "https://app.test").await.unwrap();
    assert!(!resp.headers().contains_key("access-control-allow-origin"));
    plain.stop().await;

    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        env: vec![("KILN_CORS_ORIGINS", "https://app.test".into())],
        ..Default::default()
    })
    .await;
    let resp = preflight(&app, "https://app.test").await.unwrap();
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.test"
    );
    let allowed = resp.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(allowed.contains("idempotency-key"), "{allowed}");
    let resp = preflight(&app, "https://evil.test").await.unwrap();
    assert!(!resp.headers().contains_key("access-control-allow-origin"));
    let resp = app.submit(json!({"prompt": "a"})).await;
    assert!(
        resp.headers().get("access-control-allow-origin").is_none(),
        "no Origin, no CORS"
    );
    app.stop().await;
}
