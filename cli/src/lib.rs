//! `kiln`: run Kiln locally (`serve`), manage API keys, and submit and inspect jobs over HTTP.

mod aws;
mod client;
mod dlq;
mod keys;
pub mod serve;
mod templates;
mod webhooks;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Kiln: asynchronous image generation. Submit a prompt, get a job id at once, fetch the
/// images when the job is done.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, long_about = None, after_help = ENV_HELP)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

const ENV_HELP: &str = "\
Server settings come from KILN_* environment variables (see README.md), for example:
  KILN_ADDR=127.0.0.1:3000  KILN_DATA_DIR=./.kiln  KILN_BACKEND=local
Client commands talk to KILN_URL (default http://127.0.0.1:3000) with KILN_API_KEY.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the API, the worker pool and the local storage in one process.
    Serve(serve::ServeArgs),
    /// Run the worker pool alone (no API), on either backend: for ECS, EC2 or a second process.
    Worker(serve::WorkerArgs),
    /// Create the AWS resources (table, queues, bucket) on the configured endpoint.
    #[command(subcommand)]
    Aws(aws::AwsCommand),
    /// Create, list and revoke API keys (talks to the backend's store directly).
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Submit a generation job; with --wait, wait for it and save its images.
    Submit(client::SubmitArgs),
    /// Show one job.
    Get(client::GetArgs),
    /// List your jobs, newest first.
    List(client::ListArgs),
    /// Cancel a pending or running job.
    Cancel(client::CancelArgs),
    /// Inspect, replay and purge the dead-letter queues (jobs or webhooks).
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Users' webhook signing secrets, and test deliveries.
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCommand),
    /// Prompt templates: global ones for everyone, or a user's (talks to the store directly).
    #[command(subcommand)]
    Templates(templates::TemplatesCommand),
}

/// Parses the command line, runs the command and turns its error into an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Worker(args) => serve::run_worker(args).await,
        Command::Aws(cmd) => aws::run(cmd).await,
        Command::Keys(cmd) => keys::run(cmd).await,
        Command::Submit(args) => client::submit(args).await,
        Command::Get(args) => client::get(args).await,
        Command::List(args) => client::list(args).await,
        Command::Cancel(args) => client::cancel(args).await,
        Command::Dlq(cmd) => dlq::run(cmd).await,
        Command::Webhooks(cmd) => webhooks::run(cmd).await,
        Command::Templates(cmd) => templates::run(cmd).await,
    }
}
