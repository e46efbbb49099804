//! The ports: small traits the domain and the services talk through. Each has a local adapter
//! (SQLite and files) and an AWS adapter (DynamoDB, SQS, S3).

pub mod blob_store;
pub mod intake;
pub mod job_store;
pub mod provider;
pub mod queue;
pub mod webhook_secrets;

pub use blob_store::{Blob, BlobError, BlobStore};
pub use intake::{Intake, StoreThenEnqueue};
pub use job_store::{IdempotencyClaim, JobPage, JobStore, ListQuery, StoreError};
pub use provider::{GeneratedImage, GenerationRequest, ImageProvider, ProviderError};
pub use queue::{JobMessage, Queue, QueueError, ReceivedMessage};
pub use webhook_secrets::{secrets_for, WebhookSecretStore};
