//! Kiln's HTTP API: one axum [`Router`] that the Lambda main wraps with `lambda_http` and
//! `kiln serve` binds to a TCP port. Every error, including extractor rejections, unknown routes
//! and wrong methods, answers `{"error": {"code", "message", "field"?}}` (the seed routes wrap
//! it as `{"success": false, "error": {...}}`).

pub mod auth;
pub mod body;
pub mod error;
pub mod idempotency;
pub mod intake;
pub mod jwt;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod limits;
pub mod openapi;
pub mod prefer;
pub mod routes;
pub mod submit;
pub mod templates;
pub mod view;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::Request;
use axum::routing::{get, post};
use axum::Router;
use kiln_shared::config::{Limits, Settings};
use kiln_shared::ports::{BlobStore, Intake, JobStore};
use kiln_shared::url_signing::UrlSigner;
use kiln_shared::webhooks::{GuardPolicy, SystemResolver, WebhookGuard};
use kiln_shared::Clock;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

pub use auth::Caller;
pub use body::JsonBody;
pub use error::ApiError;

/// Longest a `Prefer: wait` may hold a response: under API Gateway's 29 s integration timeout.
pub const MAX_WAIT: Duration = Duration::from_secs(25);

/// What the handlers need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Jobs and API keys.
    pub store: Arc<dyn JobStore>,
    /// Stores submitted jobs and enqueues them.
    pub intake: Arc<dyn Intake>,
    /// Images.
    pub blobs: Arc<dyn BlobStore>,
    /// Checks `/v1/images` URLs; `None` where the blob store hands out its own URLs (S3).
    pub url_signer: Option<UrlSigner>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Settings of the API.
    pub config: ApiConfig,
}

/// Settings of the API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Base of absolute URLs; `None` takes `http://{Host}` from each request.
    pub public_url: Option<String>,
    /// Lifetime of signed image URLs.
    pub url_ttl: Duration,
    /// How long jobs are kept.
    pub retention: Duration,
    /// Largest request body; larger is `413`.
    pub max_body_bytes: usize,
    /// Longest `Prefer: wait` honoured; longer is clamped.
    pub max_wait: Duration,
    /// Checks webhook URLs at submit (scheme, and every address the host resolves to).
    pub webhook_guard: WebhookGuard,
    /// Checks JWT bearer tokens; `None` accepts API keys only.
    pub jwt: Option<Arc<jwt::JwtVerifier>>,
    /// Rate limits and caps on jobs in flight, per tier.
    pub limits: Limits,
    /// Origins allowed by CORS (`*` for any); empty sends no CORS headers.
    pub cors_origins: Vec<String>,
    /// API keys found recently.
    pub api_keys: auth::KeyCache,
}

impl ApiConfig {
    /// The API's part of the process settings.
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            public_url: s.public_url.clone(),
            url_ttl: s.url_ttl,
            retention: s.retention,
            max_body_bytes: s.max_body_bytes,
            max_wait: MAX_WAIT,
            webhook_guard: WebhookGuard::new(
                GuardPolicy {
                    allow_http: s.webhook_allow_http,
                    allow_private: s.webhook_allow_private,
                },
                Arc::new(SystemResolver),
            ),
            jwt: s.jwt.clone().map(|j| Arc::new(jwt::JwtVerifier::new(j))),
            limits: s.limits,
            cors_origins: s.cors_origins.clone(),
            api_keys: auth::KeyCache::new(s.api_key_cache),
        }
    }
}

/// The API.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    let v1 = Router::new()
        .route(
            "/v1/jobs",
            post(routes::jobs::create).get(routes::jobs::list),
        )
        .route("/v1/jobs/batch", post(routes::jobs::batch))
        .route("/v1/jobs/{id}", get(routes::jobs::get))
        .route("/v1/jobs/{id}/cancel", post(routes::jobs::cancel))
        .route("/v1/images/{*key}", get(routes::images::get))
        .route("/v1/usage", get(routes::usage::get))
        .route(
            "/v1/templates",
            post(routes::templates::create).get(routes::templates::list),
        )
        .route(
            "/v1/templates/{name}",
            get(routes::templates::get).delete(routes::templates::delete),
        )
        .route("/healthz", get(routes::health))
        .route("/openapi.json", get(openapi::document))
        .route("/docs", get(openapi::docs))
        .method_not_allowed_fallback(routes::method_not_allowed);
    // The fallback is set before the layer so that a wrong method gets the seed envelope too.
    let seed = Router::new()
        .route("/api/generate/image", post(routes::seed::image))
        .route("/api/generate/batch", post(routes::seed::batch))
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::map_response(routes::seed::envelope));
    let cors = cors(&state.config.cors_origins);
    let app = v1
        .merge(seed)
        .fallback(routes::not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(TraceLayer::new_for_http().make_span_with(request_span));
    // Outermost, so that a preflight is answered before routing and every answer, errors
    // included, carries the headers.
    match cors {
        Some(cors) => app.layer(cors).with_state(state),
        None => app.with_state(state),
    }
}

/// The CORS layer for `origins` (`*` for any); `None` for no origins.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    use axum::http::{header, HeaderName, HeaderValue, Method};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                idempotency::IDEMPOTENCY_KEY.clone(),
                prefer::PREFER.clone(),
            ])
            .expose_headers([
                header::LOCATION,
                header::RETRY_AFTER,
                prefer::PREFERENCE_APPLIED.clone(),
                HeaderName::from_static("www-authenticate"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

/// The span of one request. Only the path is recorded: the query of an image URL carries its
/// signature, which grants access until it expires.
fn request_span<B>(req: &Request<B>) -> tracing::Span {
    tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        user_id = tracing::field::Empty,
    )
}
