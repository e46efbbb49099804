//! The local sections: submit throughput, pipeline throughput and overhead, and the seed
//! design's inline generation against Kiln's submit.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use kiln_cli::serve::{start, RunningServer};
use kiln_shared::adapters::Services;
use kiln_shared::clock::{Clock, SystemClock};
use kiln_shared::config::Settings;
use kiln_shared::domain::{ApiKeyRecord, JobId, JobStatus, SubmitJob, Tier, UserId};
use kiln_shared::ports::{GenerationRequest, ImageProvider};
use kiln_shared::providers::Providers;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::load::{self, quantile, Plan, Request};
use crate::provider::FixedImage;
use crate::table::{ms, thousands, Row, Table};

/// Concurrent connections of the throughput figures.
const CONNS: usize = 64;
/// The body every submit sends.
const BODY: &str = r#"{"prompt":"a lighthouse at dusk","size":"512x512"}"#;

/// `kiln serve` in this process over a fresh data directory, with a key.
pub struct Local {
    server: RunningServer,
    services: Services,
    key: String,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Local {
    async fn start(
        env: &[(&str, String)],
        providers: Providers,
        worker: bool,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut vars: HashMap<String, String> = HashMap::from([
            ("KILN_ADDR".into(), "127.0.0.1:0".into()),
            ("KILN_DATA_DIR".into(), dir.path().display().to_string()),
            // One user sends everything; the per-user admission limits would measure only
            // themselves.
            ("KILN_RATE_LIMIT_STANDARD".into(), "off".into()),
            ("KILN_MAX_IN_FLIGHT_STANDARD".into(), "off".into()),
        ]);
        for (k, v) in env {
            vars.insert((*k).into(), v.clone());
        }
        let settings =
            Settings::from_lookup(|k| vars.get(k).cloned()).map_err(|e| anyhow!("{e}"))?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let services = Services::from_settings(&settings, clock).await?;
        let server = start(&settings, services.clone(), Arc::new(providers), worker).await?;
        let (key, record) = ApiKeyRecord::issue(
            UserId::parse("bench").map_err(anyhow::Error::msg)?,
            Tier::Standard,
            SystemClock.now(),
        );
        services.store.insert_api_key(&record).await?;
        Ok(Self {
            addr: server.addr,
            server,
            services,
            key: key.expose().to_owned(),
            _dir: dir,
        })
    }

    fn submit_request(&self) -> Request {
        Request::new(
            "POST",
            "/v1/jobs",
            &[("Authorization", &format!("Bearer {}", self.key))],
            BODY,
        )
    }

    /// Waits until the jobs queue is empty (every job ended and its message deleted).
    async fn drain(&self, timeout: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + timeout;
        while self.services.jobs_queue.depth().await? > 0 {
            anyhow::ensure!(
                Instant::now() < end,
                "the queue did not drain within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

fn closed(window: Duration) -> Plan {
    Plan {
        conns: CONNS,
        warmup: Duration::from_secs(1),
        window,
        rate: None,
        keep_bodies: false,
    }
}

/// A bare axum route in this process: parses the JSON body and answers 202 with a small job.
async fn bare_server() -> anyhow::Result<SocketAddr> {
    let app = Router::new().route(
        "/bare",
        post(|Json(body): Json<Value>| async move {
            let job = json!({
                "id": uuid::Uuid::now_v7().to_string(),
                "status": "pending",
                "request": body,
            });
            (StatusCode::ACCEPTED, Json(job))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

/// Submit throughput against a bare route; returns Kiln's rate.
pub async fn submit(table: &mut Table, window: Duration) -> anyhow::Result<f64> {
    let kiln = Local::start(&[], FixedImage::providers(Duration::ZERO), false).await?;
    let k = load::run(kiln.addr, kiln.submit_request(), closed(window)).await?;
    // Durable before the answer: every 202 (warm-up included) left a queued message.
    let depth = kiln.services.jobs_queue.depth().await?;
    anyhow::ensure!(depth >= k.ok, "{} accepted but {depth} queued", k.ok);
    kiln.server.stop().await;
    let bare_addr = bare_server().await?;
    let bare_req = Request::new("POST", "/bare", &[("Authorization", "Bearer x")], BODY);
    let b = load::run(bare_addr, bare_req, closed(window)).await?;
    let ratio = k.rate() / b.rate();
    eprintln!(
        "  submit: {} accepted, {} refused, {depth} queued; bare: {} answered",
        k.ok, k.other, b.ok
    );
    table.push(Row {
        figure: format!("submit POST /v1/jobs, {CONNS} conns, local backend (req/s)"),
        kiln: thousands(k.rate()),
        baseline: thousands(b.rate()),
        basis: "bare axum route, same process".into(),
        ratio: Some(ratio),
        target: ">= 10,000 and >= 0.25x".into(),
        met: Some(k.rate() >= 10_000.0 && ratio >= 0.25),
    });
    Ok(k.rate())
}

/// Jobs per second end to end with an instant provider, then the overhead at half that load.
pub async fn pipeline(
    table: &mut Table,
    window: Duration,
    submit_rate: Option<f64>,
) -> anyhow::Result<()> {
    let concurrency = std::env::var("KILN_WORKER_CONCURRENCY").unwrap_or_else(|_| "64".into());
    let kiln = Local::start(
        &[("KILN_WORKER_CONCURRENCY", concurrency.clone())],
        FixedImage::providers(Duration::ZERO),
        true,
    )
    .await?;
    // Throughput: submit as fast as 64 connections can while the pool runs, until the queue
    // is empty again.
    let t0 = Instant::now();
    let plan = Plan {
        warmup: Duration::ZERO,
        keep_bodies: true,
        ..closed(window)
    };
    let full = load::run(kiln.addr, kiln.submit_request(), plan).await?;
    kiln.drain(Duration::from_secs(300)).await?;
    let elapsed = t0.elapsed();
    let ids = job_ids(&full.bodies)?;
    let (done, _) = overheads(&kiln.services, &ids).await?;
    anyhow::ensure!(done == ids.len(), "{done} of {} jobs succeeded", ids.len());
    let jobs_rate = ids.len() as f64 / elapsed.as_secs_f64();
    eprintln!(
        "  pipeline: {} jobs in {:.2} s (submit window {:?}), worker concurrency {concurrency}",
        ids.len(),
        elapsed.as_secs_f64(),
        window
    );
    let (baseline, basis) = match submit_rate {
        Some(r) => (thousands(r), "submit alone (row above)".to_owned()),
        None => ("-".into(), "submit alone (not run)".into()),
    };
    table.push(Row {
        figure: "pipeline: jobs/s submitted and run, instant provider".into(),
        kiln: thousands(jobs_rate),
        baseline,
        basis,
        ratio: submit_rate.map(|r| jobs_rate / r),
        target: ">= 5,000".into(),
        met: Some(jobs_rate >= 5_000.0),
    });

    // Overhead at half that load, paced so that queueing shows.
    let half = Plan {
        conns: CONNS,
        warmup: Duration::ZERO,
        window,
        rate: Some(jobs_rate / 2.0),
        keep_bodies: true,
    };
    let mut paced = load::run(kiln.addr, kiln.submit_request(), half).await?;
    kiln.drain(Duration::from_secs(120)).await?;
    let ids = job_ids(&paced.bodies)?;
    let (done, mut over) = overheads(&kiln.services, &ids).await?;
    anyhow::ensure!(done == ids.len(), "{done} of {} jobs succeeded", ids.len());
    let (p50, p99) = (quantile(&mut over, 0.50), quantile(&mut over, 0.99));
    let (s50, s99) = (
        quantile(&mut paced.latencies, 0.50),
        quantile(&mut paced.latencies, 0.99),
    );
    eprintln!("  overhead: {} jobs at {:.0}/s", ids.len(), jobs_rate / 2.0);
    table.push(Row {
        figure: format!("overhead p50 at half load ({:.0} jobs/s)", jobs_rate / 2.0),
        kiln: ms(p50),
        baseline: ms(s50),
        basis: "submit answer p50, same load".into(),
        ratio: Some(p50.as_secs_f64() / s50.as_secs_f64().max(1e-6)),
        target: "-".into(),
        met: None,
    });
    table.push(Row {
        figure: "overhead p99 (completed - created - provider)".into(),
        kiln: ms(p99),
        baseline: ms(s99),
        basis: "submit answer p99, same load".into(),
        ratio: Some(p99.as_secs_f64() / s99.as_secs_f64().max(1e-6)),
        target: "< 20 ms".into(),
        met: Some(p99 < Duration::from_millis(20)),
    });
    kiln.server.stop().await;
    Ok(())
}

fn job_ids(bodies: &[Vec<u8>]) -> anyhow::Result<Vec<JobId>> {
    bodies
        .iter()
        .map(|b| {
            let v: Value = serde_json::from_slice(b)?;
            v["id"]
                .as_str()
                .context("job without id")?
                .parse()
                .map_err(|_| anyhow!("bad job id"))
        })
        .collect()
}

/// How many of `ids` succeeded, and for each, completed - created - time in providers.
async fn overheads(services: &Services, ids: &[JobId]) -> anyhow::Result<(usize, Vec<Duration>)> {
    let mut done = 0;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let job = services.store.get(id).await?.context("job vanished")?;
        if job.status != JobStatus::Success {
            continue;
        }
        done += 1;
        let Some(completed) = job.completed_at else {
            continue;
        };
        let total = (completed - job.created_at)
            .to_std()
            .unwrap_or(Duration::ZERO);
        let provider: u64 = job.attempts.iter().map(|a| a.latency_ms).sum();
        out.push(total.saturating_sub(Duration::from_millis(provider)));
    }
    Ok((done, out))
}

/// The seed design (generation inside the request) against Kiln's submit, both with a 2 s
/// provider and the same number of clients.
pub async fn seed(table: &mut Table, window: Duration) -> anyhow::Result<()> {
    const DELAY: Duration = Duration::from_secs(2);
    let window = window.max(Duration::from_secs(6));
    let plan = || Plan {
        conns: CONNS,
        warmup: Duration::ZERO,
        window,
        rate: None,
        keep_bodies: false,
    };
    let provider: Arc<dyn ImageProvider> = Arc::new(FixedImage::new(DELAY));
    let app = Router::new().route(
        "/api/generate/image",
        post(move |Json(body): Json<SubmitJob>| {
            let provider = Arc::clone(&provider);
            async move {
                let (r, _) = body
                    .validate()
                    .map_err(|e| (StatusCode::BAD_REQUEST, e.message))?;
                let req = GenerationRequest {
                    prompt: r.prompt,
                    negative_prompt: r.negative_prompt,
                    n: r.n,
                    size: r.size,
                    seed: r.seed,
                    quality: r.quality,
                };
                let images = provider
                    .generate(&req, Instant::now() + Duration::from_secs(30))
                    .await
                    .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
                Ok::<_, (StatusCode, String)>(Json(json!({
                    "success": true,
                    "data": {"workId": uuid::Uuid::now_v7().to_string(), "images": images.len()},
                })))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let seed_addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let s = load::run(
        seed_addr,
        Request::new("POST", "/api/generate/image", &[], BODY),
        plan(),
    )
    .await?;
    let kiln = Local::start(&[], FixedImage::providers(DELAY), true).await?;
    let k = load::run(kiln.addr, kiln.submit_request(), plan()).await?;
    kiln.server.stop().await;
    table.push(Row {
        figure: format!("requests accepted/s, {CONNS} clients, 2 s provider"),
        kiln: thousands(k.rate()),
        baseline: thousands(s.rate()),
        basis: "seed design: generate inside the request".into(),
        ratio: Some(k.rate() / s.rate().max(1e-9)),
        target: "-".into(),
        met: None,
    });
    table.push(Row {
        figure: "client-held time per request (mean), 2 s provider".into(),
        kiln: ms(k.mean()),
        baseline: ms(s.mean()),
        basis: "seed design: generate inside the request".into(),
        ratio: Some(k.mean().as_secs_f64() / s.mean().as_secs_f64().max(1e-9)),
        target: "-".into(),
        met: None,
    });
    Ok(())
}
