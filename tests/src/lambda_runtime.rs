//! A Lambda Runtime API emulator on `127.0.0.1:0`, enough to run a Lambda binary as a real
//! process: it hands out events on `GET /invocation/next` (long polling), collects answers and
//! errors, and notes when the function first asked for work (its init duration).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// What the function answered for one invocation.
#[derive(Debug, Clone)]
pub enum Answer {
    /// `POST /invocation/{id}/response`.
    Response(Value),
    /// `POST /invocation/{id}/error`.
    Error(Value),
}

#[derive(Default)]
struct Inner {
    pending: VecDeque<(String, Value, u64)>,
    waiting: HashMap<String, oneshot::Sender<Answer>>,
    first_next: Option<Instant>,
    init_error: Option<Value>,
}

/// A running emulator.
#[derive(Clone)]
pub struct RuntimeApi {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    ready: Arc<Notify>,
    started: Instant,
}

type Shared = (Arc<Mutex<Inner>>, Arc<Notify>);

impl RuntimeApi {
    /// Starts the emulator.
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let ready = Arc::new(Notify::new());
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state((inner.clone(), ready.clone()));
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind runtime api");
        let addr = listener.local_addr().expect("runtime api address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            inner,
            ready,
            started: Instant::now(),
        }
    }

    /// The environment a Lambda process needs to talk to this emulator.
    pub fn env(&self, function: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_LAMBDA_RUNTIME_API", self.addr.to_string()),
            ("AWS_LAMBDA_FUNCTION_NAME", function.to_owned()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512".to_owned()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_owned()),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "test".to_owned()),
            (
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{function}"),
            ),
        ]
    }

    /// Hands `event` to the function and waits for its answer, with `deadline_in` as the
    /// invocation's remaining time.
    pub async fn invoke(&self, event: Value, deadline_in: Duration) -> Answer {
        let id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        let deadline_ms = (chrono::Utc::now()
            + chrono::Duration::from_std(deadline_in).expect("short deadline"))
        .timestamp_millis() as u64;
        {
            let mut g = self.inner.lock().expect("emulator mutex");
            g.pending.push_back((id.clone(), event, deadline_ms));
            g.waiting.insert(id, tx);
        }
        self.ready.notify_waiters();
        self.ready.notify_one();
        tokio::time::timeout(deadline_in + Duration::from_secs(10), rx)
            .await
            .expect("the function answered in time")
            .expect("the emulator kept the invocation")
    }

    /// Time from the emulator's start to the function's first `next` call, if it made one.
    pub fn init_duration(&self) -> Option<Duration> {
        self.inner
            .lock()
            .expect("emulator mutex")
            .first_next
            .map(|t| t - self.started)
    }

    /// Waits until the function has asked for its first event.
    pub async fn wait_ready(&self, timeout: Duration) -> Duration {
        let end = Instant::now() + timeout;
        loop {
            if let Some(d) = self.init_duration() {
                return d;
            }
            if let Some(e) = self
                .inner
                .lock()
                .expect("emulator mutex")
                .init_error
                .clone()
            {
                panic!("the function failed to initialise: {e}");
            }
            assert!(
                Instant::now() < end,
                "the function never asked for an event"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn next(State((inner, ready)): State<Shared>) -> Response {
    loop {
        let notified = ready.notified();
        {
            let mut g = inner.lock().expect("emulator mutex");
            g.first_next.get_or_insert_with(Instant::now);
            if let Some((id, event, deadline_ms)) = g.pending.pop_front() {
                let mut headers = HeaderMap::new();
                let h = |v: &str| HeaderValue::from_str(v).expect("header value");
                headers.insert("lambda-runtime-aws-request-id", h(&id));
                headers.insert("lambda-runtime-deadline-ms", h(&deadline_ms.to_string()));
                headers.insert(
                    "lambda-runtime-invoked-function-arn",
                    h("arn:aws:lambda:ap-northeast-1:000000000000:function:kiln"),
                );
                headers.insert(
                    "lambda-runtime-trace-id",
                    h("Root=1-00000000-000000000000000000000000"),
                );
                return (StatusCode::OK, headers, axum::Json(event)).into_response();
            }
        }
        notified.await;
    }
}

fn finish(inner: &Mutex<Inner>, id: &str, answer: Answer) -> StatusCode {
    match inner.lock().expect("emulator mutex").waiting.remove(id) {
        Some(tx) => {
            let _ = tx.send(answer);
            StatusCode::ACCEPTED
        }
        None => StatusCode::BAD_REQUEST,
    }
}

fn json(body: &Bytes) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

async fn response(
    State((inner, _)): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    finish(&inner, &id, Answer::Response(json(&body)))
}

async fn error(
    State((inner, _)): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    finish(&inner, &id, Answer::Error(json(&body)))
}

async fn init_error(State((inner, _)): State<Shared>, body: Bytes) -> StatusCode {
    inner.lock().expect("emulator mutex").init_error = Some(json(&body));
    StatusCode::ACCEPTED
}

/// Peak resident memory of a process (`VmHWM`), in KiB, on Linux.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A Lambda binary set up as the function `function` on `aws`'s resources: talking to `rt`, its
/// AWS calls sent to `endpoint` with dummy credentials, JSON logs, and none of this process's own
/// `KILN_*` and `AWS_*` variables. Killed when dropped; callers add settings and choose where its
/// output goes.
pub fn function_command(
    bin: &std::path::Path,
    function: &str,
    rt: &RuntimeApi,
    aws: &crate::moto::TestAws,
    endpoint: &str,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin);
    for (k, _) in std::env::vars() {
        if k.starts_with("KILN_") || k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    let r = &aws.resources;
    cmd.envs(rt.env(function))
        .env("KILN_BACKEND", "aws")
        .env("KILN_TABLE", &r.table)
        .env("KILN_JOBS_QUEUE_URL", &r.jobs_queue_url)
        .env("KILN_JOBS_DLQ_URL", &r.jobs_dlq_url)
        .env("KILN_WEBHOOKS_QUEUE_URL", &r.webhooks_queue_url)
        .env("KILN_WEBHOOKS_DLQ_URL", &r.webhooks_dlq_url)
        .env("KILN_BUCKET", &r.bucket)
        .env("KILN_LOG_FORMAT", "json")
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_REGION", crate::moto::REGION)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .kill_on_drop(true);
    cmd
}
