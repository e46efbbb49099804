//! The SQLite file shared by the local job store and queues: opening, pragmas, schema migrations,
//! and running statements off the async runtime.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, ErrorCode};

use crate::ports::{QueueError, StoreError};

/// How long a statement waits for another connection's (or process's) write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations; `PRAGMA user_version` is the number of them applied.
const MIGRATIONS: &[&str] = &[
    // 1: jobs (a JSON document plus the columns that queries filter on), API keys, queues.
    "
    CREATE TABLE jobs (
        id         TEXT PRIMARY KEY NOT NULL,
        user_id    TEXT NOT NULL,
        status     TEXT NOT NULL,
        version    INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        doc        TEXT NOT NULL
    );
    CREATE INDEX jobs_by_user ON jobs (user_id, id);
    CREATE INDEX jobs_by_status ON jobs (status, created_at);
    CREATE INDEX jobs_by_expiry ON jobs (expires_at);

    CREATE TABLE api_keys (
        id         TEXT PRIMARY KEY NOT NULL,
        hash       TEXT NOT NULL UNIQUE,
        user_id    TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER,
        doc        TEXT NOT NULL
    );

    CREATE TABLE queue_messages (
        seq            INTEGER PRIMARY KEY AUTOINCREMENT,
        queue          TEXT NOT NULL,
        message_id     TEXT NOT NULL UNIQUE,
        body           TEXT NOT NULL,
        sent_at        INTEGER NOT NULL,
        visible_at     INTEGER NOT NULL,
        receive_count  INTEGER NOT NULL DEFAULT 0,
        receipt_handle TEXT UNIQUE
    );
    CREATE INDEX queue_messages_visible ON queue_messages (queue, visible_at);
    ",
    // 3: users' webhook signing secrets (IF NOT EXISTS: safe whichever order migrations land in).
    "
    CREATE TABLE IF NOT EXISTS webhook_secrets (
        user_id TEXT PRIMARY KEY NOT NULL,
        version INTEGER NOT NULL,
        doc     TEXT NOT NULL
    );
    ",
];

/// Why the database could not be reached (as opposed to a statement failing).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite refused.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The blocking task running the statements died.
    #[error("database task failed: {0}")]
    Task(String),
    /// The file was written by a newer build or holds something unreadable.
    #[error("database is corrupt or too new: {0}")]
    Corrupt(String),
}

/// One SQLite database file, opened once per process and shared by the adapters.
///
/// One connection behind a mutex: SQLite admits a single writer at a time anyway, and
/// serialising inside the process spares the busy-handler's sleeps; other processes are kept
/// apart by SQLite's file locks and the busy timeout.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

impl Db {
    /// Opens (creating if needed) and migrates the database at `path`. Blocking: call it at
    /// startup or from a blocking task.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // WAL lets readers in other processes proceed while one writes; NORMAL is durable in
        // WAL mode except for the last transactions on power loss, which SQS does not promise
        // either.
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(DbError::Corrupt(format!(
                "could not switch {} to WAL (journal mode is {mode})",
                path.display()
            )));
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        migrate(&mut conn)?;
        // The canonical path names the database in the per-process wake-up registry, so that
        // two handles on one file share their queues' notifications.
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    /// The database file, canonicalised.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection in a blocking task, so the async runtime never waits on
    /// SQLite's locks or the disk.
    pub async fn call<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic inside `f` cannot leave a transaction open (dropping it rolls back), so
            // the connection is still usable after poisoning.
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn)
        })
        .await
        .map_err(|e| E::from(DbError::Task(e.to_string())))?
    }
}

fn migrate(conn: &mut Connection) -> Result<(), DbError> {
    // IMMEDIATE takes the write lock first, so two processes opening a new file at once run the
    // migrations one after the other instead of both.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(DbError::Corrupt(format!(
            "schema version {current} is newer than this build knows ({known})"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
    }
    tx.commit()?;
    Ok(())
}

/// Whether SQLite gave up waiting for a lock.
pub(crate) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Unix milliseconds, the unit every time column holds.
pub(crate) fn to_millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Back from unix milliseconds.
pub(crate) fn from_millis(ms: i64) -> Result<DateTime<Utc>, DbError> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| DbError::Corrupt(format!("time {ms} ms is out of range")))
}

/// A duration in milliseconds, saturating.
pub(crate) fn duration_millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl From<DbError> for StoreError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Sqlite(e) => e.into(),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        if is_busy(&e) {
            StoreError::Throttled
        } else {
            StoreError::Unavailable(e.to_string())
        }
    }
}

impl From<DbError> for QueueError {
    fn from(e: DbError) -> Self {
        QueueError::Unavailable(e.to_string())
    }
}

impl From<rusqlite::Error> for QueueError {
    fn from(e: rusqlite::Error) -> Self {
        QueueError::Unavailable(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_twice_migrates_once_and_keeps_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        let a = Db::open(&path).unwrap();
        let b = Db::open(&path).unwrap();
        for db in [a, b] {
            let conn = db.conn.lock().unwrap();
            let v: i64 = conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap();
            assert_eq!(v, MIGRATIONS.len() as i64);
            let mode: String = conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
        }
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        drop(Db::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        assert!(matches!(Db::open(&path), Err(DbError::Corrupt(_))));
    }
}
