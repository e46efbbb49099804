//! [`TestApp`]: the real server (API + worker pool) in this process, on `127.0.0.1:0`, over its
//! own temporary data directory, with request helpers.

use std::collections::HashMap;
use std::sync::{Arc, Once};
use std::time::Duration;

use kiln_cli::serve::{start, RunningServer};
use kiln_shared::adapters::Services;
use kiln_shared::clock::{Clock, SystemClock};
use kiln_shared::config::Settings;
use kiln_shared::domain::{ApiKeyRecord, Tier, UserId};
use kiln_shared::providers::Providers;
use serde_json::Value;

/// Logs in tests only when `TEST_LOG` is set.
pub fn init_test_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
                ))
                .with_test_writer()
                .try_init();
        }
    });
}

/// How to spawn the app.
pub struct TestOptions {
    /// Run the worker pool too.
    pub worker: bool,
    /// Extra `KILN_*` settings.
    pub env: Vec<(&'static str, String)>,
    /// Providers to use instead of the built-in renderer.
    pub providers: Option<Providers>,
    /// Changes the adapters before the app starts (a failing queue, a fake resolver).
    pub services: Option<ServicesHook>,
}

/// A change to the adapters the app is started with.
pub type ServicesHook = Box<dyn FnOnce(&mut Services) + Send>;

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            worker: true,
            env: Vec::new(),
            providers: None,
            services: None,
        }
    }
}

/// A running Kiln and a client for it.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// A client with no default auth.
    pub http: reqwest::Client,
    /// The adapters the app runs on, for direct inspection.
    pub services: Services,
    /// The settings the app runs with.
    pub settings: Settings,
    /// Key of the default user `alice` (standard tier).
    pub api_key: String,
    server: Option<RunningServer>,
    /// Keeps the data directory alive as long as the app.
    pub dir: tempfile::TempDir,
}

impl TestApp {
    /// The app with its worker pool and the built-in renderer.
    pub async fn spawn() -> Self {
        Self::spawn_with(TestOptions::default()).await
    }

    /// The app as `opts` say.
    pub async fn spawn_with(opts: TestOptions) -> Self {
        Self::spawn_on(opts, None).await
    }

    /// The app on given settings and adapters (e.g. the AWS backend on moto); `opts.env` is
    /// ignored then, the settings already say everything.
    pub async fn spawn_on(opts: TestOptions, backend: Option<(Settings, Services)>) -> Self {
        init_test_logs();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut vars: HashMap<String, String> = HashMap::from([
            ("KILN_ADDR".into(), "127.0.0.1:0".into()),
            ("KILN_DATA_DIR".into(), dir.path().display().to_string()),
        ]);
        // No limits unless a test asks for them: most tests submit in bursts.
        for var in [
            "KILN_RATE_LIMIT_STANDARD",
            "KILN_RATE_LIMIT_VIP",
            "KILN_MAX_IN_FLIGHT_STANDARD",
            "KILN_MAX_IN_FLIGHT_VIP",
        ] {
            vars.insert(var.into(), "off".into());
        }
        for (k, v) in opts.env {
            vars.insert(k.into(), v);
        }
        let (settings, mut services) = match backend {
            Some((mut settings, services)) => {
                settings.addr = ([127, 0, 0, 1], 0).into();
                (settings, services)
            }
            None => {
                let settings = Settings::from_lookup(|k| vars.get(k).cloned())
                    .expect("test settings are valid");
                let clock: Arc<dyn Clock> = Arc::new(SystemClock);
                let services = Services::from_settings(&settings, clock)
                    .await
                    .expect("backend opens");
                (settings, services)
            }
        };
        if let Some(hook) = opts.services {
            hook(&mut services);
        }
        let providers = opts
            .providers
            .unwrap_or_else(|| Providers::local_only(settings.local_latency));
        let server = start(
            &settings,
            services.clone(),
            Arc::new(providers),
            opts.worker,
        )
        .await
        .expect("server starts");
        let mut app = Self {
            base_url: format!("http://{}", server.addr),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
            services,
            settings,
            api_key: String::new(),
            server: Some(server),
            dir,
        };
        app.api_key = app.new_key("alice", Tier::Standard).await;
        app
    }

    /// Stops the server and its workers.
    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
    }

    /// Creates an API key for `user`.
    pub async fn new_key(&self, user: &str, tier: Tier) -> String {
        let (key, record) = ApiKeyRecord::issue(
            UserId::parse(user).expect("user"),
            tier,
            self.services.clock.now(),
        );
        self.services
            .store
            .insert_api_key(&record)
            .await
            .expect("key stored");
        key.expose().to_owned()
    }

    /// `base_url + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// `POST /v1/jobs` as alice.
    pub async fn submit(&self, body: Value) -> reqwest::Response {
        self.submit_as(&self.api_key, body).await
    }

    /// `POST /v1/jobs` with `key`.
    pub async fn submit_as(&self, key: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url("/v1/jobs"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .expect("submit")
    }

    /// Submits and returns the new job's id; panics unless the answer is 202.
    pub async fn submit_ok(&self, body: Value) -> String {
        let resp = self.submit(body).await;
        assert_eq!(resp.status(), 202, "submit answered {}", resp.status());
        let job: Value = resp.json().await.expect("job json");
        job["id"].as_str().expect("job id").to_owned()
    }

    /// `GET /v1/jobs/{id}` as alice, as JSON.
    pub async fn get_job(&self, id: &str) -> Value {
        let resp = self
            .http
            .get(self.url(&format!("/v1/jobs/{id}")))
            .bearer_auth(&self.api_key)
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status(), 200, "get {id}");
        resp.json().await.expect("job json")
    }

    /// Polls the job until it is terminal, or panics after `timeout`.
    pub async fn wait_for(&self, id: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let job = self.get_job(id).await;
            if matches!(
                job["status"].as_str(),
                Some("success" | "failed" | "canceled")
            ) {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} still {} after {timeout:?}",
                job["status"]
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
