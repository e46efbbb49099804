//! `make chaos`: `kiln serve` processes on one data directory under a bounded load, a provider
//! failing a share of calls at random, and SIGKILLs with restarts; prints what it checked and
//! exits non-zero if any job was lost, left open or run twice, or any image or webhook is
//! amiss.
//!
//! `KILN_CHAOS_JOBS` (default 2000), `KILN_CHAOS_KILLS` (6), `KILN_CHAOS_PROCESSES` (2),
//! `KILN_CHAOS_SEED` (1). The `kiln` binary is taken from next to this one.

use std::process::ExitCode;
use std::time::Duration;

use kiln_tests::chaos::{run, ChaosConfig};

fn var(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let kiln_bin = std::env::current_exe()?.with_file_name("kiln");
    anyhow::ensure!(
        kiln_bin.exists(),
        "{} is missing: build it with `cargo build --release --bin kiln`",
        kiln_bin.display()
    );
    let report = run(ChaosConfig {
        kiln_bin,
        jobs: var("KILN_CHAOS_JOBS", 2000) as usize,
        kills: var("KILN_CHAOS_KILLS", 6) as usize,
        processes: var("KILN_CHAOS_PROCESSES", 2).max(1) as usize,
        seed: var("KILN_CHAOS_SEED", 1),
        deadline: Duration::from_secs(9 * 60),
    })
    .await?;
    for line in &report.lines {
        println!("{line}");
    }
    Ok(if report.ok {
        println!("chaos: every check passed");
        ExitCode::SUCCESS
    } else {
        println!("chaos: FAILED");
        ExitCode::FAILURE
    })
}
