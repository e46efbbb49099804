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
