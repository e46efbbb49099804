//! Who is calling: `Authorization: Bearer <credential>`, an API key checked against the stored
//! key hashes or, where JWT is configured and the credential has a JWT's shape, a JWT.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use kiln_shared::domain::{ApiKey, ApiKeyRecord, Tier, UserId};

use crate::{ApiError, AppState};

/// Longest API key looked up; anything longer cannot be one of ours.
const MAX_KEY_LEN: usize = 256;
/// Longest bearer credential read at all (a JWT with many claims is a few KiB).
const MAX_TOKEN_LEN: usize = 8192;

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's owner.
    pub user_id: UserId,
    /// The owner's tier.
    pub tier: Tier,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = bearer_token(parts).ok_or(ApiError::Unauthorized)?;
        if let Some(jwt) = &state.config.jwt {
            if crate::jwt::looks_like_jwt(presented) {
                let caller = jwt.verify(presented).await?;
                tracing::Span::current()
                    .record("user_id", tracing::field::display(&caller.user_id));
                return Ok(caller);
            }
        }
        if presented.len() > MAX_KEY_LEN {
            return Err(ApiError::Unauthorized);
        }
        let hash = ApiKey::from_presented(presented).hash();
        let now = state.clock.now();
        let record = match state.config.api_keys.get(&hash, now) {
            Some(record) => record,
            None => {
                let record = state
                    .store
                    .find_api_key(&hash)
                    .await?
                    .filter(|r| r.is_active())
                    .ok_or(ApiError::Unauthorized)?;
                state.config.api_keys.put(hash, &record, now);
                record
            }
        };
        tracing::Span::current().record("user_id", tracing::field::display(&record.user_id));
        Ok(Self {
            user_id: record.user_id,
            tier: record.tier,
        })
    }
}

/// Most keys the cache holds; past that it starts again empty (far more keys than a process
/// sees in one cache lifetime).
const MAX_CACHED_KEYS: usize = 10_000;

/// Active API keys found recently, by hash, so that a client's burst of requests costs one store
/// read per `ttl` instead of one each. The price: a key revoked elsewhere keeps working here until
/// its entry is `ttl` old. Unknown and revoked keys are never cached, so a new key works at once.
#[derive(Debug, Clone)]
pub struct KeyCache {
    ttl: Duration,
    entries: Arc<Mutex<HashMap<String, Found>>>,
}

/// A key record and when it was read from the store.
type Found = (ApiKeyRecord, DateTime<Utc>);

impl KeyCache {
    /// Keeps each found key for `ttl`; zero caches nothing.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Arc::default(),
        }
    }

    fn get(&self, hash: &str, now: DateTime<Utc>) -> Option<ApiKeyRecord> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let (record, found_at) = entries.get(hash)?;
        let age = (now - *found_at).to_std().unwrap_or(Duration::MAX);
        (age < self.ttl).then(|| record.clone())
    }

    fn put(&self, hash: String, record: &ApiKeyRecord, now: DateTime<Utc>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_CACHED_KEYS {
            entries.clear();
        }
        entries.insert(hash, (record.clone(), now));
    }
}

/// The token of a well-formed `Bearer` credential (RFC 6750: the scheme is case-insensitive).
fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    let well_formed = scheme.eq_ignore_ascii_case("bearer")
        && !token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && token.bytes().all(|b| b.is_ascii_graphic());
    well_formed.then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn token(header: &str) -> Option<String> {
        let (parts, ()) = Request::builder()
            .header(AUTHORIZATION, header)
            .body(())
            .expect("a valid request")
            .into_parts();
        bearer_token(&parts).map(str::to_owned)
    }

    #[test]
    fn cached_keys_expire_and_a_zero_ttl_caches_nothing() {
        let now = Utc::now();
        let (_, record) = ApiKeyRecord::issue(UserId::parse("u").unwrap(), Tier::Standard, now);
        let cache = KeyCache::new(Duration::from_secs(5));
        assert!(cache.get("h", now).is_none());
        cache.put("h".into(), &record, now);
        assert_eq!(
            cache.get("h", now + chrono::Duration::seconds(4)),
            Some(record.clone())
        );
        assert!(cache.get("h", now + chrono::Duration::seconds(5)).is_none());
        // A clock that stepped back ends the entry rather than extending it.
        assert!(cache.get("h", now - chrono::Duration::seconds(1)).is_none());

        let off = KeyCache::new(Duration::ZERO);
        off.put("h".into(), &record, now);
        assert!(off.get("h", now).is_none());
    }

    #[test]
    fn only_bearer_tokens_pass() {
        assert_eq!(token("Bearer kiln_abc").as_deref(), Some("kiln_abc"));
        assert_eq!(token("bearer  kiln_abc ").as_deref(), Some("kiln_abc"));
        assert_eq!(token("Basic kiln_abc"), None);
        assert_eq!(token("Bearer"), None);
        assert_eq!(token("Bearer "), None);
        assert_eq!(token("Bearer a b"), None);
        assert_eq!(
            token(&format!("Bearer {}", "k".repeat(MAX_TOKEN_LEN + 1))),
            None
        );
    }
}
