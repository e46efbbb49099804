//! [`Queue`] on SQLite with SQS semantics: visibility timeout, a receipt handle per delivery,
//! receive counts, redrive to a dead-letter queue, and long polling without busy waiting.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::params;
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

use super::db::{duration_millis, from_millis, to_millis, Db};
use crate::clock::Clock;
use crate::ports::{Queue, QueueError, ReceivedMessage};

/// Most messages one receive returns, as on SQS.
pub const MAX_BATCH: usize = 10;

/// Longest single wait of a long poll: a send from another process raises no in-process
/// notification, so a waiting receive looks at the table at least this often.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// A message as it sits in the queue, for operators' listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// Stable id across deliveries (and across a move to the dead-letter queue).
    pub message_id: String,
    /// The body as sent.
    pub body: String,
    /// When it was first sent.
    pub sent_at: DateTime<Utc>,
    /// When it may next be received.
    pub visible_at: DateTime<Utc>,
    /// Deliveries so far (reset when moved to the dead-letter queue).
    pub receive_count: u32,
}

/// Where a message goes once it has been received too often.
#[derive(Debug, Clone)]
struct Redrive {
    dlq: String,
    max_receive_count: u32,
    wake: Arc<Notify>,
}

/// One named queue in the local SQLite file.
pub struct SqliteQueue {
    db: Db,
    name: String,
    visibility_timeout: Duration,
    redrive: Option<Redrive>,
    clock: Arc<dyn Clock>,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for SqliteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteQueue")
            .field("name", &self.name)
            .field("visibility_timeout", &self.visibility_timeout)
            .field("redrive", &self.redrive.as_ref().map(|r| &r.dlq))
            .finish()
    }
}

/// The wake-up of a queue, shared by every handle on the same database and queue name in this
/// process, so that a send through one handle ends the long poll of a receive on another.
fn wake_for(db: &Path, queue: &str) -> Arc<Notify> {
    type Registry = Mutex<HashMap<(PathBuf, String), Weak<Notify>>>;
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    let mut map = REGISTRY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let key = (db.to_path_buf(), queue.to_owned());
    if let Some(wake) = map.get(&key).and_then(Weak::upgrade) {
        return wake;
    }
    // Forget queues nobody holds any more, so that many short-lived backends (tests) do not grow
    // the map for ever.
    map.retain(|_, w| w.strong_count() > 0);
    let wake = Arc::new(Notify::new());
    map.insert(key, Arc::downgrade(&wake));
    wake
}

impl SqliteQueue {
    /// The queue called `name` in `db`; received messages stay hidden for `visibility_timeout`.
    pub fn new(db: Db, name: &str, visibility_timeout: Duration, clock: Arc<dyn Clock>) -> Self {
        let wake = wake_for(db.path(), name);
        Self {
            db,
            name: name.to_owned(),
            visibility_timeout,
            redrive: None,
            clock,
            wake,
        }
    }

    /// Moves messages to `dlq` instead of delivering them once they have been received
    /// `max_receive_count` times (at least 1), like an SQS redrive policy.
    pub fn with_redrive(mut self, dlq: &SqliteQueue, max_receive_count: u32) -> Self {
        self.redrive = Some(Redrive {
            dlq: dlq.name.clone(),
            max_receive_count: max_receive_count.max(1),
            wake: Arc::clone(&dlq.wake),
        });
        self
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Ends the long polls waiting on this queue: for writes that sent messages without
    /// [`Queue::send`].
    pub(super) fn wake_receivers(&self) {
        self.wake.notify_waiters();
    }

    /// The database the queue lives in.
    pub(super) fn db(&self) -> &Db {
        &self.db
    }

    /// The queue's clock.
    pub(super) fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Up to `limit` messages, oldest first, without receiving them: for operators' listings.
    pub async fn peek(&self, limit: usize) -> Result<Vec<QueuedMessage>, QueueError> {
        let name = self.name.clone();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT message_id, body, sent_at, visible_at, receive_count
                     FROM queue_messages WHERE queue = ?1 ORDER BY seq LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![name, limit], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, u32>(4)?,
                    ))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (message_id, body, sent_at, visible_at, receive_count) = row?;
                    out.push(QueuedMessage {
                        message_id,
                        body,
                        sent_at: from_millis(sent_at)?,
                        visible_at: from_millis(visible_at)?,
                        receive_count,
                    });
                }
                Ok(out)
            })
            .await
    }

    /// Deletes every message, visible or not; returns how many went.
    pub async fn purge(&self) -> Result<u64, QueueError> {
        let name = self.name.clone();
        self.db
            .write(move |conn| {
                let n = conn.execute("DELETE FROM queue_messages WHERE queue = ?1", [name])?;
                Ok(n as u64)
            })
            .await
    }

    /// One attempt at receiving: takes up to `max` visible messages in one transaction,
    /// redriving those received too often. When nothing was taken, also says when the next
    /// message becomes visible.
    async fn take(
        &self,
        max: usize,
    ) -> Result<(Vec<ReceivedMessage>, Option<DateTime<Utc>>), QueueError> {
        let name = self.name.clone();
        let redrive = self.redrive.clone();
        let clock = Arc::clone(&self.clock);
        let hide_for = duration_millis(self.visibility_timeout);
        let (taken, next, moved) = self
            .db
            .write(move |tx| {
                // Read the clock once the write lock is held, so that waiting for the lock
                // cannot make a message look visible later than it is.
                let now = to_millis(clock.now());
                // At least a millisecond, so that a taken message is never visible to the next look.
                let hidden_until = now.saturating_add(hide_for.max(1));
                let mut taken = Vec::new();
                let mut moved = 0usize;
                // Redriven messages leave room in the batch, so look again until the batch is
                // full or nothing visible is left. Every row looked at is taken (now hidden) or
                // moved (now in the DLQ), so the next look cannot see it again. Oldest visible
                // first, straight from the (queue, visible_at) index: a long backlog costs a
                // receive nothing, where ordering by `seq` sorted every visible message.
                while taken.len() < max {
                    let want = (max - taken.len()) as i64;
                    let rows = {
                        let mut stmt = tx.prepare_cached(
                            "SELECT seq, message_id, body, sent_at, receive_count
                             FROM queue_messages
                             WHERE queue = ?1 AND visible_at <= ?2
                             ORDER BY visible_at LIMIT ?3",
                        )?;
                        let rows = stmt.query_map(params![name, now, want], |r| {
                            Ok((
                                r.get::<_, i64>(0)?,
                                r.get::<_, String>(1)?,
                                r.get::<_, String>(2)?,
                                r.get::<_, i64>(3)?,
                                r.get::<_, u32>(4)?,
                            ))
                        })?;
                        rows.collect::<Result<Vec<_>, _>>()?
                    };
                    if rows.is_empty() {
                        break;
                    }
                    for (seq, message_id, body, sent_at, count) in rows {
                        if let Some(r) = redrive.as_ref().filter(|r| count >= r.max_receive_count) {
                            tx.prepare_cached(
                                "UPDATE queue_messages SET queue = ?1, receive_count = 0,
                                   visible_at = ?2, receipt_handle = NULL WHERE seq = ?3",
                            )?
                            .execute(params![r.dlq, now, seq])?;
                            moved += 1;
                            continue;
                        }
                        // Time-ordered, like the message ids: see `insert_messages`.
                        let receipt_handle = Uuid::now_v7().simple().to_string();
                        let receive_count = count.saturating_add(1);
                        tx.prepare_cached(
                            "UPDATE queue_messages SET receive_count = ?1, visible_at = ?2,
                               receipt_handle = ?3 WHERE seq = ?4",
                        )?
                        .execute(params![
                            receive_count,
                            hidden_until,
                            receipt_handle,
                            seq
                        ])?;
                        taken.push(ReceivedMessage {
                            message_id,
                            receipt_handle,
                            body,
                            receive_count,
                            sent_at: from_millis(sent_at)?,
                        });
                    }
                }
                let next = if taken.is_empty() {
                    let at: Option<i64> = tx
                        .prepare_cached(
                            "SELECT min(visible_at) FROM queue_messages WHERE queue = ?1",
                        )?
                        .query_row([&name], |r| r.get(0))?;
                    at.map(from_millis).transpose()?
                } else {
                    None
                };
                Ok::<_, QueueError>((taken, next, moved))
            })
            .await?;
        if moved > 0 {
            if let Some(r) = &self.redrive {
                r.wake.notify_waiters();
            }
        }
        Ok((taken, next))
    }

    /// Sets a delivered message's visibility; `InvalidReceipt` if the handle is not the current
    /// one of a message in this queue.
    async fn set_visible_at(
        &self,
        receipt_handle: &str,
        after: Duration,
    ) -> Result<(), QueueError> {
        let name = self.name.clone();
        let handle = receipt_handle.to_owned();
        let clock = Arc::clone(&self.clock);
        let after = duration_millis(after);
        self.db
            .write(move |conn| {
                let visible_at = to_millis(clock.now()).saturating_add(after);
                let n = conn
                    .prepare_cached(
                        "UPDATE queue_messages SET visible_at = ?1
                         WHERE queue = ?2 AND receipt_handle = ?3",
                    )?
                    .execute(params![visible_at, name, handle])?;
                if n == 0 {
                    return Err(QueueError::InvalidReceipt(handle));
                }
                Ok(())
            })
            .await
    }
}

/// Adds a message with a fresh id to queue `name` for each body, visible from `visible_at`.
pub(super) fn insert_messages(
    conn: &rusqlite::Connection,
    name: &str,
    bodies: &[String],
    now: i64,
    visible_at: i64,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO queue_messages (queue, message_id, body, sent_at, visible_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for body in bodies {
        // Time-ordered ids append to their unique index instead of landing on a random page of
        // it: a group commit of many sends then writes a few index pages, not one per message.
        let id = Uuid::now_v7().hyphenated().to_string();
        stmt.execute(params![name, id, body, now, visible_at])?;
    }
    Ok(())
}

#[async_trait]
impl Queue for SqliteQueue {
    async fn send(&self, bodies: &[String], delay: Duration) -> Result<(), QueueError> {
        if bodies.is_empty() {
            return Ok(());
        }
        let name = self.name.clone();
        let bodies = bodies.to_vec();
        let clock = Arc::clone(&self.clock);
        let delay = duration_millis(delay);
        self.db
            .write(move |conn| {
                let now = to_millis(clock.now());
                insert_messages(conn, &name, &bodies, now, now.saturating_add(delay))?;
                Ok::<_, QueueError>(())
            })
            .await?;
        self.wake.notify_waiters();
        Ok(())
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let max = max.clamp(1, MAX_BATCH);
        let start = Instant::now();
        loop {
            // Registered before looking, so that a send between the look and the wait still
            // wakes this receive.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();

            let (taken, next_visible) = self.take(max).await?;
            if !taken.is_empty() {
                return Ok(taken);
            }
            let Some(left) = wait.checked_sub(start.elapsed()).filter(|d| !d.is_zero()) else {
                return Ok(taken);
            };
            let mut nap = left.min(POLL_INTERVAL);
            if let Some(at) = next_visible {
                let until = (at - self.clock.now()).to_std().unwrap_or(Duration::ZERO);
                nap = nap.min(until);
            }
            tokio::select! {
                () = &mut woken => {}
                () = tokio::time::sleep(nap) => {}
            }
        }
    }

    async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError> {
        let name = self.name.clone();
        let handle = receipt_handle.to_owned();
        self.db
            .write(move |conn| {
                let n = conn
                    .prepare_cached(
                        "DELETE FROM queue_messages WHERE queue = ?1 AND receipt_handle = ?2",
                    )?
                    .execute(params![name, handle])?;
                if n == 0 {
                    return Err(QueueError::InvalidReceipt(handle));
                }
                Ok(())
            })
            .await
    }

    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        self.set_visible_at(receipt_handle, timeout).await?;
        self.wake.notify_waiters();
        Ok(())
    }

    async fn depth(&self) -> Result<u64, QueueError> {
        let name = self.name.clone();
        self.db
            .read(move |conn| {
                let n: i64 = conn.query_row(
                    "SELECT count(*) FROM queue_messages WHERE queue = ?1",
                    [name],
                    |r| r.get(0),
                )?;
                Ok(u64::try_from(n).unwrap_or(0))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::local::{LocalBackend, LocalOptions};
    use crate::clock::ManualClock;
    use crate::config::Secret;

    const VISIBILITY: Duration = Duration::from_secs(30);

    fn options(max_receive_count: u32) -> LocalOptions {
        LocalOptions {
            visibility_timeout: VISIBILITY,
            max_receive_count,
            url_signing_secret: Some(Secret::new("test")),
        }
    }

    fn backend(max_receive_count: u32) -> (tempfile::TempDir, ManualClock, LocalBackend) {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::default();
        let local = LocalBackend::open(
            dir.path(),
            &options(max_receive_count),
            Arc::new(clock.clone()),
        )
        .unwrap();
        (dir, clock, local)
    }

    fn bodies(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("m{i}")).collect()
    }

    async fn receive_now(q: &SqliteQueue, max: usize) -> Vec<ReceivedMessage> {
        q.receive(max, Duration::ZERO).await.unwrap()
    }

    #[tokio::test]
    async fn a_received_message_hides_until_its_visibility_timeout_passes() {
        let (_dir, clock, local) = backend(5);
        let q = &local.jobs_queue;
        q.send(&bodies(1), Duration::ZERO).await.unwrap();
        let first = receive_now(q, 10).await;
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].body.as_str(), first[0].receive_count), ("m0", 1));
        assert!(receive_now(q, 10).await.is_empty());

        clock.advance(VISIBILITY - Duration::from_millis(1));
        assert!(receive_now(q, 10).await.is_empty());
        clock.advance(Duration::from_millis(1));
        let second = receive_now(q, 10).await;
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].message_id, first[0].message_id);
        assert_eq!(second[0].receive_count, 2);
        assert_ne!(second[0].receipt_handle, first[0].receipt_handle);

        let old = &first[0].receipt_handle;
        assert!(matches!(
            q.delete(old).await,
            Err(QueueError::InvalidReceipt(_))
        ));
        assert!(matches!(
            q.change_visibility(old, Duration::ZERO).await,
            Err(QueueError::InvalidReceipt(_))
        ));
        assert_eq!(q.depth().await.unwrap(), 1);
        q.delete(&second[0].receipt_handle).await.unwrap();
        assert_eq!(q.depth().await.unwrap(), 0);
        clock.advance(VISIBILITY * 2);
        assert!(receive_now(q, 10).await.is_empty());
        assert!(matches!(
            q.delete(&second[0].receipt_handle).await,
            Err(QueueError::InvalidReceipt(_))
        ));
    }

    #[tokio::test]
    async fn change_visibility_to_zero_redelivers_at_once() {
        let (_dir, _clock, local) = backend(5);
        let q = &local.webhooks_queue;
        q.send(&bodies(1), Duration::ZERO).await.unwrap();
        let m = receive_now(q, 1).await.remove(0);
        q.change_visibility(&m.receipt_handle, Duration::ZERO)
            .await
            .unwrap();
        let again = receive_now(q, 1).await.remove(0);
        assert_eq!((again.message_id, again.receive_count), (m.message_id, 2));
    }

    #[tokio::test]
    async fn messages_received_too_often_move_to_the_dead_letter_queue() {
        let (_dir, clock, local) = backend(2);
        let q = &local.jobs_queue;
        q.send(&bodies(1), Duration::ZERO).await.unwrap();
        let first = receive_now(q, 1).await.remove(0);
        clock.advance(VISIBILITY);
        let second = receive_now(q, 1).await.remove(0);
        assert_eq!(second.receive_count, 2);
        clock.advance(VISIBILITY);
        assert!(receive_now(q, 1).await.is_empty());
        assert_eq!(q.depth().await.unwrap(), 0);
        assert_eq!(local.jobs_dlq.depth().await.unwrap(), 1);
        assert_eq!(local.webhooks_dlq.depth().await.unwrap(), 0);

        let parked = local.jobs_dlq.peek(10).await.unwrap();
        assert_eq!(parked.len(), 1);
        assert_eq!(parked[0].receive_count, 0);
        let dead = receive_now(&local.jobs_dlq, 10).await.remove(0);
        assert_eq!(dead.message_id, first.message_id);
        assert_eq!(dead.body, "m0");
        assert_eq!(dead.receive_count, 1);
        assert_eq!(dead.sent_at, first.sent_at);
        assert!(matches!(
            q.delete(&second.receipt_handle).await,
            Err(QueueError::InvalidReceipt(_))
        ));
        local.jobs_dlq.delete(&dead.receipt_handle).await.unwrap();
    }

    #[tokio::test]
    async fn redriven_messages_leave_room_for_others_in_the_batch() {
        let (_dir, clock, local) = backend(1);
        let q = &local.jobs_queue;
        q.send(&bodies(3), Duration::ZERO).await.unwrap();
        assert_eq!(receive_now(q, 2).await.len(), 2);
        clock.advance(VISIBILITY);
        let got = receive_now(q, 10).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body, "m2");
        assert_eq!(local.jobs_dlq.depth().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn receive_returns_at_most_ten_oldest_first() {
        let (_dir, _clock, local) = backend(5);
        let q = &local.jobs_queue;
        q.send(&bodies(15), Duration::ZERO).await.unwrap();
        let got = receive_now(q, 100).await;
        assert_eq!(
            got.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
            bodies(10)
        );
        assert_eq!(receive_now(q, 0).await.len(), 1);
        assert_eq!(receive_now(q, 10).await.len(), 4);
        assert_eq!(q.depth().await.unwrap(), 15);
    }

    #[tokio::test]
    async fn a_delayed_message_waits_for_its_delay() {
        let (_dir, clock, local) = backend(5);
        let q = &local.jobs_queue;
        q.send(&bodies(1), Duration::from_secs(10)).await.unwrap();
        assert!(receive_now(q, 1).await.is_empty());
        assert_eq!(q.depth().await.unwrap(), 1);
        clock.advance(Duration::from_secs(10));
        assert_eq!(receive_now(q, 1).await.len(), 1);
    }

    #[tokio::test]
    async fn purge_empties_the_queue() {
        let (_dir, _clock, local) = backend(5);
        let q = &local.webhooks_dlq;
        q.send(&bodies(3), Duration::ZERO).await.unwrap();
        assert_eq!(q.purge().await.unwrap(), 3);
        assert_eq!(q.depth().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_long_poll_wakes_when_another_handle_sends() {
        let (dir, clock, local) = backend(5);
        // A second backend on the same directory, as another component of the process would.
        let other = LocalBackend::open(dir.path(), &options(5), Arc::new(clock)).unwrap();
        let receiver = Arc::clone(&local.jobs_queue);
        let started = std::time::Instant::now();
        let poll = tokio::spawn(async move { receiver.receive(10, Duration::from_secs(5)).await });
        // Give the receive time to find the queue empty and start waiting (setup only: the
        // assertion below does not depend on this pause).
        tokio::time::sleep(Duration::from_millis(50)).await;
        other
            .jobs_queue
            .send(&bodies(1), Duration::ZERO)
            .await
            .unwrap();
        let got = poll.await.unwrap().unwrap();
        assert_eq!(got.len(), 1);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_long_poll_on_an_empty_queue_returns_empty_when_the_wait_ends() {
        let (_dir, _clock, local) = backend(5);
        let started = std::time::Instant::now();
        let got = local
            .jobs_queue
            .receive(10, Duration::from_millis(300))
            .await
            .unwrap();
        assert!(got.is_empty());
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2));
    }
}
