//! A small chaos run in the test suite: 150 jobs, two `kiln serve` processes on one data
//! directory, two SIGKILLs, a provider failing a fifth of its calls. `make chaos` runs the
//! large one.

use std::path::PathBuf;
use std::time::Duration;

use kiln_tests::chaos::{run, ChaosConfig};

#[tokio::test]
async fn jobs_survive_kills_and_provider_faults() {
    let report = run(ChaosConfig {
        kiln_bin: PathBuf::from(env!("CARGO_BIN_EXE_kiln-under-test")),
        jobs: 150,
        kills: 2,
        processes: 2,
        seed: 7,
        deadline: Duration::from_secs(180),
    })
    .await
    .expect("the chaos run completes");
    let text = report.lines.join("\n");
    eprintln!("{text}");
    assert!(report.ok, "{text}");
}
