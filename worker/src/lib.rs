//! Kiln's worker: the batch processor that runs job messages, and the local feed that drives it
//! from the embedded queue. The Lambda main ([`lambda`], feature `lambda`) feeds the same
//! processor from SQS events.
//!
//! The unit is one job message ([`Worker::process_message`]); [`batch::run_batch`] runs a batch
//! of them concurrently and returns the ids that must come back, as SQS `batchItemFailures`
//! expects.

pub mod batch;
pub mod dlq;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod pool;
pub mod webhooks;
pub mod worker;

pub use batch::{run_batch, Outcome};
pub use pool::{retry_delay, run_pool, sweep, SweepReport};
pub use webhooks::{run_webhook_pool, SenderConfig, WebhookSender};
pub use worker::{Worker, WorkerConfig, PROVIDER_UNAVAILABLE};
