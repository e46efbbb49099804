//! `make bench`: Kiln's figures, each beside a baseline measured in the same run, as one table.
//!
//! Sections: submit throughput (against a bare axum route), pipeline throughput and overhead
//! (against submit alone), the seed design's inline generation (against Kiln's submit), AWS
//! calls and Lambda GB-seconds per job (batch-concurrent against one job per invocation, on
//! moto), and the Lambda binaries (against the seed design's quoted NestJS figures).
//!
//! `KILN_BENCH_SECS` sets each measured window (default 5); `KILN_BENCH_ONLY` a comma-separated
//! subset of `submit,pipeline,seed,aws`.

mod aws;
mod kiln;
mod load;
mod provider;
mod table;

use std::time::Duration;

use table::Table;

/// Flushes what earlier sections (or other programs) left in the page cache, so that a section
/// does not pay for the previous one's writeback: the local sections write hundreds of MB.
fn settle_disk() {
    if let Err(e) = std::process::Command::new("sync").status() {
        eprintln!("  (could not run sync: {e})");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::var("KILN_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let window = Duration::from_secs(secs);
    let only = std::env::var("KILN_BENCH_ONLY").unwrap_or_default();
    let wanted = |s: &str| only.is_empty() || only.split(',').any(|o| o.trim() == s);
    let mut table = Table::default();
    let started = std::time::Instant::now();
    let mut submit_rate = None;
    if wanted("submit") {
        eprintln!("bench: submit throughput");
        settle_disk();
        submit_rate = Some(kiln::submit(&mut table, window).await?);
    }
    if wanted("pipeline") {
        eprintln!("bench: pipeline throughput and overhead");
        settle_disk();
        kiln::pipeline(&mut table, window, submit_rate).await?;
    }
    if wanted("seed") {
        eprintln!("bench: seed design against Kiln, 2 s provider");
        settle_disk();
        kiln::seed(&mut table, window).await?;
    }
    if wanted("aws") {
        eprintln!("bench: AWS calls, GB-seconds and Lambda binaries on moto");
        settle_disk();
        aws::run(&mut table).await?;
    }
    println!();
    print!("{}", table.render());
    println!(
        "\n(ran in {:.0} s on {} cores; windows of {secs} s)",
        started.elapsed().as_secs_f64(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    Ok(())
}
