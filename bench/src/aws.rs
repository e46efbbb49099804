//! The AWS figures, on moto: the Lambda binaries (zip size, init duration, peak RSS) run as
//! real processes under the Runtime API emulator, with every AWS call they make counted by a
//! proxy on loopback in front of moto; the bench itself plays the SQS event source (its
//! receives and deletes go to moto directly and are not counted, as on AWS they are not the
//! functions' calls).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use axum::body::Body;
use axum::extract::State;
use axum::http::{Request as HttpRequest, Response, StatusCode};
use kiln_shared::adapters::Services;
use kiln_shared::clock::{Clock, SystemClock};
use kiln_shared::domain::{ApiKeyRecord, Tier, UserId};
use kiln_shared::ports::ReceivedMessage;
use kiln_tests::lambda_runtime::{function_command, peak_rss_kib, Answer, RuntimeApi};
use kiln_tests::moto::{moto, TestAws};
use serde_json::{json, Value};
use tokio::process::Child;
use tokio::time::Instant;

use crate::table::{Row, Table};

/// Memory of the functions in the SAM template.
const MEMORY_GB: f64 = 0.5;
/// Provider time of each job in the GB-seconds figure (the built-in renderer's added latency).
const PROVIDER_MS: u64 = 1000;
/// Jobs run in batches of 10, and jobs run one per invocation.
const BATCHED: usize = 20;
const SINGLE: usize = 10;

type Counts = Arc<Mutex<BTreeMap<String, u64>>>;

/// Runs the section; skipped (with a note) when the Lambda binaries were not built.
pub async fn run(table: &mut Table) -> anyhow::Result<()> {
    let dir = std::env::current_exe()?
        .parent()
        .context("bench binary has no directory")?
        .to_path_buf();
    let (api_bin, worker_bin) = (dir.join("kiln-api-lambda"), dir.join("kiln-worker-lambda"));
    if !api_bin.exists() || !worker_bin.exists() {
        bail!(
            "{} and kiln-worker-lambda are missing: build them with `cargo build --release \
             --features kiln-api/lambda,kiln-worker/lambda --bin kiln-api-lambda --bin kiln-worker-lambda`",
            api_bin.display()
        );
    }
    let api_zip = zip_size(&api_bin)?;
    let worker_zip = zip_size(&worker_bin)?;

    let moto = moto().await;
    let aws = moto.fresh(&[]).await;
    let services = aws.services(Arc::new(SystemClock));
    let (proxy, counts) = counting_proxy(moto.endpoint().to_owned()).await?;
    let (key, record) = ApiKeyRecord::issue(
        UserId::parse("bench").map_err(anyhow::Error::msg)?,
        Tier::Standard,
        SystemClock.now(),
    );
    services.store.insert_api_key(&record).await?;

    // The API function: init, then submits.
    let api_rt = RuntimeApi::start().await;
    let api = spawn(&api_bin, "kiln-api", &api_rt, &aws, &proxy, &[])?;
    let api_init = api_rt.wait_ready(Duration::from_secs(30)).await;
    let submit = |n: usize| {
        let (rt, key) = (api_rt.clone(), key.expose().to_owned());
        async move {
            for _ in 0..n {
                let event = http_event(&key, json!({"prompt": "counted calls", "size": "256x256"}));
                match rt.invoke(event, Duration::from_secs(10)).await {
                    Answer::Response(r) if r["statusCode"] == 202 => {}
                    other => bail!("the API function did not accept a job: {other:?}"),
                }
            }
            Ok(())
        }
    };
    submit(BATCHED).await?;
    let api_calls = take(&counts);

    // The worker function: batches of 10, then one job per invocation.
    let worker_rt = RuntimeApi::start().await;
    let latency = PROVIDER_MS.to_string();
    let worker = spawn(
        &worker_bin,
        "kiln-worker",
        &worker_rt,
        &aws,
        &proxy,
        &[("KILN_LOCAL_LATENCY_MS", latency.as_str())],
    )?;
    let worker_init = worker_rt.wait_ready(Duration::from_secs(30)).await;
    let batched = run_batches(&worker_rt, &services, BATCHED, 10).await?;
    let batch_calls = take(&counts);
    submit(SINGLE).await?;
    let api_calls_2 = take(&counts);
    let single = run_batches(&worker_rt, &services, SINGLE, 1).await?;
    let single_calls = take(&counts);

    let api_rss = api.id().and_then(peak_rss_kib).unwrap_or(0) as f64 / 1024.0;
    let worker_rss = worker.id().and_then(peak_rss_kib).unwrap_or(0) as f64 / 1024.0;
    drop((api, worker));

    let total = |m: &BTreeMap<String, u64>| m.values().sum::<u64>() as f64;
    let api_per_job = (total(&api_calls) + total(&api_calls_2)) / (BATCHED + SINGLE) as f64;
    let batch_per_job = api_per_job + total(&batch_calls) / BATCHED as f64;
    let single_per_job = api_per_job + total(&single_calls) / SINGLE as f64;
    table.push(Row {
        figure: "AWS calls per successful job (api + worker functions)".into(),
        kiln: format!("{batch_per_job:.1}"),
        baseline: format!("{single_per_job:.1}"),
        basis: "one job per worker invocation".into(),
        ratio: Some(batch_per_job / single_per_job),
        target: "-".into(),
        met: None,
    });
    // Lambda bills each invocation's duration, rounded up to the millisecond.
    let gb_s = |durations: &[Duration], jobs: usize| {
        let ms: f64 = durations
            .iter()
            .map(|d| (d.as_secs_f64() * 1000.0).ceil())
            .sum();
        ms / 1000.0 * MEMORY_GB / jobs as f64 * 1000.0
    };
    let (gb_batch, gb_single) = (gb_s(&batched, BATCHED), gb_s(&single, SINGLE));
    table.push(Row {
        figure: format!("worker GB-s per 1,000 jobs (512 MB, {PROVIDER_MS} ms provider)"),
        kiln: format!("{gb_batch:.0}"),
        baseline: format!("{gb_single:.0}"),
        basis: "one job per worker invocation".into(),
        ratio: Some(gb_batch / gb_single),
        target: "-".into(),
        met: None,
    });
    let quoted =
        |figure: String, kiln: f64, unit: &str, quoted: &str, low: f64, target: Option<f64>| Row {
            figure,
            kiln: format!("{kiln:.1} {unit}"),
            baseline: quoted.into(),
            basis: "seed design's NestJS, quoted".into(),
            ratio: Some(kiln / low),
            target: target
                .map(|t| format!("< {t} {unit}"))
                .unwrap_or_else(|| "-".into()),
            met: target.map(|t| kiln < t),
        };
    let mb = |b: u64| b as f64 / 1_000_000.0;
    table.push(quoted(
        "api function zip".into(),
        mb(api_zip),
        "MB",
        "15-25 MB",
        15.0,
        Some(6.0),
    ));
    table.push(quoted(
        "api function init".into(),
        api_init.as_secs_f64() * 1000.0,
        "ms",
        "600-1,200 ms",
        600.0,
        Some(50.0),
    ));
    table.push(quoted(
        "api function peak RSS".into(),
        api_rss,
        "MB",
        "128-256 MB",
        128.0,
        Some(32.0),
    ));
    table.push(quoted(
        "worker function zip".into(),
        mb(worker_zip),
        "MB",
        "15-25 MB",
        15.0,
        None,
    ));
    table.push(quoted(
        "worker function init".into(),
        worker_init.as_secs_f64() * 1000.0,
        "ms",
        "600-1,200 ms",
        600.0,
        None,
    ));
    table.push(quoted(
        "worker function peak RSS".into(),
        worker_rss,
        "MB",
        "128-256 MB",
        128.0,
        None,
    ));

    let mut breakdown = String::new();
    for (label, m, jobs) in [
        (
            "api function",
            merge(&api_calls, &api_calls_2),
            BATCHED + SINGLE,
        ),
        ("worker, batches of 10", batch_calls, BATCHED),
        ("worker, one job per invocation", single_calls, SINGLE),
    ] {
        let per: Vec<String> = m
            .iter()
            .map(|(op, n)| format!("{op} {:.1}", *n as f64 / jobs as f64))
            .collect();
        breakdown.push_str(&format!("  {label}, per job: {}\n", per.join(", ")));
    }
    eprint!("{breakdown}");
    Ok(())
}

fn merge(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut out = a.clone();
    for (k, v) in b {
        *out.entry(k.clone()).or_default() += v;
    }
    out
}

fn take(counts: &Counts) -> BTreeMap<String, u64> {
    std::mem::take(&mut *counts.lock().expect("counts"))
}

/// The binary zipped as `bootstrap`, as Lambda takes it; its size in bytes.
fn zip_size(bin: &Path) -> anyhow::Result<u64> {
    let dir = tempfile::tempdir()?;
    std::fs::copy(bin, dir.path().join("bootstrap"))?;
    let status = std::process::Command::new("zip")
        .current_dir(dir.path())
        .args(["-q", "-9", "function.zip", "bootstrap"])
        .status()
        .context("zip (the Info-ZIP command) must be installed")?;
    anyhow::ensure!(status.success(), "zip failed");
    Ok(std::fs::metadata(dir.path().join("function.zip"))?.len())
}

/// Receives `jobs` messages from the jobs queue (as the event source would), hands them to the
/// worker function `per` at a time, deletes what it reports done, and returns each
/// invocation's duration.
async fn run_batches(
    rt: &RuntimeApi,
    services: &Services,
    jobs: usize,
    per: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut messages: Vec<ReceivedMessage> = Vec::new();
    let end = Instant::now() + Duration::from_secs(60);
    while messages.len() < jobs {
        anyhow::ensure!(
            Instant::now() < end,
            "only {} of {jobs} messages arrived",
            messages.len()
        );
        let want = (jobs - messages.len()).min(10);
        messages.extend(
            services
                .jobs_queue
                .receive(want, Duration::from_secs(1))
                .await?,
        );
    }
    let mut durations = Vec::new();
    for chunk in messages.chunks(per) {
        let records: Vec<Value> = chunk.iter().map(sqs_record).collect();
        let t = Instant::now();
        let answer = rt
            .invoke(json!({"Records": records}), Duration::from_secs(60))
            .await;
        durations.push(t.elapsed());
        let Answer::Response(body) = answer else {
            bail!("the worker function failed: {answer:?}")
        };
        let failed = body["batchItemFailures"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0);
        anyhow::ensure!(failed == 0, "the worker function reported failures: {body}");
        for m in chunk {
            services.jobs_queue.delete(&m.receipt_handle).await?;
        }
    }
    Ok(durations)
}

fn sqs_record(m: &ReceivedMessage) -> Value {
    json!({
        "messageId": m.message_id,
        "receiptHandle": m.receipt_handle,
        "body": m.body,
        "attributes": {
            "ApproximateReceiveCount": m.receive_count.to_string(),
            "SentTimestamp": m.sent_at.timestamp_millis().to_string(),
            "SenderId": "000000000000",
            "ApproximateFirstReceiveTimestamp": m.sent_at.timestamp_millis().to_string()
        },
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:kiln-jobs",
        "awsRegion": "us-east-1"
    })
}

fn http_event(key: &str, body: Value) -> Value {
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/v1/jobs",
        "rawQueryString": "",
        "headers": {
            "host": "kiln.execute-api.us-east-1.amazonaws.com",
            "authorization": format!("Bearer {key}"),
            "content-type": "application/json"
        },
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "kiln",
            "domainName": "kiln.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "kiln",
            "http": {"method": "POST", "path": "/v1/jobs", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "bench"},
            "requestId": uuid::Uuid::new_v4().to_string(),
            "routeKey": "$default",
            "stage": "$default",
            "time": "25/Nov/2026:12:00:00 +0000",
            "timeEpoch": 1_795_000_000_000u64
        },
        "body": body.to_string(),
        "isBase64Encoded": false
    })
}

/// Starts a Lambda binary on `aws`'s resources, with its AWS calls sent to `endpoint`.
fn spawn(
    bin: &Path,
    function: &str,
    rt: &RuntimeApi,
    aws: &TestAws,
    endpoint: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<Child> {
    let mut cmd = function_command(bin, function, rt, aws, endpoint);
    cmd.env("RUST_LOG", "warn")
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Ok(cmd.spawn()?)
}

/// A proxy on loopback in front of `target` that counts each request by AWS operation.
async fn counting_proxy(target: String) -> anyhow::Result<(String, Counts)> {
    let counts: Counts = Arc::default();
    let client = reqwest::Client::builder().build()?;
    let state = (Arc::clone(&counts), client, target);
    let app = axum::Router::new().fallback(forward).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{addr}"), counts))
}

type ProxyState = (Counts, reqwest::Client, String);

async fn forward(
    State((counts, client, target)): State<ProxyState>,
    req: HttpRequest<Body>,
) -> Response<Body> {
    let op = match req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
    {
        Some(t) => {
            let (service, action) = t.split_once('.').unwrap_or(("?", t));
            let service = if service.starts_with("DynamoDB") {
                "dynamodb"
            } else if service.starts_with("AmazonSQS") {
                "sqs"
            } else {
                service
            };
            format!("{service}:{action}")
        }
        None => format!("s3:{}", req.method()),
    };
    *counts.lock().expect("counts").entry(op).or_default() += 1;
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 20).await else {
        return status(StatusCode::BAD_REQUEST);
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut headers = parts.headers.clone();
    headers.remove("host");
    let sent = client
        .request(parts.method, format!("{target}{path}"))
        .headers(headers)
        .body(bytes)
        .send()
        .await;
    let Ok(resp) = sent else {
        return status(StatusCode::BAD_GATEWAY);
    };
    let mut out = Response::builder().status(resp.status());
    for (k, v) in resp.headers() {
        if k != "transfer-encoding" && k != "content-length" && k != "connection" {
            out = out.header(k, v);
        }
    }
    let body = resp.bytes().await.unwrap_or_default();
    out.body(Body::from(body))
        .unwrap_or_else(|_| status(StatusCode::BAD_GATEWAY))
}

fn status(s: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = s;
    r
}
