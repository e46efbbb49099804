//! JWT bearer tokens beside API keys: HS256 with a shared secret, RS256 with the public keys of
//! a JWKS (fetched with a timeout, cached, and fetched again when a token names a key id the
//! cache lacks, at most once per [`MIN_REFRESH`]). Issuer and audience are required; `exp` and
//! `nbf` are checked with a small leeway; `sub` is the user and a configurable claim the tier.
//!
//! The algorithm is chosen by what is configured, never by the token alone: an HS256 token is
//! checked only against the configured secret, an RS256 token only against the JWKS, so a token
//! signed with HMAC over the RSA public key (the HS/RS confusion attack) and `alg: none` fail.

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use kiln_shared::config::JwtSettings;
use kiln_shared::domain::{Tier, UserId};
use serde_json::Value;
use tokio::sync::{Mutex, RwLock};
use tokio::time::Instant;

use crate::{ApiError, Caller};

/// Longest a JWKS fetch may take.
pub const JWKS_TIMEOUT: Duration = Duration::from_secs(5);
/// Least time between two fetches of the JWKS, however many unknown key ids arrive.
pub const MIN_REFRESH: Duration = Duration::from_secs(30);
/// How long fetched keys are used before they are fetched again (key rotation).
pub const MAX_AGE: Duration = Duration::from_secs(3600);
/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Whether a bearer credential has the shape of a JWT (three base64url parts, a JSON header).
pub fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && token.starts_with("eyJ")
        && parts[..2].iter().all(|p| !p.is_empty())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[derive(Default)]
struct Cache {
    keys: HashMap<String, DecodingKey>,
    fetched_at: Option<Instant>,
}

/// Checks JWTs as configured; one per process.
pub struct JwtVerifier {
    settings: JwtSettings,
    hs256: Option<DecodingKey>,
    http: reqwest::Client,
    cache: RwLock<Cache>,
    refreshing: Mutex<()>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.settings.issuer)
            .field("audience", &self.settings.audience)
            .field("jwks_url", &self.settings.jwks_url)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// A verifier for `settings`; nothing is fetched until the first RS256 token.
    pub fn new(settings: JwtSettings) -> Self {
        let hs256 = settings
            .hs256_secret
            .as_ref()
            .map(|s| DecodingKey::from_secret(s.expose().as_bytes()));
        let http = reqwest::Client::builder()
            .timeout(JWKS_TIMEOUT)
            .connect_timeout(JWKS_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            settings,
            hs256,
            http,
            cache: RwLock::new(Cache::default()),
            refreshing: Mutex::new(()),
        }
    }

    /// The caller a token names, or `Unauthorized` for any token that does not hold. A JWKS that
    /// cannot be fetched while no key is cached is `Unavailable`.
    pub async fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| refuse("header", e))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.clone().ok_or(ApiError::Unauthorized)?,
            Algorithm::RS256 if self.settings.jwks_url.is_some() => {
                let kid = header.kid.as_deref().ok_or(ApiError::Unauthorized)?;
                self.rsa_key(kid).await?
            }
            _ => return Err(ApiError::Unauthorized),
        };
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = self.settings.leeway.as_secs();
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<HashMap<String, Value>>(token, &key, &validation)
            .map_err(|e| refuse("claims", e))?;
        let claims = data.claims;
        let user_id = claims
            .get("sub")
            .and_then(Value::as_str)
            .and_then(|s| UserId::parse(s).ok())
            .ok_or(ApiError::Unauthorized)?;
        let tier = match claims.get(&self.settings.tier_claim) {
            None | Some(Value::Null) => Tier::Standard,
            Some(Value::String(t)) => t.parse().map_err(|_| ApiError::Unauthorized)?,
            Some(_) => return Err(ApiError::Unauthorized),
        };
        Ok(Caller { user_id, tier })
    }

    /// The RSA key with id `kid`, fetching the JWKS if it is not cached (or the cache is old)
    /// and the last fetch was at least [`MIN_REFRESH`] ago.
    async fn rsa_key(&self, kid: &str) -> Result<DecodingKey, ApiError> {
        {
            let cache = self.cache.read().await;
            let fresh = cache.fetched_at.is_some_and(|t| t.elapsed() < MAX_AGE);
            if let (true, Some(key)) = (fresh, cache.keys.get(kid)) {
                return Ok(key.clone());
            }
        }
        // One fetch at a time; whoever waited behind it looks at the cache again first.
        let _guard = self.refreshing.lock().await;
        let recently = {
            let cache = self.cache.read().await;
            if let Some(key) = cache.keys.get(kid) {
                if cache.fetched_at.is_some_and(|t| t.elapsed() < MAX_AGE) {
                    return Ok(key.clone());
                }
            }
            cache.fetched_at.is_some_and(|t| t.elapsed() < MIN_REFRESH)
        };
        if !recently {
            match self.fetch().await {
                Ok(keys) => {
                    let mut cache = self.cache.write().await;
                    cache.keys = keys;
                    cache.fetched_at = Some(Instant::now());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not fetch the JWKS");
                    let mut cache = self.cache.write().await;
                    if cache.keys.is_empty() {
                        return Err(ApiError::Unavailable(format!("JWKS: {e}")));
                    }
                    // Keep the keys we have; try again after the minimum interval.
                    cache.fetched_at = Some(Instant::now());
                }
            }
        }
        self.cache
            .read()
            .await
            .keys
            .get(kid)
            .cloned()
            .ok_or(ApiError::Unauthorized)
    }

    async fn fetch(&self) -> Result<HashMap<String, DecodingKey>, String> {
        let url = self.settings.jwks_url.as_deref().ok_or("no JWKS URL")?;
        let mut resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .error_for_status()
            .map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_JWKS_BYTES {
                return Err(format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes"));
            }
        }
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            // Only RSA keys verify RS256; any other kind in the set is skipped.
            if !matches!(
                jwk.algorithm,
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_)
            ) {
                continue;
            }
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid, key);
            }
        }
        Ok(keys)
    }
}

fn refuse(what: &str, e: jsonwebtoken::errors::Error) -> ApiError {
    tracing::debug!(error = %e, "JWT refused ({what})");
    ApiError::Unauthorized
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_jwt_shaped_tokens_go_to_jwt_validation() {
        assert!(looks_like_jwt("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2ln"));
        assert!(looks_like_jwt("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1In0."));
        assert!(!looks_like_jwt("kiln_abc.def.ghi"));
        assert!(!looks_like_jwt("eyJ.only"));
        assert!(!looks_like_jwt("eyJa.b.c.d"));
    }
}
