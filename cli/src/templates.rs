//! `kiln templates`: prompt templates, managed directly on the backend's store; the operator's
//! way to make global templates, which every user's requests may name.

use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use kiln_shared::adapters::Services;
use kiln_shared::clock::{Clock, SystemClock};
use kiln_shared::config::Settings;
use kiln_shared::domain::{NewTemplate, UserId};
use kiln_shared::ports::StoreError;

/// Template commands.
#[derive(Debug, Subcommand)]
pub enum TemplatesCommand {
    /// Create a template for everyone (--global) or for one user (--user).
    Create(CreateArgs),
    /// List the global templates, or one user's.
    List(OwnerArgs),
    /// Delete a template.
    Delete {
        /// The template's name.
        name: String,
        #[command(flatten)]
        owner: OwnerArgs,
    },
}

/// Whose templates.
#[derive(Debug, Args)]
pub struct OwnerArgs {
    /// The global templates.
    #[arg(long, conflicts_with = "user", required_unless_present = "user")]
    global: bool,
    /// This user's templates.
    #[arg(long)]
    user: Option<String>,
}

/// `kiln templates create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name: 1-64 characters of A-Z, a-z, 0-9, '.', '_', '-'.
    name: String,
    #[command(flatten)]
    owner: OwnerArgs,
    /// Character fragment, put before the prompt.
    #[arg(long)]
    character: Option<String>,
    /// Style fragment, put after the prompt.
    #[arg(long)]
    style: Option<String>,
    /// Text put first.
    #[arg(long)]
    prefix: Option<String>,
    /// Text put last.
    #[arg(long)]
    suffix: Option<String>,
}

impl OwnerArgs {
    fn owner(&self) -> anyhow::Result<Option<UserId>> {
        match (&self.user, self.global) {
            (Some(u), false) => Ok(Some(
                UserId::parse(u).map_err(|m| anyhow::anyhow!("--user: {m}"))?,
            )),
            (None, true) => Ok(None),
            _ => bail!("give exactly one of --global and --user"),
        }
    }
}

/// Runs a template command.
pub async fn run(cmd: TemplatesCommand) -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let services = Services::from_settings(&settings, clock).await?;
    match cmd {
        TemplatesCommand::Create(args) => {
            let owner = args.owner.owner()?;
            let template = NewTemplate {
                name: Some(args.name),
                character: args.character,
                style: args.style,
                prompt_prefix: args.prefix,
                prompt_suffix: args.suffix,
            }
            .validate(owner, services.clock.now())
            .map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.message))?;
            match services.store.insert_template(&template).await {
                Ok(()) => println!("created template {}", template.name),
                Err(StoreError::Conflict(_)) => {
                    bail!("a template named {} exists already", template.name)
                }
                Err(e) => return Err(e).context("cannot store the template"),
            }
        }
        TemplatesCommand::List(owner) => {
            let templates = services
                .store
                .list_templates(owner.owner()?.as_ref())
                .await?;
            println!("{}", serde_json::to_string_pretty(&templates)?);
        }
        TemplatesCommand::Delete { name, owner } => {
            if !services
                .store
                .delete_template(owner.owner()?.as_ref(), &name)
                .await?
            {
                bail!("no such template: {name}");
            }
            println!("deleted template {name}");
        }
    }
    Ok(())
}
