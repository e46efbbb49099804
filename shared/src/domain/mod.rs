//! Plain-Rust domain: jobs, their states and allowed transitions, validated requests, API keys.

pub mod api_key;
pub mod cursor;
pub mod idempotency;
pub mod ids;
pub mod job;
pub mod limits;
#[cfg(test)]
mod properties;
pub mod request;
pub mod template;

pub use api_key::{ApiKey, ApiKeyRecord, Tier};
pub use cursor::Cursor;
pub use idempotency::{IdempotencyKey, IdempotencyRecord, IdempotencyState, ItemOutcome};
pub use ids::{JobId, UserId};
pub use job::{
    Attempt, EventType, ImageRef, Job, JobError, JobStatus, Lease, NewJob, PendingEvent,
    TransitionError, Webhook, WebhookDelivery, WebhookEvent, MAX_WEBHOOK_DELIVERIES,
};
pub use limits::{RateLimit, TierLimits};
pub use request::{ImageSize, JobRequest, Quality, SubmitJob, ValidationError, WebhookSpec};
pub use template::{NewTemplate, Template};
