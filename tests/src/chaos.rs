//! Chaos run: `kiln serve` processes on one data directory take a bounded load while a fake
//! provider fails a share of calls at random and the processes are killed with SIGKILL and
//! restarted; at the end, what the pipeline promises is checked from the outside: every job
//! terminal, none lost, none run to success twice, no orphan images, every webhook event
//! delivered at least once under one stable id.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use futures::StreamExt;
use kiln_shared::adapters::Services;
use kiln_shared::clock::{Clock, SystemClock};
use kiln_shared::config::Settings;
use kiln_shared::domain::{ApiKeyRecord, Job, JobId, JobStatus, Tier, UserId};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::fake_provider::{Behavior, FakeProvider, RandomMix};
use crate::process::KilnProcess;

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// The `kiln` binary.
    pub kiln_bin: PathBuf,
    /// Jobs submitted.
    pub jobs: usize,
    /// SIGKILLs (each followed by a restart).
    pub kills: usize,
    /// `kiln serve` processes on the data directory at once.
    pub processes: usize,
    /// Seed of the provider's faults and of the kills' timing.
    pub seed: u64,
    /// Longest the whole run may take before it counts as a failure.
    pub deadline: Duration,
}

/// What the run found.
#[derive(Debug, Default)]
pub struct ChaosReport {
    /// One line per figure or check.
    pub lines: Vec<String>,
    /// Whether every check passed.
    pub ok: bool,
}

impl ChaosReport {
    fn check(&mut self, name: &str, passed: bool, detail: String) {
        self.lines.push(format!(
            "{:<38} {:<5} {detail}",
            name,
            if passed { "ok" } else { "FAIL" }
        ));
        self.ok &= passed;
    }

    fn note(&mut self, line: String) {
        self.lines.push(line);
    }
}

/// A webhook delivery as received: `webhook-id`, event type, job id.
type Delivered = (String, String, String);

/// Runs the chaos scenario.
pub async fn run(cfg: ChaosConfig) -> anyhow::Result<ChaosReport> {
    let started = Instant::now();
    let give_up = started + cfg.deadline;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let mut rng = cfg.seed ^ 0x5EED;

    let fake = FakeProvider::start().await;
    fake.set_default(Behavior::Random(RandomMix {
        seed: cfg.seed,
        server_error: 0.10,
        slow: 0.05,
        slow_for: Duration::from_millis(1500),
        invalid_image: 0.05,
    }));
    let providers = dir.path().join("providers.toml");
    std::fs::write(
        &providers,
        format!(
            "[[provider]]\nname = \"fake\"\nprotocol = \"openai\"\nendpoint = \"{}/v1\"\n\
             model = \"m\"\napi_key_env = \"FAKE_KEY\"\ncost_per_image_usd = 0.002\npriority = 1\n\
             tiers = [\"standard\", \"vip\"]\ntimeout = \"1s\"\nmax_concurrency = 64\n",
            fake.base_url
        ),
    )?;
    let env: Vec<(&str, String)> = vec![
        ("KILN_PROVIDERS", providers.display().to_string()),
        ("FAKE_KEY", "sk-chaos".into()),
        ("KILN_RATE_LIMIT_STANDARD", "off".into()),
        ("KILN_MAX_IN_FLIGHT_STANDARD", "off".into()),
        ("KILN_JOB_TIMEOUT_SECS", "4".into()),
        ("KILN_LEASE_SECS", "6".into()),
        ("KILN_VISIBILITY_TIMEOUT_SECS", "8".into()),
        ("KILN_WORKER_CONCURRENCY", "16".into()),
        ("KILN_WEBHOOK_ALLOW_HTTP", "true".into()),
        ("KILN_WEBHOOK_ALLOW_PRIVATE", "true".into()),
        ("KILN_WEBHOOK_RETRY_DELAYS", "1,1,2,2".into()),
    ];

    // This process opens the same database to make the key and, at the end, read the jobs.
    let vars: HashMap<&str, String> = env
        .iter()
        .cloned()
        .chain([("KILN_DATA_DIR", data.display().to_string())])
        .collect();
    let settings =
        Settings::from_lookup(|k| vars.get(k).cloned()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let services = Services::from_settings(&settings, Arc::new(SystemClock)).await?;
    let (key, record) = ApiKeyRecord::issue(
        UserId::parse("chaos").map_err(anyhow::Error::msg)?,
        Tier::Standard,
        SystemClock.now(),
    );
    services.store.insert_api_key(&record).await?;
    let key = key.expose().to_owned();

    let (hook_url, delivered) = receiver().await?;
    let mut procs = Vec::new();
    for _ in 0..cfg.processes {
        procs.push(Some(KilnProcess::start(&cfg.kiln_bin, &data, &env).await));
    }
    let urls: Arc<Mutex<Vec<Option<String>>>> = Arc::new(Mutex::new(
        procs
            .iter()
            .map(|p| p.as_ref().map(|p| p.base_url.clone()))
            .collect(),
    ));

    // Submit every job, each with an idempotency key so that a retry after a kill cut the
    // answer off cannot make a second job.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let submits = futures::stream::iter(0..cfg.jobs)
        .map(|i| {
            let (http, urls, key, hook_url) = (
                http.clone(),
                Arc::clone(&urls),
                key.clone(),
                hook_url.clone(),
            );
            async move {
                let body = json!({
                    "prompt": format!("chaos {i}"),
                    "size": "256x256",
                    "webhook": {"url": hook_url},
                });
                let mut tries = 0usize;
                loop {
                    tries += 1;
                    let url = {
                        let u = urls.lock().expect("urls");
                        let alive: Vec<&String> = u.iter().flatten().collect();
                        (!alive.is_empty()).then(|| alive[(i + tries) % alive.len()].clone())
                    };
                    if let Some(url) = url {
                        let sent = http
                            .post(format!("{url}/v1/jobs"))
                            .bearer_auth(&key)
                            .header("Idempotency-Key", format!("chaos-{i}"))
                            .json(&body)
                            .send()
                            .await;
                        if let Ok(resp) = sent {
                            if resp.status().as_u16() == 202 {
                                if let Ok(job) = resp.json::<Value>().await {
                                    if let Some(id) = job["id"].as_str() {
                                        return Some((i, id.to_owned()));
                                    }
                                }
                            }
                        }
                    }
                    if tries > 200 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>();

    // Kill a random process at random moments while the load runs, and restart it.
    let killer = async {
        let mut kills = 0;
        while kills < cfg.kills {
            let pause = 300 + next(&mut rng) % 1200;
            tokio::time::sleep(Duration::from_millis(pause)).await;
            let i = (next(&mut rng) as usize) % procs.len();
            if let Some(p) = procs[i].take() {
                urls.lock().expect("urls")[i] = None;
                p.kill9().await;
                kills += 1;
                let p = KilnProcess::start(&cfg.kiln_bin, &data, &env).await;
                urls.lock().expect("urls")[i] = Some(p.base_url.clone());
                procs[i] = Some(p);
            }
        }
        kills
    };
    let (submitted, kills) = tokio::join!(submits, killer);
    let refused = submitted.iter().filter(|s| s.is_none()).count();
    let accepted: Vec<(usize, JobId)> = submitted
        .into_iter()
        .flatten()
        .map(|(i, id)| Ok((i, id.parse().map_err(|_| anyhow::anyhow!("bad id {id}"))?)))
        .collect::<anyhow::Result<_>>()?;

    // Wait for every job to end (bounded), then for the webhooks of the ended ones.
    let mut jobs: BTreeMap<JobId, Option<Job>> =
        accepted.iter().map(|(_, id)| (*id, None)).collect();
    loop {
        for (id, slot) in jobs.iter_mut() {
            if slot.as_ref().is_some_and(|j| j.status.is_terminal()) {
                continue;
            }
            *slot = services.store.get(id).await?;
        }
        let open = jobs
            .values()
            .filter(|j| !j.as_ref().is_some_and(|j| j.status.is_terminal()))
            .count();
        if open == 0 || Instant::now() >= give_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ended: Vec<&Job> = jobs
        .values()
        .flatten()
        .filter(|j| j.status.is_terminal())
        .collect();
    let hooks_until = (Instant::now() + Duration::from_secs(60)).min(give_up);
    loop {
        let got: HashSet<String> = delivered
            .lock()
            .expect("deliveries")
            .iter()
            .map(|(_, _, job)| job.clone())
            .collect();
        if ended.iter().all(|j| got.contains(&j.id.to_string())) || Instant::now() >= hooks_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for p in procs.into_iter().flatten() {
        p.kill9().await;
    }

    let mut report = ChaosReport {
        ok: true,
        ..Default::default()
    };
    let success = ended
        .iter()
        .filter(|j| j.status == JobStatus::Success)
        .count();
    let failed = ended
        .iter()
        .filter(|j| j.status == JobStatus::Failed)
        .count();
    let calls = fake.requests();
    let faults = calls
        .iter()
        .filter(|r| !matches!(r.answered, Behavior::Ok))
        .count();
    report.note(format!(
        "chaos: {} jobs over {} processes, {kills} SIGKILLs, {} provider calls ({faults} faulty), {:.0} s",
        cfg.jobs,
        cfg.processes,
        calls.len(),
        started.elapsed().as_secs_f64()
    ));
    report.note(format!(
        "jobs: {} accepted, {success} success, {failed} failed",
        accepted.len()
    ));
    report.check(
        "every submit accepted",
        refused == 0,
        format!("{refused} never got a 202"),
    );
    let missing = jobs.values().filter(|j| j.is_none()).count();
    report.check(
        "none lost",
        missing == 0,
        format!("{missing} accepted jobs not in the store"),
    );
    let open = jobs.len() - missing - ended.len();
    report.check(
        "every job terminal",
        open == 0,
        format!("{open} still open"),
    );

    // A provider success counts once per run; two successes in one run means the job ran twice.
    let by_prompt: HashMap<String, JobId> = accepted
        .iter()
        .map(|(i, id)| (format!("chaos {i}"), *id))
        .collect();
    let mut successes: HashMap<JobId, u32> = HashMap::new();
    for r in calls.iter().filter(|r| matches!(r.answered, Behavior::Ok)) {
        let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        let prompt = body["prompt"].as_str().unwrap_or("");
        // The worker appends labels to the prompt; the job's own text comes first.
        let own = prompt.split(',').next().unwrap_or(prompt);
        if let Some(id) = by_prompt.get(own) {
            *successes.entry(*id).or_default() += 1;
        }
    }
    let twice: Vec<String> = jobs
        .values()
        .flatten()
        .filter(|j| successes.get(&j.id).copied().unwrap_or(0) > j.runs.max(1))
        .map(|j| j.id.to_string())
        .collect();
    let retaken = jobs.values().flatten().filter(|j| j.runs > 1).count();
    report.check(
        "none run to success twice",
        twice.is_empty(),
        format!(
            "{} jobs with more provider successes than runs; {retaken} jobs taken over after a kill{}",
            twice.len(),
            sample(&twice)
        ),
    );

    // Images: each successful job's files are exactly its images; nothing else is stored.
    let blobs = data.join(kiln_shared::adapters::local::BLOB_DIR);
    let files = list_files(&blobs)?;
    let referenced: HashSet<PathBuf> = ended
        .iter()
        .filter(|j| j.status == JobStatus::Success)
        .flat_map(|j| j.images.iter().map(|i| blobs.join(&i.key)))
        .collect();
    let absent: Vec<String> = referenced
        .iter()
        .filter(|p| !files.contains(*p))
        .map(|p| p.display().to_string())
        .collect();
    report.check(
        "every image of a success is stored",
        absent.is_empty(),
        format!("{} missing{}", absent.len(), sample(&absent)),
    );
    let orphans: Vec<String> = files
        .iter()
        .filter(|p| !referenced.contains(*p))
        .map(|p| p.strip_prefix(&blobs).unwrap_or(p).display().to_string())
        .collect();
    report.check(
        "no orphan images",
        orphans.is_empty(),
        format!(
            "{} files not referenced by a successful job{}",
            orphans.len(),
            sample(&orphans)
        ),
    );

    // Webhooks: the terminal event of every ended job, at least once, one id per event.
    let delivered = delivered.lock().expect("deliveries").clone();
    let mut ids: HashMap<(String, String), HashSet<String>> = HashMap::new();
    for (hook_id, kind, job) in &delivered {
        ids.entry((job.clone(), kind.clone()))
            .or_default()
            .insert(hook_id.clone());
    }
    let undelivered: Vec<String> = ended
        .iter()
        .filter(|j| {
            let kind = if j.status == JobStatus::Success {
                "job.succeeded"
            } else {
                "job.failed"
            };
            !ids.contains_key(&(j.id.to_string(), kind.to_owned()))
        })
        .map(|j| j.id.to_string())
        .collect();
    let unstable: Vec<String> = ids
        .iter()
        .filter(|(_, set)| set.len() > 1)
        .map(|((job, kind), _)| format!("{job} {kind}"))
        .collect();
    let duplicates = delivered.len() - ids.len();
    report.check(
        "webhooks: terminal event delivered",
        undelivered.is_empty(),
        format!(
            "{} of {} ended jobs without it; {} deliveries, {duplicates} repeats{}",
            undelivered.len(),
            ended.len(),
            delivered.len(),
            sample(&undelivered)
        ),
    );
    report.check(
        "webhooks: one id per event",
        unstable.is_empty(),
        format!(
            "{} events seen under several ids{}",
            unstable.len(),
            sample(&unstable)
        ),
    );
    Ok(report)
}

fn sample(items: &[String]) -> String {
    if items.is_empty() {
        String::new()
    } else {
        format!(
            " (e.g. {})",
            items.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        )
    }
}

fn list_files(root: &Path) -> std::io::Result<HashSet<PathBuf>> {
    let mut out = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            } else {
                out.insert(entry.path());
            }
        }
    }
    Ok(out)
}

/// splitmix64.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

type Deliveries = Arc<Mutex<Vec<Delivered>>>;

/// A webhook receiver that answers 200 and keeps `(webhook-id, type, job id)` of each delivery.
async fn receiver() -> anyhow::Result<(String, Deliveries)> {
    let got: Deliveries = Arc::default();
    let app = Router::new()
        .route(
            "/hook",
            post(
                |State(got): State<Deliveries>, headers: HeaderMap, body: axum::body::Bytes| async move {
                    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let id = headers
                        .get("webhook-id")
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let kind = v["type"].as_str().unwrap_or("").to_owned();
                    let job = v["data"]["id"].as_str().unwrap_or("").to_owned();
                    got.lock().expect("deliveries").push((id, kind, job));
                    "ok"
                },
            ),
        )
        .with_state(Arc::clone(&got));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, got))
}
