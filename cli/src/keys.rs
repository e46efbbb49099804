//! `kiln keys`: API keys, managed directly on the backend's store.

use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Subcommand;
use kiln_shared::adapters::Services;
use kiln_shared::clock::{Clock, SystemClock};
use kiln_shared::config::Settings;
use kiln_shared::domain::{ApiKeyRecord, Tier, UserId};

/// Key management commands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key for a user; the key is printed once, alone on the last line.
    Create {
        /// The user the key acts as (letters, digits, '.', '_', '@', '-').
        #[arg(long)]
        user: String,
        /// The user's tier: standard starts with the cheapest provider, vip with the best.
        #[arg(long, default_value = "standard", value_parser = parse_tier)]
        tier: Tier,
    },
    /// List keys (never the keys themselves: their ids and prefixes).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by its id (or an unambiguous start of it); it stops working at once.
    Revoke {
        /// The key's id, as `kiln keys list` shows it.
        id: String,
    },
}

fn parse_tier(s: &str) -> Result<Tier, String> {
    s.parse()
}

async fn services() -> anyhow::Result<Services> {
    let settings = Settings::from_env()?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    Ok(Services::from_settings(&settings, clock).await?)
}

/// Runs a key command.
pub async fn run(cmd: KeysCommand) -> anyhow::Result<()> {
    let services = services().await?;
    let now = services.clock.now();
    match cmd {
        KeysCommand::Create { user, tier } => {
            let user = UserId::parse(&user).map_err(|m| anyhow::anyhow!("--user: {m}"))?;
            let (key, record) = ApiKeyRecord::issue(user, tier, now);
            services
                .store
                .insert_api_key(&record)
                .await
                .context("cannot store the new key")?;
            println!(
                "Created key {} for user {} (tier {}). It is shown only now; keep it safe:",
                record.id, record.user_id, record.tier
            );
            println!("{}", key.expose());
        }
        KeysCommand::List { json } => {
            let keys = services
                .store
                .list_api_keys()
                .await
                .context("cannot list keys")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else if keys.is_empty() {
                println!("no keys yet: create one with `kiln keys create --user NAME`");
            } else {
                println!(
                    "{:<18} {:<14} {:<24} {:<9} {:<20} REVOKED",
                    "ID", "PREFIX", "USER", "TIER", "CREATED"
                );
                for k in keys {
                    println!(
                        "{:<18} {:<14} {:<24} {:<9} {:<20} {}",
                        k.id,
                        k.prefix,
                        k.user_id,
                        k.tier,
                        k.created_at.format("%Y-%m-%d %H:%M:%S"),
                        k.revoked_at
                            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                            .unwrap_or_else(|| "-".into())
                    );
                }
            }
        }
        KeysCommand::Revoke { id } => {
            if id.trim().is_empty() {
                bail!("ID: must not be empty");
            }
            match services
                .store
                .revoke_api_key(id.trim(), now)
                .await
                .context("cannot revoke the key")?
            {
                Some(k) => println!("Revoked key {} of user {}", k.id, k.user_id),
                None => bail!("no key with id {id:?}: see `kiln keys list`"),
            }
        }
    }
    Ok(())
}
