//! Idempotency keys: a client's retry of a submit, sent with the same `Idempotency-Key`, gets
//! the job(s) of the first attempt instead of new ones.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{JobId, UserId};

/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 255;
/// How long a key is remembered.
pub const KEY_TTL: Duration = Duration::from_secs(24 * 3600);

/// A client's idempotency key: 1-255 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Validates a key as sent.
    pub fn parse(s: &str) -> Result<Self, String> {
        let printable = s.bytes().all(|b| (0x20..=0x7e).contains(&b));
        if s.is_empty() || s.len() > MAX_KEY_LEN || !printable {
            return Err(format!(
                "must be 1 to {MAX_KEY_LEN} printable ASCII characters"
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What one item of a remembered submit produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ItemOutcome {
    /// The job made for it.
    Job {
        /// Its id.
        id: JobId,
    },
    /// It could not be stored.
    Failed {
        /// Stable error code.
        code: String,
        /// What went wrong.
        message: String,
    },
}

/// Where a keyed submit stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum IdempotencyState {
    /// Claimed; the jobs are being written.
    InProgress,
    /// Done; one outcome per submitted item, in order.
    Completed {
        /// The outcomes.
        items: Vec<ItemOutcome>,
    },
}

/// A remembered key, scoped to its user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// Whose key.
    pub user_id: UserId,
    /// The key.
    pub key: IdempotencyKey,
    /// Hex SHA-256 of the route and the canonical body: another body under the same key is
    /// refused.
    pub request_hash: String,
    /// Where the submit stands.
    pub state: IdempotencyState,
    /// When it was claimed.
    pub created_at: DateTime<Utc>,
    /// When it is forgotten.
    pub expires_at: DateTime<Utc>,
}

impl IdempotencyRecord {
    /// A fresh claim, in progress, forgotten after [`KEY_TTL`].
    pub fn claim(
        user_id: UserId,
        key: IdempotencyKey,
        request_hash: String,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            user_id,
            key,
            request_hash,
            state: IdempotencyState::InProgress,
            created_at: now,
            expires_at: now + chrono::Duration::from_std(KEY_TTL).unwrap_or(chrono::Duration::MAX),
        }
    }

    /// Whether it is past its expiry at `now` (and may be claimed anew).
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at <= now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_printable_ascii_up_to_255() {
        assert!(IdempotencyKey::parse("order-42 retry").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        for bad in ["", "caf\u{e9}", "a\tb", "a\u{7f}"] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?}");
        }
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
    }
}
