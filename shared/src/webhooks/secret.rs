//! Per-user webhook signing secrets (`whsec_` + base64 of 32 random bytes), rotatable: after a
//! rotation the previous secret keeps signing alongside the new one for
//! [`PREVIOUS_SECRET_GRACE`], so receivers can switch without losing events.

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::clock::after;
use crate::domain::UserId;

/// How long a replaced secret keeps signing.
pub const PREVIOUS_SECRET_GRACE: Duration = Duration::from_secs(24 * 3600);

const PREFIX: &str = "whsec_";

/// A signing secret, `whsec_<base64>`; `Debug` shows only its start.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WebhookSecret {
    text: String,
    key: Vec<u8>,
}

impl WebhookSecret {
    /// A new random secret.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self {
            text: format!("{PREFIX}{}", STANDARD.encode(bytes)),
            key: bytes.to_vec(),
        }
    }

    /// Parses `whsec_<base64>`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let b64 = s
            .strip_prefix(PREFIX)
            .ok_or_else(|| format!("a webhook secret starts with {PREFIX}"))?;
        let key = STANDARD
            .decode(b64)
            .map_err(|e| format!("a webhook secret is {PREFIX} and base64: {e}"))?;
        if key.len() < 16 {
            return Err("a webhook secret holds at least 16 bytes".into());
        }
        Ok(Self {
            text: s.to_owned(),
            key,
        })
    }

    /// The whole secret, to show its owner once.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// A form safe to log or print again: the prefix and the first characters.
    pub fn redacted(&self) -> String {
        let shown: String = self.text.chars().take(PREFIX.len() + 4).collect();
        format!("{shown}…")
    }

    /// The HMAC key.
    pub fn key_bytes(&self) -> &[u8] {
        &self.key
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookSecret({})", self.redacted())
    }
}

impl TryFrom<String> for WebhookSecret {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<WebhookSecret> for String {
    fn from(s: WebhookSecret) -> String {
        s.text
    }
}

/// A user's secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserWebhookSecrets {
    /// Whose.
    pub user_id: UserId,
    /// Signs every delivery.
    pub current: WebhookSecret,
    /// The secret before the last rotation, and until when it still signs.
    pub previous: Option<(WebhookSecret, DateTime<Utc>)>,
    /// When the first secret was made.
    pub created_at: DateTime<Utc>,
    /// When it was last rotated.
    pub rotated_at: Option<DateTime<Utc>>,
    /// Bumped by every change; stores write only over the version a change was made from.
    pub version: u64,
}

impl UserWebhookSecrets {
    /// A first secret for `user`.
    pub fn issue(user_id: UserId, now: DateTime<Utc>) -> Self {
        Self {
            user_id,
            current: WebhookSecret::generate(),
            previous: None,
            created_at: now,
            rotated_at: None,
            version: 1,
        }
    }

    /// A new current secret; the old one keeps signing for [`PREVIOUS_SECRET_GRACE`].
    pub fn rotate(&self, now: DateTime<Utc>) -> Self {
        Self {
            user_id: self.user_id.clone(),
            current: WebhookSecret::generate(),
            previous: Some((self.current.clone(), after(now, PREVIOUS_SECRET_GRACE))),
            created_at: self.created_at,
            rotated_at: Some(now),
            version: self.version + 1,
        }
    }

    /// The secrets that sign a delivery made at `now`: the current one, then the previous one
    /// while its grace lasts.
    pub fn signing(&self, now: DateTime<Utc>) -> Vec<&WebhookSecret> {
        let mut out = vec![&self.current];
        if let Some((prev, until)) = &self.previous {
            if *until > now {
                out.push(prev);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_and_never_print_whole() {
        let s = WebhookSecret::generate();
        assert!(s.expose().starts_with("whsec_"));
        assert_eq!(WebhookSecret::parse(s.expose()).unwrap(), s);
        assert!(!format!("{s:?}").contains(s.expose()));
        assert!(WebhookSecret::parse("whsec_!!").is_err());
        assert!(WebhookSecret::parse("abc").is_err());
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<WebhookSecret>(&json).unwrap(), s);
    }

    #[test]
    fn the_previous_secret_signs_for_a_day_after_a_rotation() {
        let now = Utc::now();
        let first = UserWebhookSecrets::issue(UserId::parse("u").unwrap(), now);
        assert_eq!(first.signing(now).len(), 1);
        let second = first.rotate(now);
        assert_eq!(second.version, 2);
        assert_eq!(second.signing(now), [&second.current, &first.current]);
        let later = now + chrono::Duration::hours(25);
        assert_eq!(second.signing(later), [&second.current]);
    }
}
