//! `kiln dlq`: what sits in the dead-letter queues, and replaying or purging it. The work is
//! done by `kiln_worker::dlq`; this only parses, asks and prints.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use kiln_shared::adapters::Services;
use kiln_shared::clock::{Clock, SystemClock};
use kiln_shared::config::{Backend, Settings};
use kiln_worker::dlq::{DeadLetters, Parked, QueueKind, ReplayOptions};

/// Replays of at least this many messages show a progress bar.
const PROGRESS_FROM: u64 = 20;

/// Which queue.
#[derive(Debug, Args)]
pub struct QueueArg {
    /// The queue whose dead letters to work on: jobs or webhooks.
    #[arg(long, value_parser = parse_kind)]
    queue: QueueKind,
}

fn parse_kind(s: &str) -> Result<QueueKind, String> {
    s.parse()
}

/// Dead-letter queue commands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List parked messages with their job's state, attempts and last error.
    List {
        #[command(flatten)]
        queue: QueueArg,
        /// Most messages to show.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Everything about one parked message and its job.
    Show {
        #[command(flatten)]
        queue: QueueArg,
        /// The message id, as `kiln dlq list` shows it.
        id: String,
    },
    /// Move parked messages back to their queue; failed jobs go back to pending.
    Replay {
        #[command(flatten)]
        queue: QueueArg,
        /// Only this message.
        #[arg(long)]
        id: Option<String>,
        /// At most this many messages.
        #[arg(long)]
        limit: Option<usize>,
        /// Only say what would be replayed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete every parked message of the queue, for good.
    Purge {
        #[command(flatten)]
        queue: QueueArg,
        /// Do not ask for confirmation (required when stdin is not a terminal).
        #[arg(long)]
        yes: bool,
    },
}

async fn dead_letters(kind: QueueKind) -> anyhow::Result<DeadLetters> {
    let settings = Settings::from_env()?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let services = Services::from_settings(&settings, clock).await?;
    // SQS short polls sample a subset of servers; a second of long polling sees every message.
    let poll = match settings.backend {
        Backend::Local => Duration::ZERO,
        Backend::Aws => Duration::from_secs(1),
    };
    Ok(DeadLetters::new(&services, kind, poll))
}

/// Runs a dead-letter command.
pub async fn run(cmd: DlqCommand) -> anyhow::Result<()> {
    match cmd {
        DlqCommand::List { queue, limit, json } => {
            let dl = dead_letters(queue.queue).await?;
            let parked = dl
                .list(limit)
                .await
                .context("cannot list the dead-letter queue")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&parked)?);
            } else if parked.is_empty() {
                println!(
                    "nothing parked in the {} dead-letter queue",
                    name(queue.queue)
                );
            } else {
                print_table(&parked);
            }
        }
        DlqCommand::Show { queue, id } => {
            let dl = dead_letters(queue.queue).await?;
            let Some(p) = dl
                .show(&id)
                .await
                .context("cannot read the dead-letter queue")?
            else {
                bail!(
                    "no message {id:?} in the {} dead-letter queue: see `kiln dlq list --queue {}`",
                    name(queue.queue),
                    name(queue.queue)
                );
            };
            let body: serde_json::Value =
                serde_json::from_str(&p.body).unwrap_or(serde_json::Value::String(p.body.clone()));
            let out = serde_json::json!({
                "message": {
                    "message_id": p.message_id,
                    "sent_at": p.sent_at,
                    "body": body,
                },
                "job_status": p.job_status,
                "attempts": p.attempts,
                "last_error": p.last_error,
                "job": p.job,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        DlqCommand::Replay {
            queue,
            id,
            limit,
            dry_run,
        } => {
            let dl = dead_letters(queue.queue).await?;
            let total = match (&id, limit) {
                (Some(_), _) => 1,
                (None, Some(l)) => dl.depth().await.unwrap_or(0).min(l as u64),
                (None, None) => dl.depth().await.unwrap_or(0),
            };
            let bar = (!dry_run && total >= PROGRESS_FROM && std::io::stderr().is_terminal()).then(
                || {
                    let bar = ProgressBar::new(total);
                    if let Ok(style) = ProgressStyle::with_template(
                        "{spinner} replaying [{bar:30}] {pos}/{len} ({eta} left)",
                    ) {
                        bar.set_style(style.progress_chars("=> "));
                    }
                    bar
                },
            );
            let tick = {
                let bar = bar.clone();
                move |n: usize| {
                    if let Some(b) = &bar {
                        b.set_position(n as u64);
                    }
                }
            };
            let report = dl
                .replay(
                    &ReplayOptions {
                        id: id.clone(),
                        limit,
                        dry_run,
                    },
                    &tick,
                )
                .await
                .context("replay failed")?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            let verb = if dry_run { "would replay" } else { "replayed" };
            for m in &report.replayed {
                println!("{verb} {m}");
            }
            println!(
                "{verb} {} message(s) to the {} queue; {} failed job(s) put back to pending",
                report.replayed.len(),
                name(queue.queue),
                report.requeued_jobs
            );
            if let Some((m, why)) = report.failed {
                bail!("could not replay {m} (it stays parked): {why}");
            }
            if let (Some(id), true) = (id, report.replayed.is_empty()) {
                bail!(
                    "no message {id:?} in the {} dead-letter queue",
                    name(queue.queue)
                );
            }
        }
        DlqCommand::Purge { queue, yes } => {
            if !yes {
                if !std::io::stdin().is_terminal() {
                    bail!("refusing to purge without --yes when stdin is not a terminal");
                }
                eprint!(
                    "Delete every message in the {} dead-letter queue for good? Type 'yes': ",
                    name(queue.queue)
                );
                std::io::stderr().flush().ok();
                let mut answer = String::new();
                std::io::stdin().lock().read_line(&mut answer)?;
                if answer.trim() != "yes" {
                    bail!("purge canceled");
                }
            }
            let dl = dead_letters(queue.queue).await?;
            let n = dl.purge().await.context("purge failed")?;
            println!(
                "purged {n} message(s) from the {} dead-letter queue",
                name(queue.queue)
            );
        }
    }
    Ok(())
}

fn name(kind: QueueKind) -> &'static str {
    match kind {
        QueueKind::Jobs => "jobs",
        QueueKind::Webhooks => "webhooks",
    }
}

fn print_table(parked: &[Parked]) {
    println!(
        "{:<38} {:<38} {:<9} {:>8}  {:<20} LAST ERROR",
        "MESSAGE", "JOB", "STATE", "ATTEMPTS", "SENT"
    );
    for p in parked {
        let mut error = p.last_error.clone().unwrap_or_else(|| "-".into());
        if error.chars().count() > 60 {
            error = error.chars().take(59).collect::<String>() + "…";
        }
        println!(
            "{:<38} {:<38} {:<9} {:>8}  {:<20} {}",
            p.message_id,
            p.job_id
                .map(|j| j.to_string())
                .unwrap_or_else(|| "-".into()),
            p.job_status.map(|s| s.as_str()).unwrap_or("gone"),
            p.attempts,
            p.sent_at.format("%Y-%m-%d %H:%M:%S"),
            error
        );
    }
}
