//! `kiln webhooks`: users' signing secrets, and test deliveries.

use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Subcommand;
use kiln_shared::adapters::Services;
use kiln_shared::clock::{Clock, SystemClock};
use kiln_shared::config::Settings;
use kiln_shared::domain::UserId;
use kiln_shared::ports::{secrets_for, StoreError};

/// Webhook commands.
#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Show a user's signing secret (in full only when it is made, here or by --rotate).
    Secret {
        /// The user.
        #[arg(long)]
        user: String,
        /// Make a new secret; the old one keeps signing for 24 hours.
        #[arg(long)]
        rotate: bool,
    },
    /// Send a signed `webhook.test` event to URL as the user's webhooks are sent.
    Test {
        /// Where to send it (checked like a job's webhook URL).
        url: String,
        /// Whose secret signs it.
        #[arg(long)]
        user: String,
    },
}

/// Runs a webhook command.
pub async fn run(cmd: WebhooksCommand) -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let services = Services::from_settings(&settings, clock).await?;
    let now = services.clock.now();
    let user_of = |u: &str| UserId::parse(u).map_err(|m| anyhow::anyhow!("--user: {m}"));
    match cmd {
        WebhooksCommand::Secret { user, rotate } => {
            let user = user_of(&user)?;
            let store = &*services.webhook_secrets;
            let (mut secrets, mut fresh) = secrets_for(store, &user, now)
                .await
                .context("cannot read the webhook secret")?;
            if rotate && !fresh {
                let rotated = secrets.rotate(now);
                match store.put_secrets(&rotated).await {
                    Ok(()) => {}
                    Err(StoreError::Conflict(_)) => {
                        bail!("the secret changed meanwhile; try again")
                    }
                    Err(e) => return Err(e).context("cannot store the new secret"),
                }
                secrets = rotated;
                fresh = true;
                println!("Rotated the webhook secret of {user}; the previous one keeps signing for 24 hours.");
            }
            if fresh {
                println!("Webhook signing secret of {user}. It is shown only now; keep it safe:");
                println!("{}", secrets.current.expose());
            } else {
                println!(
                    "Webhook signing secret of {user}: {} (made {}{}). It was shown when made; \
                     `--rotate` makes a new one and shows it.",
                    secrets.current.redacted(),
                    secrets.created_at.format("%Y-%m-%d %H:%M:%S"),
                    secrets
                        .rotated_at
                        .map(|t| format!(", rotated {}", t.format("%Y-%m-%d %H:%M:%S")))
                        .unwrap_or_default()
                );
            }
        }
        WebhooksCommand::Test { url, user } => {
            let user = user_of(&user)?;
            let base = settings
                .public_url
                .clone()
                .unwrap_or_else(|| "http://localhost".into());
            let sender = kiln_worker::WebhookSender::from_settings(&settings, &services, base);
            let (id, result) = sender
                .send_test(&url, &user)
                .await
                .context("cannot read the webhook secret")?;
            let latency = result.latency.as_millis();
            if result.delivered {
                println!(
                    "delivered {id}: HTTP {} in {latency} ms",
                    result.status_code.unwrap_or_default()
                );
            } else {
                bail!(
                    "not delivered ({id}, {latency} ms): {}",
                    result.error.unwrap_or_else(|| "unknown error".into())
                );
            }
        }
    }
    Ok(())
}
