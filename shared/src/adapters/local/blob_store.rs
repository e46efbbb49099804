//! [`BlobStore`] on the local disk: one file per key under a root directory, written atomically
//! and made durable in groups, handed out through HMAC-signed URLs that the API serves.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::ports::blob_store::validate_key;
use crate::ports::{Blob, BlobError, BlobStore};
use crate::url_signing::UrlSigner;

/// Images as files under a root directory.
#[derive(Clone)]
pub struct FileBlobStore {
    root: PathBuf,
    signer: UrlSigner,
    clock: Arc<dyn Clock>,
    syncer: Syncer,
}

impl std::fmt::Debug for FileBlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileBlobStore")
            .field("root", &self.root)
            .finish()
    }
}

/// The MIME type a key's extension stands for.
pub fn content_type_for(key: &str) -> &'static str {
    let ext = key
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        _ => "application/octet-stream",
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> BlobError {
    BlobError::Unavailable(format!("cannot {what} {}: {e}", path.display()))
}

async fn blocking<T, F>(f: F) -> Result<T, BlobError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, BlobError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BlobError::Unavailable(format!("file task failed: {e}")))?
}

/// Writes `bytes` to `path` so that readers see the old file or the whole new one, never a part:
/// a temporary file in the same directory (same file system), then renamed over. Not yet
/// durable: see [`Syncer`].
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), BlobError> {
    let dir = path
        .parent()
        .ok_or_else(|| BlobError::InvalidKey(path.display().to_string()))?;
    std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp).map_err(|e| io_error("create", &tmp, e))?;
        file.write_all(bytes)
            .map_err(|e| io_error("write", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io_error("rename into", path, e))
    })();
    if result.is_err() {
        // Best effort: the error being returned matters more than a stray temporary file.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A file written and waiting to be durable, and whom to tell.
type SyncRequest = (PathBuf, oneshot::Sender<Result<(), String>>);

/// Makes written files durable in groups, as the database's writer commits writes in groups: a
/// thread takes every file written since its last flush and flushes them together, with one
/// `syncfs` of their file system on Linux (file data, inodes and the renames' directory entries)
/// instead of an `fsync` each. A `put` returns only once a flush that started after its rename
/// has ended, so an image is on disk before the job that names it is marked `success`.
#[derive(Clone)]
struct Syncer {
    requests: mpsc::UnboundedSender<SyncRequest>,
}

impl Syncer {
    /// Starts the thread; it ends when the last handle is dropped.
    fn start(root: PathBuf) -> Self {
        let (requests, rx) = mpsc::unbounded_channel();
        // If the thread cannot start, the receiver is dropped and every put reports it.
        let _ = std::thread::Builder::new()
            .name("kiln-blob-sync".into())
            .spawn(move || sync_loop(&root, rx));
        Self { requests }
    }

    async fn durable(&self, path: PathBuf) -> Result<(), BlobError> {
        let stopped = || BlobError::Unavailable("the image syncer has stopped".into());
        let (tx, rx) = oneshot::channel();
        self.requests.send((path, tx)).map_err(|_| stopped())?;
        rx.await
            .map_err(|_| stopped())?
            .map_err(BlobError::Unavailable)
    }
}

fn sync_loop(root: &Path, mut rx: mpsc::UnboundedReceiver<SyncRequest>) {
    let mut group: Vec<SyncRequest> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while let Ok(next) = rx.try_recv() {
            group.push(next);
        }
        let result = sync_files(root, group.iter().map(|(p, _)| p.as_path()));
        for (_, answer) in group.drain(..) {
            let _ = answer.send(result.clone());
        }
    }
}

/// Flushes the file system holding `root`, which holds every file of the group.
#[cfg(target_os = "linux")]
fn sync_files<'a>(root: &Path, _files: impl Iterator<Item = &'a Path>) -> Result<(), String> {
    let dir =
        std::fs::File::open(root).map_err(|e| format!("cannot open {}: {e}", root.display()))?;
    rustix::fs::syncfs(&dir).map_err(|e| format!("cannot flush {}: {e}", root.display()))
}

/// Elsewhere, each file and its directory in turn.
#[cfg(not(target_os = "linux"))]
fn sync_files<'a>(_root: &Path, files: impl Iterator<Item = &'a Path>) -> Result<(), String> {
    for file in files {
        let sync = |p: &Path| std::fs::File::open(p).and_then(|f| f.sync_all());
        sync(file)
            .and_then(|()| file.parent().map_or(Ok(()), sync))
            .map_err(|e| format!("cannot flush {}: {e}", file.display()))?;
    }
    Ok(())
}

impl FileBlobStore {
    /// A store rooted at `root` (created on first write), signing URLs with `signer`.
    pub fn new(root: PathBuf, signer: UrlSigner, clock: Arc<dyn Clock>) -> Self {
        Self {
            syncer: Syncer::start(root.clone()),
            root,
            signer,
            clock,
        }
    }

    /// The directory holding the files.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, BlobError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }
}

#[async_trait]
impl BlobStore for FileBlobStore {
    async fn put(&self, key: &str, bytes: Vec<u8>, _content_type: &str) -> Result<(), BlobError> {
        // The content type is not stored: `get` derives it from the extension, which the
        // caller chose to match it.
        let path = self.path_of(key)?;
        let written = path.clone();
        blocking(move || write_atomically(&written, &bytes)).await?;
        self.syncer.durable(path).await
    }

    async fn get(&self, key: &str) -> Result<Option<Blob>, BlobError> {
        let path = self.path_of(key)?;
        let content_type = content_type_for(key).to_owned();
        blocking(move || match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(Blob {
                bytes,
                content_type,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("read", &path, e)),
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        let path = self.path_of(key)?;
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("delete", &path, e)),
        })
        .await
    }

    async fn signed_url(&self, key: &str, expires_in: Duration) -> Result<String, BlobError> {
        validate_key(key)?;
        let secs = i64::try_from(expires_in.as_secs()).unwrap_or(i64::MAX);
        let expires = self.clock.now().timestamp().saturating_add(secs);
        Ok(self.signer.sign(key, expires))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::Secret;
    use crate::url_signing::IMAGE_PATH;

    fn store() -> (tempfile::TempDir, ManualClock, FileBlobStore) {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::default();
        let store = FileBlobStore::new(
            dir.path().join("blobs"),
            UrlSigner::new(Secret::new("k")),
            Arc::new(clock.clone()),
        );
        (dir, clock, store)
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type_for("a/0.png"), "image/png");
        assert_eq!(content_type_for("a/0.JPG"), "image/jpeg");
        assert_eq!(content_type_for("a/0.jpeg"), "image/jpeg");
        assert_eq!(content_type_for("a/0.webp"), "image/webp");
        assert_eq!(content_type_for("a/0"), "application/octet-stream");
        assert_eq!(content_type_for("a.png/0"), "application/octet-stream");
    }

    #[tokio::test]
    async fn writes_replace_whole_files_and_leave_no_temporaries() {
        let (_dir, _clock, store) = store();
        store
            .put("i/u/j/0.png", vec![1; 10], "image/png")
            .await
            .unwrap();
        store
            .put("i/u/j/0.png", vec![2; 3], "image/png")
            .await
            .unwrap();
        let blob = store.get("i/u/j/0.png").await.unwrap().unwrap();
        assert_eq!(
            (blob.bytes, blob.content_type.as_str()),
            (vec![2; 3], "image/png")
        );
        let names: Vec<_> = std::fs::read_dir(store.root().join("i/u/j"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["0.png"]);
        store.delete("i/u/j/0.png").await.unwrap();
        store.delete("i/u/j/0.png").await.unwrap();
        assert!(store.get("i/u/j/0.png").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn signed_urls_expire_relative_to_the_clock() {
        let (_dir, clock, store) = store();
        let url = store
            .signed_url("i/0.png", Duration::from_secs(60))
            .await
            .unwrap();
        let expires = clock.now().timestamp() + 60;
        assert!(url.starts_with(&format!("{IMAGE_PATH}i/0.png?expires={expires}&sig=")));
        assert!(matches!(
            store.signed_url("../x", Duration::from_secs(1)).await,
            Err(BlobError::InvalidKey(_))
        ));
    }
}
