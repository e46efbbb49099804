//! `kiln serve`: the API, the worker pool and the storage in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use kiln_api::{ApiConfig, AppState};
use kiln_shared::adapters::Services;
use kiln_shared::clock::{Clock, SystemClock};
use kiln_shared::config::Settings;
use kiln_shared::providers::Providers;
use kiln_worker::{WebhookSender, Worker, WorkerConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use kiln_shared::logging;

/// Options of `kiln serve`; each overrides its environment variable.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [env: KILN_ADDR, default 127.0.0.1:3000]; port 0 picks a free one.
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Directory of the local backend's database and images [env: KILN_DATA_DIR, default ./.kiln].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Run the API only, without the worker pool.
    #[arg(long)]
    no_worker: bool,
}

/// Options of `kiln worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Directory of the local backend's database and images [env: KILN_DATA_DIR, default ./.kiln].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// A running server: its address and the handle that stops it.
pub struct RunningServer {
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// Stops accepting, lets in-flight requests and jobs finish, and waits for every task.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Waits until the server stops (on Ctrl-C or SIGTERM).
    pub async fn wait_for_signal(self) {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests and jobs");
        self.stop().await;
    }
}

/// Starts the API (and, if `with_worker`, the worker pool) on `settings.addr` over `services`.
pub async fn start(
    settings: &Settings,
    services: Services,
    providers: Arc<Providers>,
    with_worker: bool,
) -> anyhow::Result<RunningServer> {
    let listener = tokio::net::TcpListener::bind(settings.addr)
        .await
        .with_context(|| format!("cannot listen on {} (KILN_ADDR)", settings.addr))?;
    let addr = listener
        .local_addr()
        .context("listener has no local address")?;
    let (shutdown, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    if with_worker {
        tasks.push(spawn_worker(
            settings,
            &services,
            providers,
            stop_rx.clone(),
        ));
        let base = settings
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        let sender = Arc::new(WebhookSender::from_settings(settings, &services, base));
        let rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            kiln_worker::run_webhook_pool(sender, rx).await
        }));
    }

    let state = AppState {
        store: services.store.clone(),
        intake: services.intake.clone(),
        blobs: services.blobs.clone(),
        url_signer: services.url_signer.clone(),
        clock: services.clock.clone(),
        config: ApiConfig {
            webhook_guard: kiln_worker::webhooks::guard_for(settings, &services),
            ..ApiConfig::from_settings(settings)
        },
    };
    // Only here, not in the shared router: on Lambda, metrics are EMF log lines instead.
    let app = kiln_api::router(state).route("/metrics", axum::routing::get(metrics));
    let mut rx = stop_rx;
    tasks.push(tokio::spawn(async move {
        let stopped = async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::error!(error = %e, "HTTP server stopped with an error");
        }
    }));
    Ok(RunningServer {
        addr,
        shutdown,
        tasks,
    })
}

/// `GET /metrics`: the process's metrics in Prometheus text format.
async fn metrics() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        kiln_shared::metrics::render_prometheus(),
    )
}

/// Starts the worker pool over `services`; it stops when `stop` turns true.
fn spawn_worker(
    settings: &Settings,
    services: &Services,
    providers: Arc<Providers>,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let worker = Arc::new(
        Worker::new(
            services.store.clone(),
            services.blobs.clone(),
            providers,
            services.clock.clone(),
            WorkerConfig {
                lease: settings.lease,
                job_timeout: settings.job_timeout,
                max_receive_count: settings.max_receive_count,
                concurrency: settings.worker_concurrency,
            },
        )
        .with_webhooks(services.webhooks_queue.clone()),
    );
    let queue = services.jobs_queue.clone();
    tokio::spawn(async move { kiln_worker::run_pool(worker, queue, stop).await })
}

/// Runs `kiln worker` until Ctrl-C or SIGTERM.
pub async fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    let mut settings = Settings::from_env()?;
    if let Some(dir) = args.data_dir {
        settings.data_dir = dir;
    }
    logging::init(settings.log_format);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let services = Services::from_settings(&settings, clock).await?;
    let providers = Arc::new(kiln_shared::providers::file::from_settings(&settings)?);
    let (stop, stop_rx) = watch::channel(false);
    let pool = spawn_worker(&settings, &services, providers, stop_rx.clone());
    // Payload URLs need the API's address, which only KILN_PUBLIC_URL can say here.
    let base = settings.public_url.clone().unwrap_or_default();
    let sender = Arc::new(WebhookSender::from_settings(&settings, &services, base));
    let webhooks = tokio::spawn(kiln_worker::run_webhook_pool(sender, stop_rx));
    tracing::info!(
        concurrency = settings.worker_concurrency,
        "kiln worker started"
    );
    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight jobs");
    let _ = stop.send(true);
    let _ = pool.await;
    let _ = webhooks.await;
    Ok(())
}

/// Runs `kiln serve` until Ctrl-C or SIGTERM.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut settings = Settings::from_env()?;
    if let Some(addr) = args.addr {
        settings.addr = addr;
    }
    if let Some(dir) = args.data_dir {
        settings.data_dir = dir;
    }
    logging::init(settings.log_format);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let services = Services::from_settings(&settings, clock).await?;
    let providers = Arc::new(kiln_shared::providers::file::from_settings(&settings)?);
    let server = start(&settings, services, providers, !args.no_worker).await?;
    // The one line scripts and tests wait for; keep its shape.
    println!("kiln listening on http://{}", server.addr);
    tracing::info!(
        addr = %server.addr,
        data_dir = %settings.data_dir.display(),
        worker = !args.no_worker,
        "kiln serve started"
    );
    server.wait_for_signal().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
