//! The SQLite file shared by the local job store and queues: opening, pragmas, schema migrations,
//! and running statements off the async runtime: writes group-committed on a writer thread,
//! reads on their own connections.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, ErrorCode};
use tokio::sync::{mpsc, oneshot, Semaphore};

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
    // 2: idempotency keys, rate windows, templates; counting a user's jobs in flight.
    "
    CREATE TABLE idempotency_keys (
        user_id    TEXT NOT NULL,
        key        TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        doc        TEXT NOT NULL,
        PRIMARY KEY (user_id, key)
    );
    CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at);

    CREATE TABLE rate_windows (
        user_id      TEXT NOT NULL,
        window_start INTEGER NOT NULL,
        count        INTEGER NOT NULL,
        expires_at   INTEGER NOT NULL,
        PRIMARY KEY (user_id, window_start)
    );

    -- owner is the user id, or '' for a global template (no user id is empty).
    CREATE TABLE templates (
        owner TEXT NOT NULL,
        name  TEXT NOT NULL,
        doc   TEXT NOT NULL,
        PRIMARY KEY (owner, name)
    );

    CREATE INDEX jobs_by_user_status ON jobs (user_id, status);
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

/// Most write requests committed together in one transaction.
const MAX_GROUP: usize = 512;
/// Write requests that may wait for the writer thread before senders wait too.
const WRITE_QUEUE: usize = 4096;
/// Reads running at once, each on its own connection, kept open between reads (opening one
/// parses the schema again).
const READERS: usize = 8;
/// Least time between two checkpoints of the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);
/// Statements each connection keeps prepared (`prepare_cached`).
const STATEMENT_CACHE: usize = 64;

/// One SQLite database file, opened once per process and shared by the adapters.
///
/// Writes go to one thread that owns the write connection. It takes every write request that
/// arrived while it was busy and commits them in one transaction, each inside a savepoint so
/// that a request that fails rolls back only its own statements: under load, one commit serves
/// many requests instead of one each (group commit). Reads run on other connections, which WAL
/// lets proceed while the writer writes. Other processes are kept apart by SQLite's file locks
/// and the busy timeout.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    writer: mpsc::Sender<WriteTask>,
    readers: Mutex<Vec<Connection>>,
    reading: Semaphore,
    path: PathBuf,
}

/// A grouped write: runs inside the group's transaction and says how to answer once the
/// group's commit is known.
type GroupedWrite = Box<dyn FnOnce(&Connection) -> Settle + Send>;

/// A request to the writer thread.
enum WriteTask {
    /// Runs in a savepoint of the current group's transaction; answered after the commit.
    Grouped(GroupedWrite),
    /// Runs alone on the connection, outside any transaction of the writer's, so it may open
    /// its own.
    Exclusive(Box<dyn FnOnce(&mut Connection) + Send>),
}

/// Answers a grouped write once its group's commit is known (`Err` when the commit failed).
type Answer = Box<dyn FnOnce(Result<(), &rusqlite::Error>) + Send>;

/// What a grouped write did: whether its statements stay, and how to answer it.
struct Settle {
    keep: bool,
    answer: Answer,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl Db {
    /// Opens (creating if needed) and migrates the database at `path`, and starts its writer
    /// thread (it ends when the last handle is dropped). Blocking: call it at startup or from a
    /// blocking task.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let mut conn = connect(path)?;
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
        migrate(&mut conn)?;
        // Checkpoints (copying the WAL back into the file, with an fsync) run on a thread of
        // their own instead of inside whichever commit crossed the threshold, so the writer
        // does not stall; PASSIVE never waits for readers or writers.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpointer = connect(path)?;
        let (checkpoint, wanted) = mpsc::channel(1);
        std::thread::Builder::new()
            .name("kiln-db-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, wanted))
            .map_err(|e| DbError::Task(format!("cannot start the checkpointer: {e}")))?;
        // The canonical path names the database in the per-process wake-up registry, so that
        // two handles on one file share their queues' notifications.
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let (writer, rx) = mpsc::channel(WRITE_QUEUE);
        std::thread::Builder::new()
            .name("kiln-db-writer".into())
            .spawn(move || write_loop(conn, rx, checkpoint))
            .map_err(|e| DbError::Task(format!("cannot start the database writer: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                writer,
                readers: Mutex::new(Vec::new()),
                reading: Semaphore::new(READERS),
                path,
            }),
        })
    }

    /// The database file, canonicalised.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` alone on the write connection, on the writer thread, so the async runtime
    /// never waits on SQLite's locks or the disk. `f` may open its own transaction. Prefer
    /// [`Db::write`] for writes and [`Db::read`] for reads: they do not hold up other requests.
    pub async fn call<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let task = WriteTask::Exclusive(Box::new(move |conn| {
            let _ = tx.send(f(conn));
        }));
        self.submit(task).await?;
        rx.await
            .map_err(|_| E::from(DbError::Task("a database call panicked".into())))?
    }

    /// Runs `f` in the writer's next group transaction, inside a savepoint: if `f` fails, its
    /// statements are rolled back and the others of the group stay. Answers once the group is
    /// committed, so a success is durable (as the WAL mode makes it) when it returns. `f` must
    /// not open a transaction of its own.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, E>>();
        let task = WriteTask::Grouped(Box::new(move |conn: &Connection| {
            let out = f(conn);
            let keep = out.is_ok();
            Settle {
                keep,
                answer: Box::new(move |committed| {
                    let out = match committed {
                        Err(e) if keep => Err(E::from(DbError::Sqlite(copy_error(e)))),
                        _ => out,
                    };
                    let _ = tx.send(out);
                }),
            }
        }));
        self.submit(task).await?;
        rx.await
            .map_err(|_| E::from(DbError::Task("a database write panicked".into())))?
    }

    /// Runs `f` on a read connection in a blocking task. It sees every write that has
    /// returned, and does not wait for the writer.
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        // Bounded, so that a burst of reads waits here instead of opening a connection each.
        let _permit = self
            .inner
            .reading
            .acquire()
            .await
            .map_err(|e| E::from(DbError::Task(e.to_string())))?;
        tokio::task::spawn_blocking(move || {
            let idle = inner
                .readers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let conn = match idle {
                Some(c) => c,
                None => connect(&inner.path).map_err(E::from)?,
            };
            let out = f(&conn);
            let mut idle = inner.readers.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < READERS {
                idle.push(conn);
            }
            out
        })
        .await
        .map_err(|e| E::from(DbError::Task(e.to_string())))?
    }

    async fn submit<E: From<DbError>>(&self, task: WriteTask) -> Result<(), E> {
        self.inner
            .writer
            .send(task)
            .await
            .map_err(|_| E::from(DbError::Task("the database writer has stopped".into())))
    }
}

/// A connection with the settings every connection of the process has.
fn connect(path: &Path) -> Result<Connection, DbError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // Savepoints' sub-journals and sorts stay in memory instead of temporary files.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// The writer thread: takes what has arrived (up to [`MAX_GROUP`]), runs the grouped writes in
/// one transaction and the exclusive calls between groups, in arrival order.
fn write_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<WriteTask>,
    checkpoint: mpsc::Sender<()>,
) {
    let mut arrived = Vec::with_capacity(MAX_GROUP);
    let mut group: Vec<GroupedWrite> = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.blocking_recv() {
        arrived.push(first);
        while arrived.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(task) => arrived.push(task),
                Err(_) => break,
            }
        }
        for task in arrived.drain(..) {
            match task {
                WriteTask::Grouped(f) => group.push(f),
                WriteTask::Exclusive(f) => {
                    run_group(&conn, &mut group);
                    // A panic inside `f` cannot leave a transaction open (dropping it rolls
                    // back), so the connection is still usable.
                    let _ = panic::catch_unwind(AssertUnwindSafe(|| f(&mut conn)));
                }
            }
        }
        run_group(&conn, &mut group);
        // Full means one is already asked for.
        let _ = checkpoint.try_send(());
    }
}

/// Checkpoints the WAL when the writer asks, at most every [`CHECKPOINT_EVERY`]; ends with
/// the writer.
fn checkpoint_loop(conn: Connection, mut wanted: mpsc::Receiver<()>) {
    while wanted.blocking_recv().is_some() {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "checkpoint did not run");
        }
        std::thread::sleep(CHECKPOINT_EVERY);
    }
}

/// Runs one of the writer's own statements, prepared once.
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Runs `group` in one `IMMEDIATE` transaction, each write in a savepoint, and answers each
/// once the commit is known. If the transaction cannot start (another process holds the lock
/// past the busy timeout), each write runs as a transaction of its own instead.
fn run_group(conn: &Connection, group: &mut Vec<GroupedWrite>) {
    if group.is_empty() {
        return;
    }
    let in_tx = exec(conn, "BEGIN IMMEDIATE").is_ok();
    let mut committed = Vec::with_capacity(group.len());
    for f in group.drain(..) {
        if exec(conn, "SAVEPOINT w").is_err() {
            // Dropping `f` drops its answer's sender: the caller gets an error.
            continue;
        }
        let settled = panic::catch_unwind(AssertUnwindSafe(|| f(conn)));
        match settled {
            Ok(s) if s.keep => match exec(conn, "RELEASE w") {
                Ok(()) if in_tx => committed.push(s.answer),
                // Outside a transaction, the release was the commit.
                Ok(()) => (s.answer)(Ok(())),
                Err(e) => {
                    let _ = exec(conn, "ROLLBACK TO w").and_then(|()| exec(conn, "RELEASE w"));
                    (s.answer)(Err(&e));
                }
            },
            other => {
                let _ = exec(conn, "ROLLBACK TO w").and_then(|()| exec(conn, "RELEASE w"));
                if let Ok(s) = other {
                    (s.answer)(Ok(()));
                }
            }
        }
    }
    if !in_tx {
        return;
    }
    match exec(conn, "COMMIT") {
        Ok(()) => committed.into_iter().for_each(|a| a(Ok(()))),
        Err(e) => {
            let _ = exec(conn, "ROLLBACK");
            committed.into_iter().for_each(|a| a(Err(&e)));
        }
    }
}

/// A copy of a commit's error for each write of the group (`rusqlite::Error` is not `Clone`).
fn copy_error(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, msg) => {
            rusqlite::Error::SqliteFailure(*code, msg.clone())
        }
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
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
            let conn = Connection::open(db.path()).unwrap();
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

    #[tokio::test]
    async fn a_failing_write_rolls_back_alone_and_reads_see_committed_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("kiln.db")).unwrap();
        let insert = |id: &'static str, fail: bool| {
            let db = db.clone();
            async move {
                db.write(move |conn| {
                    conn.execute(
                        "INSERT INTO api_keys (id, hash, user_id, created_at, doc)
                         VALUES (?1, ?1, 'u', 0, '{}')",
                        [id],
                    )?;
                    if fail {
                        return Err(DbError::Task("refused".into()));
                    }
                    Ok(())
                })
                .await
            }
        };
        // Sent together, so the writer likely commits them in one group.
        let (a, b, c) = tokio::join!(insert("a", false), insert("b", true), insert("c", false));
        assert!(a.is_ok() && b.is_err() && c.is_ok());
        let names: Vec<String> = db
            .read(|conn| {
                let mut stmt = conn.prepare("SELECT id FROM api_keys ORDER BY id")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                Ok::<_, DbError>(rows.collect::<Result<_, _>>()?)
            })
            .await
            .unwrap();
        assert_eq!(names, ["a", "c"]);
        // An exclusive call may still open its own transaction.
        db.call(|conn| {
            let tx = conn.transaction()?;
            tx.execute("DELETE FROM api_keys", [])?;
            tx.commit()?;
            Ok::<_, DbError>(())
        })
        .await
        .unwrap();
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
