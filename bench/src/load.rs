//! A raw HTTP/1.1 keep-alive load generator: each connection sends one request, reads the whole
//! answer (`Content-Length` framed), and sends the next. Closed loop (as fast as answers come)
//! or paced (a fixed rate over all connections).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// One request, ready to write.
#[derive(Clone)]
pub struct Request(Arc<Vec<u8>>);

impl Request {
    /// `method path` with `headers` and a JSON `body`.
    pub fn new(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Self {
        let mut out = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for (k, v) in headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() {
            out.push_str("Content-Type: application/json\r\n");
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        Self(Arc::new(out.into_bytes()))
    }
}

/// What a run saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Answers with a 2xx status inside the measured window.
    pub ok: u64,
    /// Other answers inside the window.
    pub other: u64,
    /// Length of the measured window.
    pub window: Duration,
    /// Time from sending each measured request to its whole answer.
    pub latencies: Vec<Duration>,
    /// Bodies of the measured 2xx answers, when asked for.
    pub bodies: Vec<Vec<u8>>,
}

impl Outcome {
    /// 2xx answers per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64()
    }

    /// Mean latency.
    pub fn mean(&self) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies.iter().sum::<Duration>() / self.latencies.len() as u32
    }
}

/// How to load.
pub struct Plan {
    /// Connections.
    pub conns: usize,
    /// Not measured, before the window.
    pub warmup: Duration,
    /// Measured.
    pub window: Duration,
    /// Requests per second over all connections; `None` for a closed loop.
    pub rate: Option<f64>,
    /// Keep 2xx bodies.
    pub keep_bodies: bool,
}

/// Loads `addr` with `req` as `plan` says.
pub async fn run(addr: SocketAddr, req: Request, plan: Plan) -> anyhow::Result<Outcome> {
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.window;
    let mut tasks = Vec::new();
    for c in 0..plan.conns {
        let req = req.clone();
        let keep = plan.keep_bodies;
        // Paced: connection c sends at start + (c + k * conns) / rate.
        let pace = plan.rate.map(|r| {
            (
                Duration::from_secs_f64(plan.conns as f64 / r),
                Duration::from_secs_f64(c as f64 / r),
            )
        });
        tasks.push(tokio::spawn(async move {
            conn_loop(addr, req, start, measure_from, end, pace, keep).await
        }));
    }
    let mut total = Outcome {
        window: plan.window,
        ..Outcome::default()
    };
    for t in tasks {
        let o = t.await.context("load task")??;
        total.ok += o.ok;
        total.other += o.other;
        total.latencies.extend(o.latencies);
        total.bodies.extend(o.bodies);
    }
    Ok(total)
}

async fn conn_loop(
    addr: SocketAddr,
    req: Request,
    start: Instant,
    measure_from: Instant,
    end: Instant,
    pace: Option<(Duration, Duration)>,
    keep: bool,
) -> anyhow::Result<Outcome> {
    let mut stream = TcpStream::connect(addr).await.context("connect")?;
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut out = Outcome::default();
    tokio::time::sleep_until(start).await;
    let mut k: u32 = 0;
    loop {
        let send_at = match pace {
            Some((every, offset)) => {
                let at = start + offset + every * k;
                k += 1;
                tokio::time::sleep_until(at).await;
                at
            }
            None => Instant::now(),
        };
        if send_at >= end {
            return Ok(out);
        }
        stream.write_all(&req.0).await?;
        let (status, body) = read_response(&mut stream, &mut buf).await?;
        let done = Instant::now();
        if send_at >= measure_from && done <= end {
            if (200..300).contains(&status) {
                out.ok += 1;
                if keep {
                    out.bodies.push(body);
                }
            } else {
                out.other += 1;
            }
            // Paced requests are timed from when they were due, so a slow server cannot hide
            // its queueing (no coordinated omission).
            out.latencies.push(done - send_at);
        }
    }
}

/// Reads one `Content-Length` framed answer; returns its status and body.
async fn read_response(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let header_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed by the server");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..header_end]).context("header bytes")?;
    let status: u16 = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .context("status line")?;
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .context("answer without Content-Length")?;
    while buf.len() < header_end + len {
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed mid-body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[header_end..header_end + len].to_vec();
    buf.drain(..header_end + len);
    Ok((status, body))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The `q` quantile (0..=1) of `values`.
pub fn quantile(values: &mut [Duration], q: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort_unstable();
    let i = ((values.len() - 1) as f64 * q).round() as usize;
    values[i]
}
