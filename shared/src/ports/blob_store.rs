//! Where images live.

use std::time::Duration;

use async_trait::async_trait;

/// Failures of a [`BlobStore`].
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The key is not acceptable (empty, `..`, absolute).
    #[error("invalid blob key {0:?}")]
    InvalidKey(String),
    /// Anything else from the backend.
    #[error("blob store unavailable: {0}")]
    Unavailable(String),
}

/// Longest blob key accepted.
pub const MAX_KEY_LEN: usize = 512;

/// Checks a key, the same on every backend: 1 to [`MAX_KEY_LEN`] characters of
/// `[A-Za-z0-9._@/-]`, relative, and made of non-empty segments other than `.` and `..`, so that
/// it names one object (one file inside the local root) and no two keys name the same one.
pub fn validate_key(key: &str) -> Result<(), BlobError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '/' | '-');
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key.chars().all(ok_char)
        && key
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    if ok {
        Ok(())
    } else {
        Err(BlobError::InvalidKey(key.to_owned()))
    }
}

/// A stored object.
#[derive(Debug, Clone)]
pub struct Blob {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Their MIME type.
    pub content_type: String,
}

/// Image storage.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Writes (or overwrites) an object.
    async fn put(&self, key: &str, bytes: Vec<u8>, content_type: &str) -> Result<(), BlobError>;

    /// Reads an object, if it exists.
    async fn get(&self, key: &str) -> Result<Option<Blob>, BlobError>;

    /// Deletes an object; deleting a missing one is not an error.
    async fn delete(&self, key: &str) -> Result<(), BlobError>;

    /// A URL that lets anyone holding it GET the object until it expires. May be relative
    /// (`/v1/images/...`), in which case the API makes it absolute.
    async fn signed_url(&self, key: &str, expires_in: Duration) -> Result<String, BlobError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        for good in ["a", "images/u@x.com/0195-ab/0.png", "a/.hidden", "a..b/c"] {
            assert!(validate_key(good).is_ok(), "{good}");
        }
        let long = "a".repeat(MAX_KEY_LEN + 1);
        for bad in [
            "", "/abs", "../x", "a/../b", "a/..", "a//b", "a/./b", "a/", "a b", "a\\b", "é", &long,
        ] {
            assert!(
                matches!(validate_key(bad), Err(BlobError::InvalidKey(_))),
                "{bad}"
            );
        }
    }
}
