//! The embedded backend: one SQLite file (WAL) for jobs, keys and queues; images as files.
//!
//! Everything lives under one data directory, so that `kiln serve` needs nothing installed, and
//! two processes (a server and an operator's CLI) can open the same directory at once.

mod blob_store;
mod db;
mod guards;
mod intake;
mod job_store;
mod queue;
mod webhook_secrets;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;

pub use crate::ports::blob_store::{validate_key, MAX_KEY_LEN};
pub use blob_store::{content_type_for, FileBlobStore};
pub use db::{Db, DbError};
pub use intake::SqliteIntake;
pub use job_store::SqliteJobStore;
pub use queue::{QueuedMessage, SqliteQueue, MAX_BATCH};
pub use webhook_secrets::SqliteWebhookSecrets;

use crate::clock::Clock;
use crate::config::Secret;
use crate::ports::StoreError;
use crate::url_signing::UrlSigner;

/// Name of the database file in the data directory.
pub const DB_FILE: &str = "kiln.db";
/// Directory of the images in the data directory.
pub const BLOB_DIR: &str = "blobs";
/// File holding the generated URL-signing key in the data directory.
pub const URL_SIGNING_KEY_FILE: &str = "url-signing.key";

/// Queue names inside the database.
pub mod queue_names {
    /// Job messages.
    pub const JOBS: &str = "jobs";
    /// Job messages received too often.
    pub const JOBS_DLQ: &str = "jobs-dlq";
    /// Webhook events.
    pub const WEBHOOKS: &str = "webhooks";
    /// Webhook events that could not be delivered.
    pub const WEBHOOKS_DLQ: &str = "webhooks-dlq";
}

/// How the local backend behaves.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// How long a received message stays hidden from other receives.
    pub visibility_timeout: Duration,
    /// Receives after which a message moves to its dead-letter queue.
    pub max_receive_count: u32,
    /// Key of the image URL signatures; generated once and kept in the data directory if unset.
    pub url_signing_secret: Option<Secret>,
}

/// The local adapters of every port, over one data directory.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    /// Jobs and API keys.
    pub store: Arc<SqliteJobStore>,
    /// Submits: a job and its message in one write.
    pub intake: Arc<SqliteIntake>,
    /// The jobs queue; redrives to `jobs_dlq`.
    pub jobs_queue: Arc<SqliteQueue>,
    /// Job messages received `max_receive_count` times.
    pub jobs_dlq: Arc<SqliteQueue>,
    /// The webhook events queue; redrives to `webhooks_dlq`.
    pub webhooks_queue: Arc<SqliteQueue>,
    /// Webhook events received `max_receive_count` times.
    pub webhooks_dlq: Arc<SqliteQueue>,
    /// Images.
    pub blobs: Arc<FileBlobStore>,
    /// Signs the image URLs the API serves; the same key as `blobs` uses.
    pub url_signer: UrlSigner,
    /// Users' webhook signing secrets.
    pub webhook_secrets: Arc<SqliteWebhookSecrets>,
}

impl LocalBackend {
    /// Creates `data_dir` if needed, opens and migrates `data_dir/kiln.db`, keeps images under
    /// `data_dir/blobs/`. Without `opts.url_signing_secret`, a random key is created once in
    /// `data_dir/url-signing.key` (mode 0600) and reused, so URLs outlive a restart.
    ///
    /// Blocking: call it at startup, not from a request.
    pub fn open(
        data_dir: &Path,
        opts: &LocalOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let db = Db::open(&data_dir.join(DB_FILE))?;
        let secret = match &opts.url_signing_secret {
            Some(s) => s.clone(),
            None => url_signing_key(data_dir)?,
        };
        let url_signer = UrlSigner::new(secret);

        let queue = |name: &str| {
            SqliteQueue::new(
                db.clone(),
                name,
                opts.visibility_timeout,
                Arc::clone(&clock),
            )
        };
        let jobs_dlq = queue(queue_names::JOBS_DLQ);
        let jobs_queue = queue(queue_names::JOBS).with_redrive(&jobs_dlq, opts.max_receive_count);
        let webhooks_dlq = queue(queue_names::WEBHOOKS_DLQ);
        let webhooks_queue =
            queue(queue_names::WEBHOOKS).with_redrive(&webhooks_dlq, opts.max_receive_count);
        let blobs = FileBlobStore::new(data_dir.join(BLOB_DIR), url_signer.clone(), clock);
        let jobs_queue = Arc::new(jobs_queue);
        Ok(Self {
            webhook_secrets: Arc::new(SqliteWebhookSecrets::new(db.clone())),
            intake: Arc::new(SqliteIntake::new(Arc::clone(&jobs_queue))),
            store: Arc::new(SqliteJobStore::new(db)),
            jobs_queue,
            jobs_dlq: Arc::new(jobs_dlq),
            webhooks_queue: Arc::new(webhooks_queue),
            webhooks_dlq: Arc::new(webhooks_dlq),
            blobs: Arc::new(blobs),
            url_signer,
        })
    }
}

/// Reads the data directory's URL-signing key, creating it first if there is none.
fn url_signing_key(data_dir: &Path) -> Result<Secret, StoreError> {
    let path = data_dir.join(URL_SIGNING_KEY_FILE);
    let unavailable = |what: &str, e: std::io::Error| {
        StoreError::Unavailable(format!("cannot {what} {}: {e}", path.display()))
    };
    if !path.exists() {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        // Written whole to a private temporary file, then linked into place: linking fails if
        // another process got there first, and nobody ever reads a half-written key.
        let tmp = data_dir.join(format!(
            ".{URL_SIGNING_KEY_FILE}.{}.tmp",
            uuid::Uuid::new_v4().simple()
        ));
        let written = private_file(&tmp)
            .and_then(|mut f| {
                f.write_all(hex::encode(bytes).as_bytes())?;
                f.sync_all()
            })
            .and_then(|()| match std::fs::hard_link(&tmp, &path) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                other => other,
            });
        let _ = std::fs::remove_file(&tmp);
        written.map_err(|e| unavailable("create", e))?;
    }
    let key = std::fs::read_to_string(&path).map_err(|e| unavailable("read", e))?;
    let key = key.trim();
    if key.len() < 32 {
        return Err(StoreError::Unavailable(format!(
            "{} holds no usable key; delete it to have a new one made",
            path.display()
        )));
    }
    Ok(Secret::new(key))
}

#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    fn options() -> LocalOptions {
        LocalOptions {
            visibility_timeout: Duration::from_secs(30),
            max_receive_count: 3,
            url_signing_secret: None,
        }
    }

    #[test]
    fn the_generated_url_signing_key_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("nested/data");
        let a = LocalBackend::open(&data, &options(), Arc::new(SystemClock)).unwrap();
        let b = LocalBackend::open(&data, &options(), Arc::new(SystemClock)).unwrap();
        let url = a.url_signer.sign("k", 10);
        let sig = url.rsplit("sig=").next().unwrap();
        assert!(b.url_signer.verify("k", 10, sig, 0));
        let key = std::fs::read_to_string(data.join(URL_SIGNING_KEY_FILE)).unwrap();
        assert_eq!(key.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(data.join(URL_SIGNING_KEY_FILE)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        }
        let leftovers = std::fs::read_dir(&data)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp")
            })
            .count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn a_configured_secret_wins_and_no_key_file_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let opts = LocalOptions {
            url_signing_secret: Some(Secret::new("configured")),
            ..options()
        };
        let local = LocalBackend::open(dir.path(), &opts, Arc::new(SystemClock)).unwrap();
        let expected = UrlSigner::new(Secret::new("configured")).sign("k", 10);
        assert_eq!(local.url_signer.sign("k", 10), expected);
        assert!(!dir.path().join(URL_SIGNING_KEY_FILE).exists());
    }
}
