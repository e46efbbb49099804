//! Client commands: talk HTTP to a Kiln API (`KILN_URL`) with an API key (`KILN_API_KEY`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

/// Where the API is and who we are.
#[derive(Debug, Args)]
pub struct Conn {
    /// Base URL of the Kiln API.
    #[arg(long, env = "KILN_URL", default_value = "http://127.0.0.1:3000")]
    url: String,
    /// API key (create one with `kiln keys create --user NAME`).
    #[arg(long, env = "KILN_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Seconds to wait for each HTTP answer.
    #[arg(long, default_value_t = 30)]
    http_timeout: u64,
}

/// `kiln submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    conn: Conn,
    /// What to draw.
    prompt: String,
    /// How many images (1-4).
    #[arg(long)]
    n: Option<u8>,
    /// Image size, e.g. 1024x1024, 512x512, 1024x1536.
    #[arg(long)]
    size: Option<String>,
    /// What to avoid.
    #[arg(long)]
    negative_prompt: Option<String>,
    /// Style name.
    #[arg(long)]
    style: Option<String>,
    /// Character name.
    #[arg(long)]
    character: Option<String>,
    /// Seed, for repeatable images.
    #[arg(long)]
    seed: Option<u64>,
    /// standard or high.
    #[arg(long)]
    quality: Option<String>,
    /// Your own data to keep with the job, as a JSON object.
    #[arg(long)]
    metadata: Option<String>,
    /// Wait for the job to finish and save its images.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// With --wait: folder to save the images in.
    #[arg(long, default_value = "kiln-images")]
    out: PathBuf,
    /// Print the job as JSON.
    #[arg(long)]
    json: bool,
}

/// `kiln get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    conn: Conn,
    /// The job id.
    id: String,
}

/// `kiln list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    conn: Conn,
    /// Only jobs in this state: pending, running, success, failed, canceled.
    #[arg(long)]
    status: Option<String>,
    /// Jobs per page (1-100).
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// Continue from a previous page's next cursor.
    #[arg(long)]
    cursor: Option<String>,
    /// Follow every page.
    #[arg(long)]
    all: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `kiln cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    #[command(flatten)]
    conn: Conn,
    /// The job id.
    id: String,
}

struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    fn new(conn: &Conn) -> anyhow::Result<Self> {
        let key = conn
            .api_key
            .clone()
            .filter(|k| !k.trim().is_empty())
            .ok_or_else(|| anyhow!("KILN_API_KEY is not set: create a key with `kiln keys create --user NAME` and export it"))?;
        let base = conn.url.trim_end_matches('/').to_owned();
        reqwest::Url::parse(&base).with_context(|| format!("KILN_URL: not a URL: {base:?}"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(conn.http_timeout.max(1)))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self { http, base, key })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = req
            .bearer_auth(&self.key)
            .send()
            .await
            .with_context(|| format!("cannot reach Kiln at {}", self.base))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .context("connection dropped while reading the answer")?;
        let value: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| json!({ "raw": String::from_utf8_lossy(&body) }));
        if status.is_success() {
            return Ok(value);
        }
        let err = &value["error"];
        let field = err["field"]
            .as_str()
            .map(|f| format!(" (field {f})"))
            .unwrap_or_default();
        match (err["code"].as_str(), err["message"].as_str()) {
            (Some(code), Some(msg)) => bail!("{status}: {code}: {msg}{field}"),
            _ => bail!("{status}: {}", String::from_utf8_lossy(&body)),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

fn job_id(id: &str) -> anyhow::Result<&str> {
    let id = id.trim();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        bail!("ID: not a job id: {id:?}");
    }
    Ok(id)
}

/// Submits a job; with `--wait`, waits and saves the images.
pub async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.conn)?;
    let mut body = json!({ "prompt": args.prompt });
    let fields = [
        ("size", args.size.map(Value::from)),
        ("negative_prompt", args.negative_prompt.map(Value::from)),
        ("style", args.style.map(Value::from)),
        ("character", args.character.map(Value::from)),
        ("quality", args.quality.map(Value::from)),
        ("n", args.n.map(Value::from)),
        ("seed", args.seed.map(Value::from)),
    ];
    for (k, v) in fields {
        if let Some(v) = v {
            body[k] = v;
        }
    }
    if let Some(m) = &args.metadata {
        body["metadata"] = serde_json::from_str(m).context("--metadata: not valid JSON")?;
    }
    let job = api
        .send(api.http.post(api.url("/v1/jobs")).json(&body))
        .await?;
    let id = job["id"]
        .as_str()
        .ok_or_else(|| anyhow!("the server answered without a job id"))?
        .to_owned();
    if !args.wait {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&job)?);
        } else {
            println!(
                "Submitted job {id} ({}). Check it with `kiln get {id}`.",
                job["status"].as_str().unwrap_or("?")
            );
            println!("{id}");
        }
        return Ok(());
    }
    let job = wait_for(&api, &id, Duration::from_secs(args.timeout)).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&job)?);
    }
    match job["status"].as_str() {
        Some("success") => {
            let paths = download(&api, &job, &args.out).await?;
            if !args.json {
                println!("Job {id} succeeded ({} image(s)):", paths.len());
                for p in paths {
                    println!("{}", p.display());
                }
            }
            Ok(())
        }
        Some(status) => {
            let msg = job["error"]["message"]
                .as_str()
                .unwrap_or("no reason given");
            bail!("job {id} ended {status}: {msg}")
        }
        None => bail!("job {id}: the server answered without a status"),
    }
}

async fn wait_for(api: &Api, id: &str, timeout: Duration) -> anyhow::Result<Value> {
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .expect("static template is valid"),
    );
    spinner.enable_steady_tick(Duration::from_millis(100));
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        let job = api
            .send(api.http.get(api.url(&format!("/v1/jobs/{id}"))))
            .await?;
        let status = job["status"].as_str().unwrap_or("?").to_owned();
        spinner.set_message(format!("job {id}: {status}"));
        if matches!(status.as_str(), "success" | "failed" | "canceled") {
            spinner.finish_and_clear();
            return Ok(job);
        }
        if started.elapsed() >= timeout {
            spinner.finish_and_clear();
            bail!("job {id} is still {status} after {}s (--timeout); it keeps running: `kiln get {id}`", timeout.as_secs());
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

async fn download(api: &Api, job: &Value, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    tokio::fs::create_dir_all(out)
        .await
        .with_context(|| format!("--out: cannot create {}", out.display()))?;
    let id = job["id"].as_str().unwrap_or("job");
    let mut paths = Vec::new();
    for (i, image) in job["images"].as_array().into_iter().flatten().enumerate() {
        let url = image["url"]
            .as_str()
            .ok_or_else(|| anyhow!("image {i} has no url"))?;
        let ext = match image["content_type"].as_str() {
            Some("image/jpeg") => "jpg",
            Some("image/webp") => "webp",
            _ => "png",
        };
        // Signed URLs carry their own authorization; no API key is sent with them.
        let resp = api
            .http
            .get(url)
            .send()
            .await
            .with_context(|| format!("cannot download image {i}"))?;
        if !resp.status().is_success() {
            bail!("image {i}: download answered {}", resp.status());
        }
        let bytes = resp
            .bytes()
            .await
            .with_context(|| format!("image {i}: download interrupted"))?;
        let path = out.join(format!("{id}-{i}.{ext}"));
        tokio::fs::write(&path, &bytes)
            .await
            .with_context(|| format!("cannot write {}", path.display()))?;
        paths.push(path);
    }
    Ok(paths)
}

/// Prints one job as JSON.
pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.conn)?;
    let id = job_id(&args.id)?;
    let job = api
        .send(api.http.get(api.url(&format!("/v1/jobs/{id}"))))
        .await?;
    println!("{}", serde_json::to_string_pretty(&job)?);
    Ok(())
}

/// Lists jobs, following cursors with `--all`.
pub async fn list(args: ListArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.conn)?;
    let mut cursor = args.cursor.clone();
    let mut all = Vec::new();
    let next = loop {
        let mut query = vec![("limit", args.limit.to_string())];
        if let Some(s) = &args.status {
            query.push(("status", s.clone()));
        }
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let page = api
            .send(api.http.get(api.url("/v1/jobs")).query(&query))
            .await?;
        all.extend(page["data"].as_array().cloned().unwrap_or_default());
        let next = page["next_cursor"].as_str().map(str::to_owned);
        if !args.all || next.is_none() {
            break next;
        }
        cursor = next;
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "data": all, "next_cursor": next }))?
        );
        return Ok(());
    }
    println!("{:<36}  {:<8}  {:<20}  PROMPT", "ID", "STATUS", "CREATED");
    for j in &all {
        let prompt: String = j["request"]["prompt"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(48)
            .collect();
        let created = j["created_at"]
            .as_str()
            .unwrap_or("")
            .get(..19)
            .unwrap_or("")
            .replace('T', " ");
        println!(
            "{:<36}  {:<8}  {:<20}  {prompt}",
            j["id"].as_str().unwrap_or("?"),
            j["status"].as_str().unwrap_or("?"),
            created
        );
    }
    if let Some(c) = next {
        eprintln!("more: kiln list --cursor {c}   (or --all)");
    }
    Ok(())
}

/// Cancels a job.
pub async fn cancel(args: CancelArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.conn)?;
    let id = job_id(&args.id)?;
    let job = api
        .send(api.http.post(api.url(&format!("/v1/jobs/{id}/cancel"))))
        .await?;
    println!("job {id}: {}", job["status"].as_str().unwrap_or("?"));
    Ok(())
}
