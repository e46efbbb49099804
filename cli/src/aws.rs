//! `kiln aws`: commands for running Kiln on AWS (or an AWS-compatible server such as moto or
//! LocalStack) outside the SAM stack.

use anyhow::Context;
use clap::Subcommand;
use kiln_shared::adapters::aws::{create_resources, AwsClients, AwsOverrides, ResourceNames};
use kiln_shared::config::Settings;

/// AWS commands.
#[derive(Debug, Subcommand)]
pub enum AwsCommand {
    /// Create the table, the four queues (with redrive to their DLQs) and the bucket, with the
    /// template's settings; idempotent. Prints `export` lines for the resources' variables.
    CreateResources {
        /// Prefix of every resource name (lowercase letters, digits and '-').
        #[arg(long, default_value = "kiln")]
        prefix: String,
    },
}

/// Runs an AWS command; the endpoint and credentials come from the SDK's own environment
/// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_PROFILE`, ...).
pub async fn run(cmd: AwsCommand) -> anyhow::Result<()> {
    match cmd {
        AwsCommand::CreateResources { prefix } => {
            let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
            if prefix.is_empty()
                || prefix.len() > 40
                || !prefix.chars().all(ok)
                || prefix.starts_with('-')
            {
                anyhow::bail!(
                    "--prefix: use 1-40 lowercase letters, digits or '-' (got {prefix:?})"
                );
            }
            // Only the queue settings (visibility, receive count) matter here, not KILN_BACKEND.
            let settings = Settings::from_env()?;
            let clients = AwsClients::load(&AwsOverrides::default()).await?;
            let names = ResourceNames::with_prefix(&prefix);
            let r = create_resources(&clients, &names, &settings)
                .await
                .context("cannot create the resources")?;
            eprintln!("Resources ready. For kiln serve / kiln worker on them:");
            println!("export KILN_BACKEND=aws");
            println!("export KILN_TABLE={}", r.table);
            println!("export KILN_JOBS_QUEUE_URL={}", r.jobs_queue_url);
            println!("export KILN_JOBS_DLQ_URL={}", r.jobs_dlq_url);
            println!("export KILN_WEBHOOKS_QUEUE_URL={}", r.webhooks_queue_url);
            println!("export KILN_WEBHOOKS_DLQ_URL={}", r.webhooks_dlq_url);
            println!("export KILN_BUCKET={}", r.bucket);
            Ok(())
        }
    }
}
