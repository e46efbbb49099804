//! A moto server (a local AWS emulator, from PyPI) for the AWS adapters' tests: one per test
//! binary, started on first use on a free port of 127.0.0.1 and gone when the binary exits.
//!
//! moto comes from `<workspace>/.venv`; if it is not there yet, the first test to need it makes
//! the virtualenv and installs [`MOTO_REQUIREMENT`] (the Makefile does the same ahead of time).
//! Tests share the server: each asks [`Moto::fresh`] for resources of its own, under names no
//! other test uses.

use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use kiln_shared::adapters::aws::{
    create_resources, AwsBackend, AwsClients, AwsOverrides, ResourceNames, StaticCredentials,
};
use kiln_shared::adapters::Services;
use kiln_shared::clock::Clock;
use kiln_shared::config::{AwsResources, Secret, Settings};
use tokio::sync::OnceCell;

/// The moto release the tests run against.
pub const MOTO_REQUIREMENT: &str = "moto[server]==5.2.5";
/// Region every test resource lives in.
pub const REGION: &str = "us-east-1";
/// How long moto may take to answer after it starts.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A running moto server.
#[derive(Debug)]
pub struct Moto {
    endpoint: String,
}

/// Runs moto for this test binary, starting it on first use; panics with what went wrong if it
/// cannot be started (moto not installable, no Python).
pub async fn moto() -> &'static Moto {
    static MOTO: OnceCell<Result<Moto, String>> = OnceCell::const_new();
    match MOTO.get_or_init(start).await {
        Ok(moto) => moto,
        Err(e) => panic!("the moto server is not available: {e}"),
    }
}

/// A fresh set of AWS resources on moto and everything built over it.
pub struct TestAws {
    /// Settings of a process on these resources (`KILN_BACKEND=aws`).
    pub settings: Settings,
    /// The resources' names and URLs.
    pub resources: AwsResources,
    /// The clients, for calls the ports do not make.
    pub clients: AwsClients,
    /// The adapters.
    pub backend: AwsBackend,
}

impl TestAws {
    /// The adapters as a process would hold them.
    pub fn services(&self, clock: Arc<dyn Clock>) -> Services {
        self.backend.clone().into_services(clock)
    }
}

impl Moto {
    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Endpoint, region and dummy credentials, given to the SDK directly so that no test
    /// touches the process environment.
    pub fn overrides(&self) -> AwsOverrides {
        AwsOverrides {
            endpoint_url: Some(self.endpoint.clone()),
            region: Some(REGION.to_owned()),
            credentials: Some(StaticCredentials {
                access_key_id: "testing".to_owned(),
                secret_access_key: Secret::new("testing"),
            }),
        }
    }

    /// SDK clients aimed at this server.
    pub async fn clients(&self) -> AwsClients {
        AwsClients::load(&self.overrides())
            .await
            .expect("the overrides name a region")
    }

    /// Creates a table, four queues and a bucket under names no other test uses, with settings
    /// from `env` (`KILN_MAX_RECEIVE_COUNT`, `KILN_VISIBILITY_TIMEOUT_SECS`, ...), and builds
    /// the adapters over them.
    pub async fn fresh(&self, env: &[(&str, &str)]) -> TestAws {
        let clients = self.clients().await;
        let prefix = format!(
            "kiln-t-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let base = settings(env, None);
        let resources = create_resources(&clients, &ResourceNames::with_prefix(&prefix), &base)
            .await
            .unwrap_or_else(|e| panic!("cannot create the test resources on moto: {e}"));
        let settings = settings(env, Some(&resources));
        let backend = AwsBackend::from_clients(clients.clone(), &resources);
        TestAws {
            settings,
            resources,
            clients,
            backend,
        }
    }
}

/// Settings from `env`, on the AWS backend over `resources` if given.
fn settings(env: &[(&str, &str)], resources: Option<&AwsResources>) -> Settings {
    let mut vars: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Some(r) = resources {
        for (k, v) in [
            ("KILN_BACKEND", "aws"),
            ("KILN_TABLE", &r.table),
            ("KILN_JOBS_QUEUE_URL", &r.jobs_queue_url),
            ("KILN_JOBS_DLQ_URL", &r.jobs_dlq_url),
            ("KILN_WEBHOOKS_QUEUE_URL", &r.webhooks_queue_url),
            ("KILN_WEBHOOKS_DLQ_URL", &r.webhooks_dlq_url),
            ("KILN_BUCKET", &r.bucket),
        ] {
            vars.push((k.to_owned(), v.to_owned()));
        }
    }
    Settings::from_lookup(|k| {
        vars.iter()
            .rev()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())
    })
    .unwrap_or_else(|e| panic!("test settings are invalid: {e}"))
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `.venv/bin/moto_server`, installing moto first if it is missing.
fn moto_server() -> Result<PathBuf, String> {
    let venv = workspace_root().join(".venv");
    let server = venv.join("bin").join("moto_server");
    if server.exists() {
        return Ok(server);
    }
    eprintln!(
        "moto is not installed in {}: installing {MOTO_REQUIREMENT} from PyPI",
        venv.display()
    );
    let python = venv.join("bin").join("python");
    if !python.exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))
            .map_err(|e| format!("cannot create the virtualenv {}: {e}", venv.display()))?;
    }
    run(Command::new(&python).args(["-m", "pip", "install", "--quiet", MOTO_REQUIREMENT]))
        .map_err(|e| {
            format!(
                "`pip install '{MOTO_REQUIREMENT}'` into {} failed ({e}); run `make test` or \
             install it by hand",
                venv.display()
            )
        })?;
    if server.exists() {
        Ok(server)
    } else {
        Err(format!(
            "{} is still missing after installing moto",
            server.display()
        ))
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// Starts moto from a thread that lives as long as the process: the parent-death signal
/// follows the thread that spawned the child, not the process, so a test's own thread (gone
/// when the test ends) must not be the one.
fn spawn_moto() -> Result<u16, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("moto-server".into())
        .spawn(move || {
            let started = moto_server().and_then(|server| {
                let port = free_port()?;
                let mut cmd = Command::new(&server);
                cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null());
                if std::env::var_os("TEST_LOG").is_none() {
                    cmd.stderr(Stdio::null());
                }
                // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
                unsafe {
                    cmd.pre_exec(|| {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                let child = cmd.spawn().map_err(|e| match e.kind() {
                    ErrorKind::NotFound => format!("{} not found", server.display()),
                    _ => format!("cannot start {}: {e}", server.display()),
                })?;
                Ok((port, child))
            });
            match started {
                Ok((port, mut child)) => {
                    let _ = tx.send(Ok(port));
                    // Reap moto if it dies; otherwise keep this thread (and so moto) alive.
                    let _ = child.wait();
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })
        .map_err(|e| format!("cannot start the moto thread: {e}"))?;
    rx.recv()
        .map_err(|_| "the moto thread ended without a word".to_owned())?
}

async fn start() -> Result<Moto, String> {
    let port = tokio::task::spawn_blocking(spawn_moto)
        .await
        .map_err(|e| format!("the moto start-up task failed: {e}"))??;
    let endpoint = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    loop {
        if http
            .get(format!("{endpoint}/moto-api/"))
            .send()
            .await
            .is_ok()
        {
            return Ok(Moto { endpoint });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "moto did not answer on {endpoint} within {STARTUP_TIMEOUT:?} (TEST_LOG=1 shows \
                 its output)"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
