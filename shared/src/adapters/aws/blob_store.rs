//! [`BlobStore`] on an S3 bucket, with presigned GET URLs.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha256};

use super::error_mapping::blob_error;
use crate::ports::blob_store::validate_key;
use crate::ports::{Blob, BlobError, BlobStore};

/// Longest life S3 allows a presigned URL (SigV4): one week.
pub const MAX_URL_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Objects in one S3 bucket.
#[derive(Debug, Clone)]
pub struct S3BlobStore {
    client: Client,
    bucket: String,
}

impl S3BlobStore {
    /// The store over `bucket`; build `client` with path-style addressing when the endpoint is
    /// overridden (see [`super::AwsClients`]).
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
        }
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    /// `PutObject` with the content type and a SHA-256 checksum S3 verifies on arrival.
    async fn put(&self, key: &str, bytes: Vec<u8>, content_type: &str) -> Result<(), BlobError> {
        validate_key(key)?;
        let checksum = STANDARD.encode(Sha256::digest(&bytes));
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .checksum_sha256(checksum)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| blob_error("PutObject", key, e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Blob>, BlobError> {
        validate_key(key)?;
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(blob_error("GetObject", key, e)),
        };
        let content_type = out
            .content_type()
            .unwrap_or("application/octet-stream")
            .to_owned();
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| BlobError::Unavailable(format!("GetObject {key:?}: reading body: {e}")))?
            .into_bytes()
            .to_vec();
        Ok(Some(Blob {
            bytes,
            content_type,
        }))
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        validate_key(key)?;
        // S3 answers a delete of a missing key with success, as the port wants.
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| blob_error("DeleteObject", key, e))?;
        Ok(())
    }

    /// A presigned GET; S3 refuses URLs living more than a week, so a longer `expires_in` is
    /// cut to that.
    async fn signed_url(&self, key: &str, expires_in: Duration) -> Result<String, BlobError> {
        validate_key(key)?;
        let config = PresigningConfig::expires_in(expires_in.min(MAX_URL_TTL))
            .map_err(|e| BlobError::Unavailable(format!("presigning {key:?}: {e}")))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| blob_error("presigning GetObject", key, e))?;
        Ok(request.uri().to_owned())
    }
}
