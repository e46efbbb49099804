//! The AWS adapters of the ports: [`DynamoJobStore`] (DynamoDB), [`SqsQueue`] (SQS),
//! [`S3BlobStore`] (S3); the SDK clients they share, built once per process
//! ([`AwsClients`]); and [`create_resources`], which makes the table, queues and bucket.
//!
//! Configuration comes from the SDK's own sources (`AWS_REGION`, `AWS_ENDPOINT_URL`, credentials
//! from the environment, a profile or the Lambda role) plus the resource names in
//! [`AwsResources`]. Tests pass endpoint, region and credentials through [`AwsOverrides`]
//! instead of the process environment.

mod blob_store;
mod error_mapping;
mod guards;
mod job_store;
mod queue;
mod resources;
mod secrets;
mod webhook_secrets;

use std::sync::Arc;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;

pub use blob_store::{S3BlobStore, MAX_URL_TTL};
pub use job_store::{
    DynamoJobStore, IN_FLIGHT_INDEX, KEYS_INDEX, MAX_SWEEP_PAGES, PENDING_INDEX, TTL_ATTRIBUTE,
    USER_INDEX,
};
pub use queue::{SqsQueue, MAX_BATCH, MAX_DELAY, MAX_VISIBILITY, MAX_WAIT};
pub use resources::{create_resources, ResourceError, ResourceNames};
pub use secrets::{parameter, parameters_by_path};
pub use webhook_secrets::DynamoWebhookSecrets;

use super::Services;
use crate::clock::Clock;
use crate::config::{AwsResources, ConfigError, Secret, Settings};
use crate::ports::{BlobStore, JobStore, Queue, WebhookSecretStore};

/// How long connecting to an AWS endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one attempt of a call may take: above SQS's longest long poll (20 s).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a call may take, the SDK's retries included.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(75);

/// Settings that take precedence over the SDK's own sources; all `None` in production. Tests
/// use them to aim at a local server without touching the process environment.
#[derive(Debug, Clone, Default)]
pub struct AwsOverrides {
    /// Endpoint of every service (`AWS_ENDPOINT_URL` otherwise).
    pub endpoint_url: Option<String>,
    /// Region (`AWS_REGION` otherwise).
    pub region: Option<String>,
    /// Fixed credentials (the SDK's default chain otherwise).
    pub credentials: Option<StaticCredentials>,
}

/// An access key pair.
#[derive(Debug, Clone)]
pub struct StaticCredentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key; redacted in `Debug`.
    pub secret_access_key: Secret,
}

/// The SDK clients, built once per process from one SDK configuration.
#[derive(Debug, Clone)]
pub struct AwsClients {
    /// DynamoDB.
    pub dynamodb: aws_sdk_dynamodb::Client,
    /// SQS.
    pub sqs: aws_sdk_sqs::Client,
    /// S3, with path-style addressing when the endpoint is overridden.
    pub s3: aws_sdk_s3::Client,
    /// SSM Parameter Store, for secrets kept there.
    pub ssm: aws_sdk_ssm::Client,
}

impl AwsClients {
    /// Loads the SDK configuration (`aws_config::defaults`, latest behavior version) with
    /// `overrides` on top; `ConfigError` naming `AWS_REGION` if no region is configured.
    pub async fn load(overrides: &AwsOverrides) -> Result<Self, ConfigError> {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .operation_timeout(OPERATION_TIMEOUT)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts);
        if let Some(url) = &overrides.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(region) = &overrides.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(c) = &overrides.credentials {
            loader = loader.credentials_provider(Credentials::new(
                &c.access_key_id,
                c.secret_access_key.expose(),
                None,
                None,
                "kiln-overrides",
            ));
        }
        let config = loader.load().await;
        if config.region().is_none() {
            return Err(ConfigError::new(
                "AWS_REGION",
                "no AWS region is configured (set AWS_REGION or a profile's region)",
            ));
        }
        Ok(Self::from_sdk_config(&config))
    }

    /// Clients over an SDK configuration loaded elsewhere.
    pub fn from_sdk_config(config: &SdkConfig) -> Self {
        // Virtual-host addressing needs DNS for `bucket.host`; a local endpoint (moto, MinIO)
        // only answers on its own host name.
        let s3 = aws_sdk_s3::config::Builder::from(config)
            .force_path_style(config.endpoint_url().is_some())
            .build();
        Self {
            dynamodb: aws_sdk_dynamodb::Client::new(config),
            sqs: aws_sdk_sqs::Client::new(config),
            s3: aws_sdk_s3::Client::from_conf(s3),
            ssm: aws_sdk_ssm::Client::new(config),
        }
    }
}

/// The AWS adapters of every port, over one set of resources.
#[derive(Clone)]
pub struct AwsBackend {
    /// The clients the adapters share.
    pub clients: AwsClients,
    /// Jobs and API keys in DynamoDB.
    pub store: Arc<dyn JobStore>,
    /// The jobs queue.
    pub jobs_queue: Arc<dyn Queue>,
    /// The jobs queue's dead-letter queue.
    pub jobs_dlq: Arc<dyn Queue>,
    /// The webhook queue.
    pub webhooks_queue: Arc<dyn Queue>,
    /// The webhook queue's dead-letter queue.
    pub webhooks_dlq: Arc<dyn Queue>,
    /// Images in S3.
    pub blobs: Arc<dyn BlobStore>,
    /// Users' webhook secrets, in the jobs table.
    pub webhook_secrets: Arc<dyn WebhookSecretStore>,
}

impl std::fmt::Debug for AwsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsBackend").finish_non_exhaustive()
    }
}

impl AwsBackend {
    /// The adapters over `settings.aws`, with the SDK configured from its own environment.
    pub async fn connect(settings: &Settings) -> Result<Self, ConfigError> {
        Self::connect_with(settings, &AwsOverrides::default()).await
    }

    /// [`AwsBackend::connect`] with `overrides` on top of the SDK's environment.
    pub async fn connect_with(
        settings: &Settings,
        overrides: &AwsOverrides,
    ) -> Result<Self, ConfigError> {
        let resources = settings.aws.as_ref().ok_or_else(|| {
            ConfigError::new(
                "KILN_BACKEND",
                "the AWS backend needs KILN_TABLE, KILN_BUCKET and the KILN_*_QUEUE_URL variables",
            )
        })?;
        let clients = AwsClients::load(overrides).await?;
        Ok(Self::from_clients(clients, resources))
    }

    /// The adapters over `resources` with clients built already.
    pub fn from_clients(clients: AwsClients, resources: &AwsResources) -> Self {
        let queue =
            |url: &str| -> Arc<dyn Queue> { Arc::new(SqsQueue::new(clients.sqs.clone(), url)) };
        Self {
            store: Arc::new(DynamoJobStore::new(
                clients.dynamodb.clone(),
                &resources.table,
            )),
            jobs_queue: queue(&resources.jobs_queue_url),
            jobs_dlq: queue(&resources.jobs_dlq_url),
            webhooks_queue: queue(&resources.webhooks_queue_url),
            webhooks_dlq: queue(&resources.webhooks_dlq_url),
            blobs: Arc::new(S3BlobStore::new(clients.s3.clone(), &resources.bucket)),
            webhook_secrets: Arc::new(DynamoWebhookSecrets::new(
                clients.dynamodb.clone(),
                &resources.table,
            )),
            clients,
        }
    }

    /// The [`Services`] of a process on AWS: image URLs are S3's presigned ones, so there is no
    /// URL signer.
    pub fn into_services(self, clock: Arc<dyn Clock>) -> Services {
        Services {
            intake: Arc::new(crate::ports::StoreThenEnqueue::new(
                self.store.clone(),
                self.jobs_queue.clone(),
            )),
            store: self.store,
            jobs_queue: self.jobs_queue,
            jobs_dlq: self.jobs_dlq,
            webhooks_queue: self.webhooks_queue,
            webhooks_dlq: self.webhooks_dlq,
            blobs: self.blobs,
            url_signer: None,
            webhook_secrets: self.webhook_secrets,
            resolver: Arc::new(crate::webhooks::SystemResolver),
            clock,
        }
    }
}
