//! HMAC-signed, expiring URLs for images served by the local backend.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Signs and checks `/v1/images/{key}?expires={unix}&sig={hex}` URLs.
#[derive(Clone)]
pub struct UrlSigner {
    key: Secret,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UrlSigner(***)")
    }
}

/// Path prefix of signed image URLs.
pub const IMAGE_PATH: &str = "/v1/images/";

impl UrlSigner {
    /// A signer with this HMAC key.
    pub fn new(key: Secret) -> Self {
        Self { key }
    }

    fn mac(&self, key: &str, expires: i64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(self.key.expose().as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(key.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// The relative URL for `key`, valid until the unix time `expires`.
    pub fn sign(&self, key: &str, expires: i64) -> String {
        let sig = hex::encode(self.mac(key, expires).finalize().into_bytes());
        format!("{IMAGE_PATH}{key}?expires={expires}&sig={sig}")
    }

    /// Whether `sig` is the signature of `key` until `expires`, and `expires` is not past `now`.
    pub fn verify(&self, key: &str, expires: i64, sig: &str, now: i64) -> bool {
        if expires < now {
            return false;
        }
        let Ok(sig) = hex::decode(sig) else {
            return false;
        };
        self.mac(key, expires).verify_slice(&sig).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_urls_verify_until_they_expire() {
        let s = UrlSigner::new(Secret::new("k"));
        let url = s.sign("images/u/j/0.png", 100);
        let sig = url.rsplit("sig=").next().unwrap();
        assert!(s.verify("images/u/j/0.png", 100, sig, 99));
        assert!(!s.verify("images/u/j/0.png", 100, sig, 101));
        assert!(!s.verify("images/u/j/1.png", 100, sig, 99));
        assert!(!s.verify("images/u/j/0.png", 101, sig, 99));
        assert!(!s.verify("images/u/j/0.png", 100, "zz", 99));
        assert!(!UrlSigner::new(Secret::new("other")).verify("images/u/j/0.png", 100, sig, 99));
    }
}
