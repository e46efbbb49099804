//! A fake image provider speaking the `openai` (Images API) and `stability` (v2beta) protocols on
//! `127.0.0.1:0`, scriptable per request: slow, 429 with `Retry-After`, 5xx, connection dropped
//! mid-body, invalid image bytes, content-policy 400, unauthorized, or success.

use std::collections::VecDeque;
use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use serde_json::{json, Value};
use tokio::time::Instant;

/// How the fake answers one request.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// A valid image of the requested size (base64 in JSON for openai, raw bytes for stability).
    Ok,
    /// openai only: a URL to download the image from this same server.
    OkUrl,
    /// Wait this long, then answer like `Ok`.
    Slow(Duration),
    /// 429 with this `Retry-After` header value, if any.
    RateLimited(Option<String>),
    /// This 5xx status.
    ServerError(u16),
    /// 200 headers, part of the body, then the connection is cut.
    DropMidBody,
    /// 200 with bytes that are not an image.
    InvalidImage,
    /// 400 content-policy refusal.
    ContentPolicy,
    /// 401 bad key.
    Unauthorized,
    /// Each request draws one of these at random (seeded, so a run can be repeated).
    Random(RandomMix),
}

/// Shares of faulty answers; the rest succeed.
#[derive(Debug, Clone)]
pub struct RandomMix {
    /// Seed of the draws.
    pub seed: u64,
    /// Share answered 500.
    pub server_error: f64,
    /// Share answered only after `slow_for` (a timeout when that is past the client's limit).
    pub slow: f64,
    /// How long a slow answer takes.
    pub slow_for: Duration,
    /// Share answered with bytes that are not an image.
    pub invalid_image: f64,
}

impl RandomMix {
    /// The concrete behaviour for a draw `u` in `[0, 1)`.
    fn pick(&self, u: f64) -> Behavior {
        let mut edge = self.server_error;
        if u < edge {
            return Behavior::ServerError(500);
        }
        edge += self.slow;
        if u < edge {
            return Behavior::Slow(self.slow_for);
        }
        edge += self.invalid_image;
        if u < edge {
            return Behavior::InvalidImage;
        }
        Behavior::Ok
    }
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Request path.
    pub path: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// When it arrived.
    pub at: Instant,
    /// Raw body.
    pub body: Bytes,
    /// How it was answered (a random draw resolved).
    pub answered: Behavior,
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Behavior>,
    default: Option<Behavior>,
    requests: Vec<Recorded>,
    /// State of the random draws (splitmix64), seeded on first use.
    rng: Option<u64>,
}

/// A running fake provider.
#[derive(Clone)]
pub struct FakeProvider {
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeProvider {
    /// Starts a fake on a free loopback port; by default every request succeeds.
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind fake provider");
        let addr = listener.local_addr().expect("fake provider address");
        let base_url = format!("http://{addr}");
        let state = (inner.clone(), base_url.clone());
        let app = Router::new()
            .route("/v1/images/generations", post(openai))
            .route("/v2beta/stable-image/generate/{model}", post(stability))
            .route("/files/{size}", get(file))
            .with_state(state);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { base_url, inner }
    }

    /// Queues behaviours for the next requests, in order; after them, the default applies.
    pub fn script(&self, behaviors: impl IntoIterator<Item = Behavior>) {
        self.lock().script.extend(behaviors);
    }

    /// The behaviour once the script is used up.
    pub fn set_default(&self, behavior: Behavior) {
        self.lock().default = Some(behavior);
    }

    /// Requests received so far (downloads of `/files` excluded).
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// How many generation requests arrived.
    pub fn calls(&self) -> usize {
        self.lock().requests.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("fake provider mutex")
    }
}

type FakeState = (Arc<Mutex<Inner>>, String);

fn next(inner: &Mutex<Inner>, path: &str, headers: &HeaderMap, body: Bytes) -> Behavior {
    let mut g = inner.lock().expect("fake provider mutex");
    let mut behavior = g
        .script
        .pop_front()
        .or_else(|| g.default.clone())
        .unwrap_or(Behavior::Ok);
    if let Behavior::Random(mix) = &behavior {
        let state = g.rng.get_or_insert(mix.seed);
        behavior = mix.pick(next_unit(state));
    }
    g.requests.push(Recorded {
        path: path.to_owned(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        at: Instant::now(),
        body,
        answered: behavior.clone(),
    });
    behavior
}

/// A uniform draw in `[0, 1)` from splitmix64 state.
fn next_unit(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// A PNG of `w`x`h`.
pub fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("PNG encodes");
    out.into_inner()
}

fn parse_size(s: &str) -> (u32, u32) {
    s.split_once('x')
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .unwrap_or((64, 64))
}

/// Fails for everything but success shapes; returns `None` when the caller should answer with an image.
async fn failure(b: &Behavior, headers: &HeaderMap) -> Option<Response> {
    match b {
        Behavior::Ok | Behavior::OkUrl | Behavior::Random(_) => None,
        Behavior::Slow(d) => {
            tokio::time::sleep(*d).await;
            None
        }
        Behavior::RateLimited(after) => {
            let mut r = (StatusCode::TOO_MANY_REQUESTS, axum::Json(json!({"error": {"message": "slow down", "type": "rate_limit"}}))).into_response();
            if let Some(a) = after {
                r.headers_mut().insert("retry-after", a.parse().expect("header value"));
            }
            Some(r)
        }
        Behavior::ServerError(code) => Some(
            (StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), axum::Json(json!({"error": {"message": "upstream exploded"}})))
                .into_response(),
        ),
        Behavior::DropMidBody => {
            let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::from_static(b"{\"created\": 1, \"data\": [{\"b64_json\": \"iVBORw0KGgo")),
                Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "cut")),
            ];
            Some(Response::builder().status(200).header("content-type", "application/json").body(Body::from_stream(futures::stream::iter(chunks))).expect("response"))
        }
        Behavior::InvalidImage => None,
        Behavior::ContentPolicy => Some(
            (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": {"code": "content_policy_violation", "message": "Your request was rejected by the safety system.", "type": "invalid_request_error"}})),
            )
                .into_response(),
        ),
        Behavior::Unauthorized => {
            // Like some real providers, echo the key back: Kiln must scrub it.
            let presented = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").trim_start_matches("Bearer ").to_owned();
            Some((StatusCode::UNAUTHORIZED, axum::Json(json!({"error": {"message": format!("Incorrect API key provided: {presented}")}}))).into_response())
        }
    }
}

async fn openai(
    State((inner, base)): State<FakeState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let behavior = next(&inner, "/v1/images/generations", &headers, body.clone());
    if let Some(r) = failure(&behavior, &headers).await {
        return r;
    }
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let n = req["n"].as_u64().unwrap_or(1).clamp(1, 10);
    let size = req["size"].as_str().unwrap_or("64x64").to_owned();
    let (w, h) = parse_size(&size);
    let data: Vec<Value> = (0..n)
        .map(|_| match behavior {
            Behavior::InvalidImage => json!({"b64_json": base64::engine::general_purpose::STANDARD.encode(b"definitely not a png")}),
            Behavior::OkUrl => json!({"url": format!("{base}/files/{w}x{h}")}),
            _ => json!({"b64_json": base64::engine::general_purpose::STANDARD.encode(png(w, h))}),
        })
        .collect();
    axum::Json(json!({"created": 1, "data": data})).into_response()
}

async fn stability(
    State((inner, _)): State<FakeState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let behavior = next(
        &inner,
        &format!("/v2beta/stable-image/generate/{model}"),
        &headers,
        body.clone(),
    );
    if let Some(r) = failure(&behavior, &headers).await {
        return r;
    }
    if matches!(behavior, Behavior::InvalidImage) {
        return (
            [("content-type", "image/png")],
            b"not an image at all".to_vec(),
        )
            .into_response();
    }
    // Stability answers at a size chosen from the aspect ratio; the fake answers 64x64 squares.
    ([("content-type", "image/png")], png(64, 64)).into_response()
}

async fn file(Path(size): Path<String>) -> Response {
    let (w, h) = parse_size(&size);
    ([("content-type", "image/png")], png(w, h)).into_response()
}
