//! The body of a message on the webhook queue: which event of which job, and how many delivery
//! attempts it has had. The job store stays the source of truth for the payload.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{EventType, JobId, PendingEvent};

/// A webhook event to deliver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookMessage {
    /// The job the event is about.
    pub job_id: JobId,
    /// Stable event id, sent as `webhook-id` on every attempt.
    pub event_id: String,
    /// The event's type.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// When the event happened (the payload's `timestamp`).
    pub occurred_at: DateTime<Utc>,
    /// Delivery attempts made so far.
    #[serde(default)]
    pub attempts: u32,
    /// Not to be attempted before this: queues cap a message's delay (15 minutes on SQS), so a
    /// longer wait is a chain of re-sends that each check it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
}

impl WebhookMessage {
    /// The first message of a pending event.
    pub fn first(job_id: JobId, event: &PendingEvent) -> Self {
        Self {
            job_id,
            event_id: event.id.clone(),
            event_type: event.event_type,
            occurred_at: event.at,
            attempts: 0,
            not_before: None,
        }
    }

    /// The JSON body.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a webhook message always serializes")
    }

    /// Parses a body; `Err` says what is wrong with it.
    pub fn decode(body: &str) -> Result<Self, String> {
        serde_json::from_str(body).map_err(|e| format!("not a webhook message: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_bodies() {
        let m = WebhookMessage {
            job_id: JobId::new(),
            event_id: "msg_1".into(),
            event_type: EventType::JobSucceeded,
            occurred_at: Utc::now(),
            attempts: 2,
            not_before: None,
        };
        assert_eq!(WebhookMessage::decode(&m.encode()).unwrap(), m);
        assert!(m.encode().contains(r#""type":"job.succeeded""#));
        assert!(WebhookMessage::decode(r#"{"job_id":"x"}"#).is_err());
    }
}
