//! Who is calling: `Authorization: Bearer <credential>`, an API key checked against the stored
//! key hashes or, where JWT is configured and the credential has a JWT's shape, a JWT.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use kiln_shared::domain::{ApiKey, Tier, UserId};

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
        let key = ApiKey::from_presented(presented);
        let record = state
            .store
            .find_api_key(&key.hash())
            .await?
            .filter(|r| r.is_active())
            .ok_or(ApiError::Unauthorized)?;
        tracing::Span::current().record("user_id", tracing::field::display(&record.user_id));
        Ok(Self {
            user_id: record.user_id,
            tier: record.tier,
        })
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
