//! Kiln as a real process: started, read for its address, killed with SIGKILL, restarted.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A `kiln serve` process.
pub struct KilnProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
}

/// A command for the `kiln` binary at `bin` over `data_dir`, with no inherited `KILN_*`.
pub fn kiln_command(bin: &Path, data_dir: &Path, env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars() {
        if k.starts_with("KILN_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("KILN_DATA_DIR", data_dir).env(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
    );
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.kill_on_drop(true);
    cmd
}

impl KilnProcess {
    /// Starts `kiln serve` on a free port and waits for its "listening" line.
    pub async fn start(bin: &Path, data_dir: &Path, env: &[(&str, String)]) -> Self {
        Self::start_with_args(bin, data_dir, env, &[]).await
    }

    /// Starts `kiln serve ARGS` on a free port and waits for its "listening" line.
    pub async fn start_with_args(
        bin: &Path,
        data_dir: &Path,
        env: &[(&str, String)],
        args: &[&str],
    ) -> Self {
        let mut cmd = kiln_command(bin, data_dir, env);
        cmd.arg("serve")
            .arg("--addr")
            .arg("127.0.0.1:0")
            .args(args)
            .stdout(Stdio::piped());
        if std::env::var_os("TEST_LOG").is_none() {
            cmd.stderr(Stdio::null());
        }
        let mut child = cmd.spawn().expect("kiln starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("kiln prints its address within 60 s")
            .expect("stdout readable")
            .expect("kiln printed a line");
        let base_url = line
            .strip_prefix("kiln listening on ")
            .expect("listening line")
            .trim()
            .to_owned();
        // Keep draining stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, base_url }
    }

    /// Kills the process with SIGKILL, as a crash would, and reaps it.
    pub async fn kill9(mut self) {
        self.child.start_kill().expect("SIGKILL");
        let _ = self.child.wait().await;
    }
}
