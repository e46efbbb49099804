//! Adapters of the ports: `local` (SQLite and files) and, later, `aws`; and [`Services`], the
//! set of adapters a process runs on, built once from [`Settings`].

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "local")]
pub mod local;

use std::sync::Arc;

use crate::clock::Clock;
use crate::config::{Backend, ConfigError, Settings};
use crate::ports::{BlobStore, Intake, JobStore, Queue, WebhookSecretStore};
use crate::url_signing::UrlSigner;
use crate::webhooks::{Resolve, SystemResolver};

/// The adapters a process runs on; built once per process, outside any handler.
#[derive(Clone)]
pub struct Services {
    /// Jobs and API keys.
    pub store: Arc<dyn JobStore>,
    /// Submits: stores pending jobs and enqueues them.
    pub intake: Arc<dyn Intake>,
    /// Jobs to run.
    pub jobs_queue: Arc<dyn Queue>,
    /// Jobs queue's dead letters.
    pub jobs_dlq: Arc<dyn Queue>,
    /// Webhook events to deliver.
    pub webhooks_queue: Arc<dyn Queue>,
    /// Webhook queue's dead letters.
    pub webhooks_dlq: Arc<dyn Queue>,
    /// Images.
    pub blobs: Arc<dyn BlobStore>,
    /// Signer of image URLs served by the API itself (local backend only).
    pub url_signer: Option<UrlSigner>,
    /// Users' webhook signing secrets.
    pub webhook_secrets: Arc<dyn WebhookSecretStore>,
    /// Name resolution of webhook hosts (replaced in tests).
    pub resolver: Arc<dyn Resolve>,
    /// The clock every adapter and service shares.
    pub clock: Arc<dyn Clock>,
}

impl Services {
    /// Builds the adapters `settings` ask for.
    pub async fn from_settings(
        settings: &Settings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConfigError> {
        match settings.backend {
            #[cfg(feature = "local")]
            Backend::Local => {
                let opts = local::LocalOptions {
                    visibility_timeout: settings.visibility_timeout,
                    max_receive_count: settings.max_receive_count,
                    url_signing_secret: settings.url_signing_secret.clone(),
                };
                let b = local::LocalBackend::open(&settings.data_dir, &opts, clock.clone())
                    .map_err(|e| {
                        ConfigError::new(
                            "KILN_DATA_DIR",
                            format!(
                                "cannot open the local backend in {}: {e}",
                                settings.data_dir.display()
                            ),
                        )
                    })?;
                Ok(Self {
                    store: b.store,
                    intake: b.intake,
                    jobs_queue: b.jobs_queue,
                    jobs_dlq: b.jobs_dlq,
                    webhooks_queue: b.webhooks_queue,
                    webhooks_dlq: b.webhooks_dlq,
                    blobs: b.blobs,
                    url_signer: Some(b.url_signer),
                    webhook_secrets: b.webhook_secrets,
                    resolver: Arc::new(SystemResolver),
                    clock,
                })
            }
            #[cfg(feature = "aws")]
            Backend::Aws => Ok(aws::AwsBackend::connect(settings)
                .await?
                .into_services(clock)),
            #[allow(unreachable_patterns)]
            other => Err(ConfigError::new(
                "KILN_BACKEND",
                format!("backend {other:?} is not compiled into this binary"),
            )),
        }
    }

    /// The AWS adapters, for the Lambda functions: refuses any other backend, and leaves the
    /// local one (SQLite) out of the binaries that call only this.
    #[cfg(feature = "aws")]
    pub async fn on_aws(settings: &Settings, clock: Arc<dyn Clock>) -> Result<Self, ConfigError> {
        if settings.backend != Backend::Aws {
            return Err(ConfigError::new(
                "KILN_BACKEND",
                "the Lambda functions run on the aws backend only; set KILN_BACKEND=aws",
            ));
        }
        Ok(aws::AwsBackend::connect(settings)
            .await?
            .into_services(clock))
    }
}
