//! API keys: random secrets shown once, stored only as a SHA-256 hash, bound to a user and a tier.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::UserId;

/// The service level of a user: routing and limits depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Starts with the cheapest provider.
    #[default]
    Standard,
    /// Starts with the highest-quality provider.
    Vip,
}

impl Tier {
    /// The tier's name as in config and JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            Tier::Standard => "standard",
            Tier::Vip => "vip",
        }
    }
}

impl FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "standard" => Ok(Tier::Standard),
            "vip" => Ok(Tier::Vip),
            other => Err(format!("unknown tier {other:?}: expected standard or vip")),
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const KEY_PREFIX: &str = "kiln_";

/// A plaintext API key; exists only between creation and being shown to its owner, and while a
/// request is authenticated. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// A new random key: `kiln_` and 32 random bytes in URL-safe base64.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// Wraps a key a client presented.
    pub fn from_presented(s: &str) -> Self {
        Self(s.to_owned())
    }

    /// The secret text, to show once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The hex SHA-256 under which the key is stored.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }

    /// A short, non-secret prefix that lets an owner recognise the key in listings.
    pub fn display_prefix(&self) -> String {
        self.0.chars().take(KEY_PREFIX.len() + 6).collect()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({}…)", self.display_prefix())
    }
}

/// What is stored about a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Stable id for listing and revoking (not secret).
    pub id: String,
    /// Hex SHA-256 of the key.
    pub hash: String,
    /// Recognisable start of the key.
    pub prefix: String,
    /// Whose key it is.
    pub user_id: UserId,
    /// The user's tier.
    pub tier: Tier,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKeyRecord {
    /// Makes a new key for a user; returns the secret (show it once) and the record to store.
    pub fn issue(user_id: UserId, tier: Tier, now: DateTime<Utc>) -> (ApiKey, Self) {
        let key = ApiKey::generate();
        let record = Self {
            // Random, not time-ordered: the first 16 hex digits of a v7 UUID are mostly its
            // millisecond, so two keys issued in one millisecond would share an id.
            id: uuid::Uuid::new_v4().simple().to_string()[..16].to_owned(),
            hash: key.hash(),
            prefix: key.display_prefix(),
            user_id,
            tier,
            created_at: now,
            revoked_at: None,
        };
        (key, record)
    }

    /// Whether the key still authenticates.
    pub fn is_active(&self) -> bool {
        self.revoked_at.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_hashed_and_redacted() {
        let (key, rec) = ApiKeyRecord::issue(UserId::parse("u").unwrap(), Tier::Vip, Utc::now());
        let (other, _) = ApiKeyRecord::issue(UserId::parse("u").unwrap(), Tier::Vip, Utc::now());
        assert_ne!(key, other);
        assert_eq!(rec.hash, ApiKey::from_presented(key.expose()).hash());
        assert!(!rec.hash.contains(key.expose()));
        assert!(!format!("{key:?}").contains(key.expose()));
        assert!(key.expose().starts_with("kiln_"));
    }

    #[test]
    fn keys_issued_in_the_same_millisecond_get_distinct_ids() {
        let now = Utc::now();
        let ids: std::collections::HashSet<String> = (0..100)
            .map(|_| {
                ApiKeyRecord::issue(UserId::parse("u").unwrap(), Tier::Standard, now)
                    .1
                    .id
            })
            .collect();
        assert_eq!(ids.len(), 100);
    }
}
