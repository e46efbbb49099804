//! A message queue with SQS semantics: at-least-once delivery, visibility timeout, receive
//! count, redrive to a dead-letter queue.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// Failures of a [`Queue`].
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The receipt handle is unknown or stale (the message was received again since).
    #[error("receipt handle is not valid: {0}")]
    InvalidReceipt(String),
    /// Some messages of a batch were not sent; the bodies listed were not enqueued.
    #[error("{} of the batch were not sent: {reason}", failed.len())]
    PartialSend {
        /// Indexes, into the batch given, of the messages not sent.
        failed: Vec<usize>,
        /// Why.
        reason: String,
    },
    /// Anything else from the backend.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
}

/// A message handed to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// Stable id of the message across deliveries.
    pub message_id: String,
    /// Handle for delete and change-visibility; new on every delivery.
    pub receipt_handle: String,
    /// The body as sent.
    pub body: String,
    /// How many times the message has been received, this delivery included.
    pub receive_count: u32,
    /// When it was first sent.
    pub sent_at: DateTime<Utc>,
}

/// A queue.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Enqueues the bodies, visible after `delay`. Atomic per message, not per batch: on a
    /// partial failure, [`QueueError::PartialSend`] names what was not sent.
    async fn send(&self, bodies: &[String], delay: Duration) -> Result<(), QueueError>;

    /// Up to `max` (at most 10) visible messages, waiting up to `wait` for the first one.
    /// Received messages stay invisible for the queue's visibility timeout.
    async fn receive(&self, max: usize, wait: Duration)
        -> Result<Vec<ReceivedMessage>, QueueError>;

    /// Removes a received message for good.
    async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError>;

    /// Makes a received message visible again after `timeout` from now (zero: at once).
    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError>;

    /// How many messages are waiting, visible or in flight (approximate on SQS).
    async fn depth(&self) -> Result<u64, QueueError>;
}

/// The body of a message on the jobs queue: the job id only; the job store is the source of truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobMessage {
    /// The job to run.
    pub job_id: crate::domain::JobId,
}

impl JobMessage {
    /// The JSON body.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a job id always serializes")
    }

    /// Parses a body; `Err` names what is wrong with it.
    pub fn decode(body: &str) -> Result<Self, String> {
        serde_json::from_str(body).map_err(|e| format!("not a job message: {e}"))
    }
}
