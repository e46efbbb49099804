//! The Lambda binaries as real processes against a Runtime API emulator, on moto: an HTTP API v2
//! event through the API function, an SQS batch through the worker function.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use kiln_shared::adapters::Services;
use kiln_shared::clock::{Clock, SystemClock};
use kiln_shared::domain::{ApiKeyRecord, Job, JobStatus, NewJob, SubmitJob, Tier, UserId};
use kiln_shared::ports::JobMessage;
use kiln_tests::lambda_runtime::{function_command, peak_rss_kib, Answer, RuntimeApi};
use kiln_tests::moto::{moto, TestAws};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

const API_BIN: &str = env!("CARGO_BIN_EXE_kiln-api-lambda-under-test");
const WORKER_BIN: &str = env!("CARGO_BIN_EXE_kiln-worker-lambda-under-test");
const WEBHOOKS_BIN: &str = env!("CARGO_BIN_EXE_kiln-webhooks-lambda-under-test");

/// Starts a Lambda binary on `aws`'s resources, talking to `rt`.
fn spawn(bin: &str, function: &str, rt: &RuntimeApi, aws: &TestAws, endpoint: &str) -> Child {
    spawn_with(bin, function, rt, aws, endpoint, &[])
}

/// [`spawn`] with extra environment.
fn spawn_with(
    bin: &str,
    function: &str,
    rt: &RuntimeApi,
    aws: &TestAws,
    endpoint: &str,
    extra: &[(&str, &str)],
) -> Child {
    let mut cmd = function_command(Path::new(bin), function, rt, aws, endpoint);
    cmd.envs(extra.iter().copied())
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null());
    if std::env::var_os("TEST_LOG").is_none() {
        cmd.stderr(Stdio::null());
    }
    cmd.spawn().expect("the Lambda binary starts")
}

fn http_event(method: &str, path: &str, key: Option<&str>, body: Option<Value>) -> Value {
    let mut headers =
        json!({"host": "kiln.execute-api.ap-northeast-1.amazonaws.com", "user-agent": "test"});
    if let Some(k) = key {
        headers["authorization"] = json!(format!("Bearer {k}"));
    }
    if body.is_some() {
        headers["content-type"] = json!("application/json");
    }
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "kiln",
            "domainName": "kiln.execute-api.ap-northeast-1.amazonaws.com",
            "domainPrefix": "kiln",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "test"},
            "requestId": uuid::Uuid::new_v4().to_string(),
            "routeKey": "$default",
            "stage": "$default",
            "time": "25/Nov/2026:12:00:00 +0000",
            "timeEpoch": 1_795_000_000_000u64
        },
        "body": body.map(|b| b.to_string()),
        "isBase64Encoded": false
    })
}

fn response(answer: Answer) -> (u64, Value) {
    let Answer::Response(r) = answer else {
        panic!("the function reported an error: {answer:?}")
    };
    let status = r["statusCode"].as_u64().expect("statusCode");
    let body = r["body"]
        .as_str()
        .map(|b| serde_json::from_str(b).unwrap_or(Value::String(b.to_owned())))
        .unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn the_api_function_answers_http_api_v2_events() {
    let moto = moto().await;
    let aws = moto.fresh(&[]).await;
    let services: Services = aws.services(Arc::new(SystemClock));
    let (key, record) = ApiKeyRecord::issue(
        UserId::parse("lena").unwrap(),
        Tier::Standard,
        SystemClock.now(),
    );
    services.store.insert_api_key(&record).await.unwrap();

    let rt = RuntimeApi::start().await;
    let child = spawn(API_BIN, "kiln-api", &rt, &aws, moto.endpoint());
    let init = rt.wait_ready(Duration::from_secs(30)).await;

    let (status, body) = response(
        rt.invoke(
            http_event("GET", "/healthz", None, None),
            Duration::from_secs(10),
        )
        .await,
    );
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));

    let submit = http_event(
        "POST",
        "/v1/jobs",
        Some(key.expose()),
        Some(json!({"prompt": "a lambda", "size": "256x256"})),
    );
    let (status, job) = response(rt.invoke(submit, Duration::from_secs(10)).await);
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["status"], "pending");
    assert!(
        job["urls"]["self"]
            .as_str()
            .unwrap()
            .starts_with("http://kiln.execute-api."),
        "{job}"
    );
    let id: kiln_shared::domain::JobId = job["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        services.store.get(&id).await.unwrap().unwrap().status,
        JobStatus::Pending
    );
    assert_eq!(
        services.jobs_queue.depth().await.unwrap(),
        1,
        "enqueued on SQS"
    );

    let bad = http_event(
        "POST",
        "/v1/jobs",
        Some(key.expose()),
        Some(json!({"prompt": "x", "n": 9})),
    );
    let (status, err) = response(rt.invoke(bad, Duration::from_secs(10)).await);
    assert_eq!((status, err["error"]["field"].as_str()), (400, Some("n")));
    let (status, _) = response(
        rt.invoke(
            http_event("GET", "/v1/jobs", None, None),
            Duration::from_secs(10),
        )
        .await,
    );
    assert_eq!(status, 401);

    let rss = child.id().and_then(peak_rss_kib);
    eprintln!("api function: init {init:?}, peak RSS {rss:?} KiB");
}

fn sqs_record(id: &str, body: &str, receive_count: u32) -> Value {
    json!({
        "messageId": id,
        "receiptHandle": format!("handle-{id}"),
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": receive_count.to_string(),
            "SentTimestamp": "1795000000000",
            "SenderId": "000000000000",
            "ApproximateFirstReceiveTimestamp": "1795000000001"
        },
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:ap-northeast-1:000000000000:kiln-jobs",
        "awsRegion": "ap-northeast-1"
    })
}

async fn pending_job(services: &Services) -> Job {
    let (request, _) = SubmitJob {
        prompt: Some("an sqs batch".into()),
        size: Some("256x256".into()),
        ..Default::default()
    }
    .validate()
    .unwrap();
    let job = Job::new(
        NewJob {
            user_id: UserId::parse("lena").unwrap(),
            tier: Tier::Standard,
            request,
            webhook: None,
            metadata: None,
        },
        SystemClock.now(),
        Duration::from_secs(3600),
    );
    services.store.insert(&job).await.unwrap();
    job
}

#[tokio::test]
async fn the_worker_function_reports_exactly_the_poisoned_message() {
    let moto = moto().await;
    let aws = moto.fresh(&[]).await;
    let services = aws.services(Arc::new(SystemClock));
    let good = pending_job(&services).await;
    // A job that already ended: its redelivered message must be acknowledged, not run again.
    let done = pending_job(&services).await;
    let claimed = done
        .claim(SystemClock.now(), Duration::from_secs(60))
        .unwrap();
    services.store.update(&claimed).await.unwrap();
    let token = claimed.lease.unwrap().token;
    let finished = claimed
        .succeed(token, "earlier".into(), vec![], vec![], SystemClock.now())
        .unwrap();
    services.store.update(&finished).await.unwrap();

    let rt = RuntimeApi::start().await;
    let child = spawn(WORKER_BIN, "kiln-worker", &rt, &aws, moto.endpoint());
    let init = rt.wait_ready(Duration::from_secs(30)).await;
    let event = json!({"Records": [
        sqs_record("good-1", &JobMessage { job_id: good.id }.encode(), 1),
        sqs_record("poison-1", "{not json", 1),
        sqs_record("done-1", &JobMessage { job_id: done.id }.encode(), 2),
    ]});
    let answer = rt.invoke(event, Duration::from_secs(30)).await;
    let Answer::Response(body) = answer else {
        panic!("worker errored: {answer:?}")
    };
    assert_eq!(
        body,
        json!({"batchItemFailures": [{"itemIdentifier": "poison-1"}]})
    );

    let good = services.store.get(&good.id).await.unwrap().unwrap();
    assert_eq!(good.status, JobStatus::Success, "{good:?}");
    let image = services
        .blobs
        .get(&good.images[0].key)
        .await
        .unwrap()
        .expect("the image is in S3");
    assert_eq!(image.content_type, "image/png");
    let decoded = image::load_from_memory(&image.bytes).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (256, 256));
    let done = services.store.get(&done.id).await.unwrap().unwrap();
    assert_eq!(
        (done.status, done.provider.as_deref(), done.runs),
        (JobStatus::Success, Some("earlier"), 1)
    );

    let rss = child.id().and_then(peak_rss_kib);
    eprintln!("worker function: init {init:?}, peak RSS {rss:?} KiB");
}

#[tokio::test]
async fn the_whole_pipeline_runs_on_the_aws_backend() {
    use kiln_tests::app::{TestApp, TestOptions};
    let moto = moto().await;
    let aws = moto.fresh(&[]).await;
    let services = aws.services(Arc::new(SystemClock));
    let app = TestApp::spawn_on(
        TestOptions::default(),
        Some((aws.settings.clone(), services)),
    )
    .await;
    let id = app
        .submit_ok(json!({"prompt": "through dynamodb, sqs and s3", "size": "512x512"}))
        .await;
    let job = app.wait_for(&id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "success", "{job}");
    let url = job["images"][0]["url"].as_str().unwrap();
    assert!(
        url.starts_with(moto.endpoint()) && url.contains("X-Amz-Signature"),
        "a presigned S3 URL: {url}"
    );
    let bytes = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    let img = image::load_from_memory(&bytes).expect("the PNG from S3");
    assert_eq!((img.width(), img.height()), (512, 512));
    app.stop().await;
}

#[tokio::test]
async fn provider_keys_come_from_ssm_parameter_store() {
    use kiln_shared::adapters::aws::parameters_by_path;
    let moto = moto().await;
    let clients = moto.clients().await;
    let path = format!(
        "/kiln-t-{}/providers",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    for (name, value) in [
        ("DEEPSEEK_API_KEY", "sk-from-ssm"),
        ("nested/ARK_API_KEY", "ark-from-ssm"),
    ] {
        clients
            .ssm
            .put_parameter()
            .name(format!("{path}/{name}"))
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .send()
            .await
            .unwrap();
    }
    let secrets = parameters_by_path(&clients, &path).await.unwrap();
    assert_eq!(
        secrets.get("DEEPSEEK_API_KEY").map(|s| s.expose()),
        Some("sk-from-ssm")
    );
    assert_eq!(
        secrets.get("ARK_API_KEY").map(|s| s.expose()),
        Some("ark-from-ssm")
    );
    let err = parameters_by_path(&clients, "relative/path")
        .await
        .unwrap_err();
    assert_eq!(err.var, "KILN_PROVIDER_KEYS_SSM_PATH");

    // A providers file whose key lives only in SSM loads with it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("providers.toml");
    std::fs::write(&file, "[[provider]]\nname = \"deepseek\"\nprotocol = \"openai\"\nendpoint = \"https://api.example.com/v1\"\nmodel = \"m\"\napi_key_env = \"DEEPSEEK_API_KEY\"\npriority = 1\n").unwrap();
    let mut settings = kiln_shared::config::Settings::from_lookup(|_| None).unwrap();
    settings.providers_file = Some(file);
    let providers = kiln_shared::providers::file::from_settings_with(&settings, &secrets).unwrap();
    assert_eq!(providers.entries()[0].provider.name(), "deepseek");
}

#[tokio::test]
async fn the_webhooks_function_delivers_a_signed_event() {
    use kiln_shared::domain::{Webhook, WebhookEvent};
    use kiln_shared::ports::secrets_for;
    use kiln_tests::webhook_receiver::Receiver;

    let moto = moto().await;
    let aws = moto.fresh(&[]).await;
    let services = aws.services(Arc::new(SystemClock));
    let rx = Receiver::start().await;
    let user = UserId::parse("lena").unwrap();
    let (secrets, _) = secrets_for(&*services.webhook_secrets, &user, SystemClock.now())
        .await
        .unwrap();
    rx.set_secret(secrets.current.expose());

    let mut job = pending_job(&services).await;
    job.webhook = Some(Webhook {
        url: rx.url.clone(),
        events: vec![WebhookEvent::Completed],
    });
    job.version += 1;
    services.store.update(&job).await.unwrap();
    let claimed = job
        .claim(SystemClock.now(), Duration::from_secs(60))
        .unwrap();
    services.store.update(&claimed).await.unwrap();
    let token = claimed.lease.unwrap().token;
    let done = claimed
        .succeed(token, "local".into(), vec![], vec![], SystemClock.now())
        .unwrap();
    services.store.update(&done).await.unwrap();

    let rt = RuntimeApi::start().await;
    let _child = spawn_with(
        WEBHOOKS_BIN,
        "kiln-webhooks",
        &rt,
        &aws,
        moto.endpoint(),
        // The receiver is on loopback: allowed only by the explicit local-development switches.
        &[
            ("KILN_WEBHOOK_ALLOW_HTTP", "true"),
            ("KILN_WEBHOOK_ALLOW_PRIVATE", "true"),
        ],
    );
    rt.wait_ready(Duration::from_secs(30)).await;
    let event = json!({"job_id": done.id, "event_id": "evt_lambda_1", "type": "job.succeeded", "occurred_at": chrono::Utc::now(), "attempts": 0});
    let batch = json!({"Records": [sqs_record("hook-1", &event.to_string(), 1), sqs_record("hook-poison", "[]", 1)]});
    let Answer::Response(body) = rt.invoke(batch, Duration::from_secs(30)).await else {
        panic!("the sender errored")
    };
    assert_eq!(
        body,
        json!({"batchItemFailures": [{"itemIdentifier": "hook-poison"}]})
    );
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].id, "evt_lambda_1");
    assert!(
        got[0].verified,
        "signed per Standard Webhooks with the user's secret"
    );
    assert_eq!(got[0].body["data"]["status"], "success");
}

#[tokio::test]
async fn the_api_function_reads_its_jwt_secret_from_ssm() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let moto = moto().await;
    let aws = moto.fresh(&[]).await;
    let clients = moto.clients().await;
    let name = format!(
        "/kiln-t-{}/jwt",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let secret = "a-jwt-secret-of-at-least-thirty-two-bytes";
    clients
        .ssm
        .put_parameter()
        .name(&name)
        .value(secret)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    let rt = RuntimeApi::start().await;
    let _child = spawn_with(
        API_BIN,
        "kiln-api",
        &rt,
        &aws,
        moto.endpoint(),
        &[
            ("KILN_JWT_SECRET_SSM", &name),
            ("KILN_JWT_ISSUER", "https://issuer.example"),
            ("KILN_JWT_AUDIENCE", "kiln"),
        ],
    );
    rt.wait_ready(Duration::from_secs(30)).await;
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"sub": "jwt-user", "iss": "https://issuer.example", "aud": "kiln", "exp": now + 300, "iat": now});
    let token = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let (status, body) = response(
        rt.invoke(
            http_event("GET", "/v1/jobs", Some(&token), None),
            Duration::from_secs(10),
        )
        .await,
    );
    assert_eq!(status, 200, "{body}");
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(b"some-other-secret-of-thirty-two-bytes"),
    )
    .unwrap();
    let (status, _) = response(
        rt.invoke(
            http_event("GET", "/v1/jobs", Some(&forged), None),
            Duration::from_secs(10),
        )
        .await,
    );
    assert_eq!(status, 401);
}

#[tokio::test]
async fn the_functions_refuse_to_start_on_the_local_backend() {
    for bin in [API_BIN, WORKER_BIN, WEBHOOKS_BIN] {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(Path::new(bin))
            .env_clear()
            .env("KILN_BACKEND", "local")
            .env("KILN_DATA_DIR", dir.path())
            .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bin} started on the local backend");
        assert!(stderr.contains("KILN_BACKEND"), "{bin}: {stderr}");
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "{bin} wrote into the data directory"
        );
    }
}
