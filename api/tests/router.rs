//! The router driven in-process over the local adapters in a temporary directory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use kiln_api::{router, ApiConfig, AppState};
use kiln_shared::adapters::local::{LocalBackend, LocalOptions};
use kiln_shared::domain::{ApiKey, ApiKeyRecord, ImageRef, Job, JobId, JobStatus, Tier, UserId};
use kiln_shared::ports::{BlobStore, JobMessage, JobStore, ListQuery, Queue, StoreThenEnqueue};
use kiln_shared::ManualClock;
use serde_json::{json, Value};
use tempfile::TempDir;
use tower::ServiceExt;

const BASE: &str = "http://kiln.test";
const URL_TTL: Duration = Duration::from_secs(600);
/// How long the API keeps a found key.
const KEY_CACHE: Duration = Duration::from_secs(5);

struct TestApp {
    router: Router,
    backend: LocalBackend,
    clock: ManualClock,
    key: ApiKey,
    _dir: TempDir,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    bytes: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `field` of an error body, asserting it is a `400`.
    fn bad_field(&self) -> String {
        assert_eq!(self.status, StatusCode::BAD_REQUEST, "{}", self.json());
        let body = self.json();
        assert_eq!(body["error"]["code"], "invalid_request");
        body["error"]["field"].as_str().unwrap_or("").to_owned()
    }
}

async fn spawn_app() -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = ManualClock::default();
    let backend = LocalBackend::open(
        dir.path(),
        &LocalOptions {
            visibility_timeout: Duration::from_secs(60),
            max_receive_count: 5,
            url_signing_secret: None,
        },
        Arc::new(clock.clone()),
    )
    .expect("local backend");
    let state = AppState {
        store: backend.store.clone(),
        intake: backend.intake.clone(),
        blobs: backend.blobs.clone(),
        url_signer: Some(backend.url_signer.clone()),
        clock: Arc::new(clock.clone()),
        config: ApiConfig {
            public_url: None,
            url_ttl: URL_TTL,
            retention: Duration::from_secs(86_400),
            max_body_bytes: 4096,
            max_wait: Duration::from_secs(25),
            webhook_guard: Default::default(),
            jwt: None,
            limits: kiln_shared::config::Limits {
                standard: kiln_shared::domain::TierLimits {
                    rate: None,
                    max_in_flight: None,
                },
                vip: kiln_shared::domain::TierLimits {
                    rate: None,
                    max_in_flight: None,
                },
            },
            cors_origins: Vec::new(),
            api_keys: kiln_api::auth::KeyCache::new(KEY_CACHE),
        },
    };
    let mut app = TestApp {
        router: router(state),
        backend,
        clock,
        key: ApiKey::from_presented("placeholder"),
        _dir: dir,
    };
    app.key = app.issue_key("alice").await.0;
    app
}

impl TestApp {
    async fn issue_key(&self, user: &str) -> (ApiKey, ApiKeyRecord) {
        let user = UserId::parse(user).expect("user id");
        let (key, record) = ApiKeyRecord::issue(user, Tier::Standard, self.clock_now());
        self.backend
            .store
            .insert_api_key(&record)
            .await
            .expect("insert key");
        (key, record)
    }

    fn clock_now(&self) -> chrono::DateTime<chrono::Utc> {
        kiln_shared::Clock::now(&self.clock)
    }

    async fn send(&self, req: Request<Body>) -> Answer {
        let response = self.router.clone().oneshot(req).await.expect("infallible");
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .expect("body")
            .to_vec();
        Answer {
            status: parts.status,
            headers: parts.headers,
            bytes,
        }
    }

    fn request(&self, method: Method, path: &str) -> axum::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "kiln.test")
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.key.expose()),
            )
    }

    async fn post(&self, path: &str, body: &str) -> Answer {
        self.post_with(path, body, &[]).await
    }

    async fn post_with(&self, path: &str, body: &str, extra: &[(&str, &str)]) -> Answer {
        let mut req = self
            .request(Method::POST, path)
            .header(header::CONTENT_TYPE, "application/json");
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        self.send(req.body(Body::from(body.to_owned())).expect("request"))
            .await
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(
            self.request(Method::GET, path)
                .body(Body::empty())
                .expect("request"),
        )
        .await
    }

    async fn submit(&self, prompt: &str) -> Value {
        let a = self
            .post("/v1/jobs", &json!({"prompt": prompt}).to_string())
            .await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json());
        a.json()
    }

    /// Plays a worker: claims the job and finishes it with `images`.
    async fn finish(&self, id: &JobId, images: Vec<ImageRef>) -> Job {
        finish(self.backend.store.as_ref(), self.clock_now(), id, images).await
    }
}

async fn finish(
    store: &dyn JobStore,
    now: chrono::DateTime<chrono::Utc>,
    id: &JobId,
    images: Vec<ImageRef>,
) -> Job {
    let job = store.get(id).await.expect("get").expect("job exists");
    let running = job.claim(now, Duration::from_secs(60)).expect("claim");
    store.update(&running).await.expect("update");
    let token = running.lease.expect("lease").token;
    let done = running
        .succeed(token, "local".into(), images, vec![], now)
        .expect("succeed");
    store.update(&done).await.expect("update");
    done
}

fn job_id(view: &Value) -> JobId {
    view["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("job id")
}

#[tokio::test]
async fn submit_stores_enqueues_and_answers_the_job() {
    let app = spawn_app().await;
    let a = app
        .post(
            "/v1/jobs",
            r#"{"prompt": "a red fox", "n": 2, "size": "512x512", "metadata": {"k": "v"}}"#,
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let view = a.json();
    let id = job_id(&view);
    assert_eq!(view["status"], "pending");
    assert_eq!(view["user_id"], "alice");
    assert_eq!(view["request"]["prompt"], "a red fox");
    assert_eq!(view["request"]["n"], 2);
    assert_eq!(view["request"]["size"], "512x512");
    assert_eq!(view["metadata"], json!({"k": "v"}));
    let self_url = format!("{BASE}/v1/jobs/{id}");
    assert_eq!(view["urls"]["self"], self_url.as_str());
    assert_eq!(
        view["urls"]["cancel"],
        format!("{self_url}/cancel").as_str()
    );
    assert_eq!(a.header("location"), Some(self_url.as_str()));
    assert!(view.get("lease").is_none() && view.get("version").is_none());

    let stored = app.backend.store.get(&id).await.unwrap().expect("stored");
    assert_eq!(stored.status, JobStatus::Pending);
    let messages = app
        .backend
        .jobs_queue
        .receive(10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(JobMessage::decode(&messages[0].body).unwrap().job_id, id);

    let got = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json()["id"], view["id"]);
}

#[tokio::test]
async fn each_bad_input_is_a_400_naming_its_field_and_stores_nothing() {
    let app = spawn_app().await;
    let cases = [
        (r#"{"prompt": "   "}"#, "prompt"),
        (r#"{}"#, "prompt"),
        (r#"{"prompt": "a", "n": 0}"#, "n"),
        (r#"{"prompt": "a", "n": 5}"#, "n"),
        (r#"{"prompt": "a", "n": "2"}"#, "n"),
        (r#"{"prompt": "a", "size": "1000x1000"}"#, "size"),
        (r#"{"prompt": "a", "colour": "red"}"#, "colour"),
        (r#"{"prompt": "a", "metadata": [1, 2]}"#, "metadata"),
        (r#"{"prompt": "a", "seed": -1}"#, "seed"),
        (r#"{"prompt": "a""#, "body"),
        ("not json", "body"),
        ("", "body"),
    ];
    for (body, field) in cases {
        let a = app.post("/v1/jobs", body).await;
        assert_eq!(a.bad_field(), field, "{body}");
    }
    let page = app
        .backend
        .store
        .list(
            &UserId::parse("alice").unwrap(),
            &ListQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(page.jobs.is_empty());
    assert_eq!(app.backend.jobs_queue.depth().await.unwrap(), 0);
}

#[tokio::test]
async fn body_limits_and_content_type_are_enforced() {
    let app = spawn_app().await;
    let big = json!({"prompt": "x".repeat(10_000)}).to_string();
    let a = app.post("/v1/jobs", &big).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.json()["error"]["code"], "payload_too_large");

    for ct in [Some("text/plain"), None] {
        let mut req = app.request(Method::POST, "/v1/jobs");
        if let Some(ct) = ct {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let a = app
            .send(req.body(Body::from(r#"{"prompt": "a"}"#)).unwrap())
            .await;
        assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(a.json()["error"]["code"], "unsupported_media_type");
    }
    let a = app
        .post_with(
            "/v1/jobs",
            r#"{"prompt": "a"}"#,
            &[("content-type", "application/json; charset=utf-8")],
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn missing_unknown_and_revoked_keys_are_401() {
    let mut app = spawn_app().await;
    let no_key = Request::builder()
        .uri("/v1/jobs")
        .body(Body::empty())
        .unwrap();
    let a = app.send(no_key).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.header("www-authenticate"), Some("Bearer"));
    assert_eq!(a.json()["error"]["code"], "unauthorized");

    let good = app.key.clone();
    app.key = ApiKey::from_presented("kiln_not_a_key");
    assert_eq!(app.get("/v1/jobs").await.status, StatusCode::UNAUTHORIZED);

    let (key, record) = app.issue_key("bob").await;
    app.key = key;
    assert_eq!(app.get("/v1/jobs").await.status, StatusCode::OK);
    app.backend
        .store
        .revoke_api_key(&record.id, app.clock_now())
        .await
        .unwrap();
    // The key was found moments ago: it works until its cache entry is old.
    assert_eq!(app.get("/v1/jobs").await.status, StatusCode::OK);
    app.clock.advance(KEY_CACHE);
    let a = app.get("/v1/jobs").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // Nothing is stored for a refused caller.
    let a = app.post("/v1/jobs", r#"{"prompt": "a"}"#).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    app.key = good;
}

#[tokio::test]
async fn another_users_job_is_not_found() {
    let mut app = spawn_app().await;
    let id = job_id(&app.submit("mine").await);
    let alice = app.key.clone();
    app.key = app.issue_key("mallory").await.0;
    for a in [
        app.get(&format!("/v1/jobs/{id}")).await,
        app.post(&format!("/v1/jobs/{id}/cancel"), "").await,
        app.get(&format!("/v1/jobs/{}", JobId::new())).await,
        app.get("/v1/jobs/not-a-uuid").await,
    ] {
        assert_eq!(a.status, StatusCode::NOT_FOUND);
        assert_eq!(a.json()["error"]["code"], "not_found");
    }
    assert_eq!(app.get("/v1/jobs").await.json()["data"], json!([]));
    app.key = alice;
    let job = app.backend.store.get(&id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Pending);
}

#[tokio::test]
async fn list_pages_newest_first_and_filters_by_status() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(job_id(&app.submit(&format!("job {i}")).await));
    }
    app.finish(&ids[1], vec![]).await;

    let first = app.get("/v1/jobs?limit=2").await;
    assert_eq!(first.status, StatusCode::OK);
    let first = first.json();
    let page_ids = |v: &Value| -> Vec<JobId> {
        v["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(job_id)
            .collect()
    };
    assert_eq!(page_ids(&first), vec![ids[4], ids[3]]);
    assert_eq!(first["has_more"], true);
    let cursor = first["next_cursor"].as_str().expect("cursor").to_owned();
    let second = app.get(&format!("/v1/jobs?limit=2&cursor={cursor}")).await;
    assert_eq!(page_ids(&second.json()), vec![ids[2], ids[1]]);
    let all = app.get("/v1/jobs").await.json();
    assert_eq!(
        page_ids(&all),
        ids.iter().rev().copied().collect::<Vec<_>>()
    );
    assert_eq!(all["has_more"], false);
    assert_eq!(all["next_cursor"], Value::Null);

    let done = app.get("/v1/jobs?status=success").await.json();
    assert_eq!(page_ids(&done), vec![ids[1]]);

    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=many", "limit"),
        ("status=done", "status"),
        ("cursor=garbage", "cursor"),
        ("page=2", "page"),
    ] {
        let a = app.get(&format!("/v1/jobs?{query}")).await;
        assert_eq!(a.bad_field(), field, "{query}");
    }
}

#[tokio::test]
async fn cancel_moves_a_pending_job_once() {
    let app = spawn_app().await;
    let id = job_id(&app.submit("to cancel").await);
    let a = app.post(&format!("/v1/jobs/{id}/cancel"), "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["status"], "canceled");
    assert!(a.json()["completed_at"].is_string());
    let again = app.post(&format!("/v1/jobs/{id}/cancel"), "").await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.json()["error"]["code"], "job_finished");

    // A running job may be canceled too.
    let id = job_id(&app.submit("running").await);
    let job = app.backend.store.get(&id).await.unwrap().unwrap();
    let running = job.claim(app.clock_now(), Duration::from_secs(60)).unwrap();
    app.backend.store.update(&running).await.unwrap();
    let a = app.post(&format!("/v1/jobs/{id}/cancel"), "").await;
    assert_eq!(a.json()["status"], "canceled");
}

#[tokio::test]
async fn prefer_wait_returns_as_soon_as_the_job_ends() {
    let app = spawn_app().await;
    let store = app.backend.store.clone();
    let now = app.clock_now();
    let worker = tokio::spawn(async move {
        let alice = UserId::parse("alice").unwrap();
        let query = ListQuery {
            limit: 1,
            ..Default::default()
        };
        loop {
            let page = store.list(&alice, &query).await.unwrap();
            if let Some(job) = page.jobs.first() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                finish(store.as_ref(), now, &job.id, vec![]).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let started = Instant::now();
    let a = app
        .post_with(
            "/v1/jobs",
            r#"{"prompt": "quick"}"#,
            &[("prefer", "wait=30")],
        )
        .await;
    worker.await.unwrap();
    assert_eq!(a.status, StatusCode::OK, "{}", a.json());
    assert_eq!(a.json()["status"], "success");
    assert_eq!(a.header("preference-applied"), Some("wait=25"));
    assert!(a.header("location").is_some());
    assert!(started.elapsed() < Duration::from_secs(5));

    // Nobody finishes this one: the wait runs out and the job is still pending.
    let a = app
        .post_with("/v1/jobs", r#"{"prompt": "slow"}"#, &[("prefer", "wait=1")])
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.json()["status"], "pending");

    for bad in ["wait=soon", "wait=-1", "wait"] {
        let a = app
            .post_with("/v1/jobs", r#"{"prompt": "a"}"#, &[("prefer", bad)])
            .await;
        assert_eq!(a.bad_field(), "Prefer", "{bad}");
    }
    assert_eq!(app.backend.jobs_queue.depth().await.unwrap(), 2);
}

#[tokio::test]
async fn signed_image_urls_serve_until_they_expire() {
    let app = spawn_app().await;
    let id = job_id(&app.submit("with image").await);
    let key = format!("images/alice/{id}/0.png");
    let png = b"\x89PNG\r\n\x1a\nnot really".to_vec();
    app.backend
        .blobs
        .put(&key, png.clone(), "image/png")
        .await
        .unwrap();
    let image = ImageRef {
        key: key.clone(),
        width: 256,
        height: 256,
        content_type: "image/png".into(),
        bytes: png.len() as u64,
        sha256: "00".into(),
    };
    app.finish(&id, vec![image]).await;

    let view = app.get(&format!("/v1/jobs/{id}")).await.json();
    assert_eq!(view["status"], "success");
    assert_eq!(view["images"][0]["key"], key.as_str());
    let url = view["images"][0]["url"].as_str().expect("url").to_owned();
    let path = url.strip_prefix(BASE).expect("absolute URL").to_owned();
    assert!(path.starts_with("/v1/images/"), "{path}");

    let unauthenticated = |p: &str| {
        Request::builder()
            .uri(p)
            .body(Body::empty())
            .expect("request")
    };
    let a = app.send(unauthenticated(&path)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.bytes, png);
    assert_eq!(a.header("content-type"), Some("image/png"));
    assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
    let cache = a.header("cache-control").expect("cache-control");
    assert_eq!(cache, format!("private, max-age={}", URL_TTL.as_secs()));

    let last = if path.ends_with('0') { '1' } else { '0' };
    let tampered = format!("{}{last}", &path[..path.len() - 1]);
    for bad in [
        tampered.as_str(),
        path.split('?').next().unwrap_or_default(),
        &path.replace("0.png", "1.png"),
    ] {
        let a = app.send(unauthenticated(bad)).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{bad}");
        assert_eq!(a.json()["error"]["code"], "invalid_signature");
    }

    app.clock.advance(URL_TTL + Duration::from_secs(1));
    let a = app.send(unauthenticated(&path)).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);

    // A fresh GET of the job signs a fresh URL.
    let view = app.get(&format!("/v1/jobs/{id}")).await.json();
    let url = view["images"][0]["url"].as_str().expect("url");
    let a = app
        .send(unauthenticated(url.strip_prefix(BASE).expect("absolute")))
        .await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn seed_routes_answer_in_their_own_envelope() {
    let app = spawn_app().await;
    let a = app
        .post(
            "/api/generate/image",
            r#"{"prompt": "a knight", "character": "knight", "style": "oil"}"#,
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let body = a.json();
    assert_eq!(body["success"], true);
    assert_eq!(body["data"]["status"], "pending");
    let id = job_id(&json!({"id": body["data"]["workId"]}));
    let job = app.backend.store.get(&id).await.unwrap().expect("stored");
    assert_eq!(job.request.character.as_deref(), Some("knight"));

    let items: Vec<Value> = (0..3).map(|i| json!({"prompt": format!("p{i}")})).collect();
    let a = app
        .post(
            "/api/generate/batch",
            &json!({ "items": items }).to_string(),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let data = a.json()["data"].as_array().cloned().expect("data");
    assert_eq!(data.len(), 3);
    assert!(data.iter().all(|w| w["status"] == "pending"));
    assert_eq!(app.backend.jobs_queue.depth().await.unwrap(), 4);

    let bad =
        json!({"items": [{"prompt": "ok"}, {"prompt": "ok"}, {"prompt": "ok"}, {"prompt": " "}]});
    let a = app.post("/api/generate/batch", &bad.to_string()).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let body = a.json();
    assert_eq!(body["success"], false);
    assert_eq!(body["error"]["code"], "invalid_request");
    assert_eq!(body["error"]["field"], "items[3].prompt");
    let a = app
        .post(
            "/api/generate/batch",
            r#"{"items": [{"prompt": "a", "n": "x"}]}"#,
        )
        .await;
    assert_eq!(a.json()["error"]["field"], "items[0].n");
    let a = app.post("/api/generate/batch", r#"{"items": []}"#).await;
    assert_eq!(a.json()["error"]["field"], "items");
    assert_eq!(app.backend.jobs_queue.depth().await.unwrap(), 4);

    let mut anonymous = Request::builder()
        .method(Method::POST)
        .uri("/api/generate/image")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"prompt": "a"}"#))
        .unwrap();
    anonymous.headers_mut().remove(header::AUTHORIZATION);
    let a = app.send(anonymous).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.json()["success"], false);
    assert_eq!(a.json()["error"]["code"], "unauthorized");

    let a = app.get("/api/generate/image").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.json()["success"], false);
}

#[tokio::test]
async fn unknown_routes_wrong_methods_and_health_use_json() {
    let app = spawn_app().await;
    let a = app.get("/nope").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.json()["error"]["code"], "not_found");
    let a = app
        .send(
            app.request(Method::DELETE, "/v1/jobs")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.json()["error"]["code"], "method_not_allowed");
    let allow = a.header("allow").unwrap_or_default();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    let a = app.get("/healthz").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json(), json!({"status": "ok"}));
}

/// A job store whose backend is down.
struct DownStore;

fn down<T>() -> Result<T, kiln_shared::ports::StoreError> {
    Err(kiln_shared::ports::StoreError::Unavailable(
        "disk I/O error at /secret/path".into(),
    ))
}

#[async_trait::async_trait]
impl JobStore for DownStore {
    async fn insert(&self, _: &Job) -> Result<(), kiln_shared::ports::StoreError> {
        down()
    }
    async fn get(&self, _: &JobId) -> Result<Option<Job>, kiln_shared::ports::StoreError> {
        down()
    }
    async fn update(&self, _: &Job) -> Result<(), kiln_shared::ports::StoreError> {
        down()
    }
    async fn list(
        &self,
        _: &UserId,
        _: &ListQuery,
    ) -> Result<kiln_shared::ports::JobPage, kiln_shared::ports::StoreError> {
        down()
    }
    async fn stale_pending(
        &self,
        _: chrono::DateTime<chrono::Utc>,
        _: usize,
    ) -> Result<Vec<Job>, kiln_shared::ports::StoreError> {
        down()
    }
    async fn delete_expired(
        &self,
        _: chrono::DateTime<chrono::Utc>,
        _: usize,
    ) -> Result<usize, kiln_shared::ports::StoreError> {
        down()
    }
    async fn insert_api_key(&self, _: &ApiKeyRecord) -> Result<(), kiln_shared::ports::StoreError> {
        down()
    }
    async fn find_api_key(
        &self,
        _: &str,
    ) -> Result<Option<ApiKeyRecord>, kiln_shared::ports::StoreError> {
        down()
    }
    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, kiln_shared::ports::StoreError> {
        down()
    }
    async fn revoke_api_key(
        &self,
        _: &str,
        _: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<ApiKeyRecord>, kiln_shared::ports::StoreError> {
        down()
    }
    async fn claim_idempotency_key(
        &self,
        _: &kiln_shared::domain::IdempotencyRecord,
        _: chrono::DateTime<chrono::Utc>,
    ) -> Result<kiln_shared::ports::IdempotencyClaim, kiln_shared::ports::StoreError> {
        down()
    }
    async fn complete_idempotency_key(
        &self,
        _: &kiln_shared::domain::IdempotencyRecord,
    ) -> Result<(), kiln_shared::ports::StoreError> {
        down()
    }
    async fn release_idempotency_key(
        &self,
        _: &UserId,
        _: &kiln_shared::domain::IdempotencyKey,
    ) -> Result<(), kiln_shared::ports::StoreError> {
        down()
    }
    async fn take_rate_token(
        &self,
        _: &UserId,
        _: chrono::DateTime<chrono::Utc>,
        _: Duration,
        _: u32,
    ) -> Result<bool, kiln_shared::ports::StoreError> {
        down()
    }
    async fn count_in_flight(
        &self,
        _: &UserId,
        _: usize,
    ) -> Result<usize, kiln_shared::ports::StoreError> {
        down()
    }
    async fn insert_template(
        &self,
        _: &kiln_shared::domain::Template,
    ) -> Result<(), kiln_shared::ports::StoreError> {
        down()
    }
    async fn get_template(
        &self,
        _: Option<&UserId>,
        _: &str,
    ) -> Result<Option<kiln_shared::domain::Template>, kiln_shared::ports::StoreError> {
        down()
    }
    async fn list_templates(
        &self,
        _: Option<&UserId>,
    ) -> Result<Vec<kiln_shared::domain::Template>, kiln_shared::ports::StoreError> {
        down()
    }
    async fn delete_template(
        &self,
        _: Option<&UserId>,
        _: &str,
    ) -> Result<bool, kiln_shared::ports::StoreError> {
        down()
    }
}

#[tokio::test]
async fn a_down_store_is_a_503_that_reveals_nothing() {
    let app = spawn_app().await;
    let state = AppState {
        store: Arc::new(DownStore),
        intake: Arc::new(StoreThenEnqueue::new(
            Arc::new(DownStore),
            app.backend.jobs_queue.clone(),
        )),
        blobs: app.backend.blobs.clone(),
        url_signer: None,
        clock: Arc::new(app.clock.clone()),
        config: ApiConfig::from_settings(
            &kiln_shared::config::Settings::from_lookup(|_| None).expect("default settings"),
        ),
    };
    let down_app = TestApp {
        router: router(state),
        ..app
    };
    for a in [
        down_app.get("/healthz").await,
        down_app.get("/v1/jobs").await,
    ] {
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(a.json()["error"]["code"], "unavailable");
        assert!(!String::from_utf8_lossy(&a.bytes).contains("secret"));
    }
}
