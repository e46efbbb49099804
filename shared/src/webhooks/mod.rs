//! Webhooks: the address guard that keeps deliveries off internal networks, Standard Webhooks
//! signing and the per-user secrets, and the message that carries an event on the webhook queue.

pub mod guard;
pub mod message;
pub mod secret;
pub mod signing;

pub use guard::{
    forbidden_reason, Approved, GuardError, GuardPolicy, Resolve, SystemResolver, WebhookGuard,
};
pub use message::WebhookMessage;
pub use secret::{UserWebhookSecrets, WebhookSecret, PREVIOUS_SECRET_GRACE};
pub use signing::{sign, signature_header, Signed};
