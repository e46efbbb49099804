//! The local feed: receives job messages from a queue, runs them through the batch processor,
//! deletes what is done and brings the rest back soon, and sweeps the store now and then.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use kiln_shared::ports::{JobMessage, Queue, QueueError, ReceivedMessage};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::worker::Worker;

/// Most messages one receive asks for (the SQS limit).
const MAX_BATCH: usize = 10;
/// How long one receive waits for a first message.
const LONG_POLL: Duration = Duration::from_secs(20);
/// Pause after the queue failed, before receiving again.
const QUEUE_ERROR_PAUSE: Duration = Duration::from_secs(1);
/// Longest delay before a failed message is visible again.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
/// How often the store is swept.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// A pending job older than this with no run is assumed never to have been enqueued.
pub const STALE_PENDING_AFTER: Duration = Duration::from_secs(5 * 60);
/// Pending jobs re-enqueued per sweep.
const SWEEP_REQUEUE_LIMIT: usize = 100;
/// Expired jobs deleted per sweep.
const SWEEP_DELETE_LIMIT: usize = 500;

/// Runs job messages from `queue` with at most `concurrency` jobs in flight, and sweeps the
/// store every minute, until `shutdown` turns `true` (or its sender goes away). Jobs already
/// running are finished before it returns.
pub async fn run_pool(worker: Arc<Worker>, queue: Arc<dyn Queue>, shutdown: watch::Receiver<bool>) {
    let sweeper = tokio::spawn(sweep_loop(
        Arc::clone(&worker),
        Arc::clone(&queue),
        shutdown.clone(),
    ));
    let mut stop = shutdown;
    let slots = Arc::new(Semaphore::new(worker.config().concurrency.max(1)));
    let mut batches = JoinSet::new();
    info!(
        concurrency = worker.config().concurrency,
        "worker pool started"
    );
    loop {
        let first = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = stopped(&mut stop) => break,
        };
        let mut permits = vec![first];
        while permits.len() < MAX_BATCH {
            match Arc::clone(&slots).try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        // Dropping a receive in flight at shutdown only delays its messages by one visibility
        // timeout; the queue keeps them.
        let received = tokio::select! {
            r = queue.receive(permits.len(), LONG_POLL) => r,
            () = stopped(&mut stop) => break,
        };
        while batches.try_join_next().is_some() {}
        let messages = match received {
            Ok(m) if m.is_empty() => continue,
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "could not receive job messages");
                drop(permits);
                tokio::select! {
                    () = tokio::time::sleep(QUEUE_ERROR_PAUSE) => continue,
                    () = stopped(&mut stop) => break,
                }
            }
        };
        permits.truncate(messages.len());
        let (worker, queue) = (Arc::clone(&worker), Arc::clone(&queue));
        batches.spawn(async move {
            settle(&worker, &*queue, messages).await;
            drop(permits);
        });
    }
    info!(in_flight = batches.len(), "worker pool stopping");
    while batches.join_next().await.is_some() {}
    if let Err(e) = sweeper.await {
        warn!(error = %e, "sweeper ended abnormally");
    }
    info!("worker pool stopped");
}

/// Resolves once shutdown is asked for, or the sender is gone.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Runs a batch and settles each message with the queue: done ones are deleted, the others made
/// visible again after a short backoff so local retries are prompt.
async fn settle(worker: &Worker, queue: &dyn Queue, messages: Vec<ReceivedMessage>) {
    let deadline = Instant::now() + worker.config().job_timeout;
    let handles: Vec<(String, String, u32)> = messages
        .iter()
        .map(|m| {
            (
                m.message_id.clone(),
                m.receipt_handle.clone(),
                m.receive_count,
            )
        })
        .collect();
    let failed: HashSet<String> = worker
        .process_batch(messages, deadline)
        .await
        .into_iter()
        .collect();
    // Settled together, so that the local queue commits them in one group and SQS takes them
    // in parallel.
    let settles = handles.into_iter().map(|(id, receipt, receive_count)| {
        let retry = failed.contains(&id);
        async move {
            let settled = if retry {
                queue
                    .change_visibility(&receipt, retry_delay(receive_count))
                    .await
            } else {
                queue.delete(&receipt).await
            };
            if let Err(e) = settled {
                // The message comes back after its visibility timeout; the job store decides
                // then.
                warn!(message_id = %id, error = %e, "could not settle a job message");
            }
        }
    });
    futures::future::join_all(settles).await;
}

/// `2^receive_count` seconds, at most [`MAX_RETRY_DELAY`].
pub fn retry_delay(receive_count: u32) -> Duration {
    Duration::from_secs(1u64 << receive_count.min(6)).min(MAX_RETRY_DELAY)
}

async fn sweep_loop(worker: Arc<Worker>, queue: Arc<dyn Queue>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = stopped(&mut stop) => return,
        }
        sweep(&worker, &*queue).await;
    }
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Stale pending jobs whose message was sent again.
    pub requeued: usize,
    /// Expired jobs deleted.
    pub expired: usize,
}

/// Repairs submits that crashed between writing the job and enqueueing it (pending jobs older
/// than [`STALE_PENDING_AFTER`] get a new message; a duplicate is harmless, the store decides)
/// and deletes expired jobs. Failures are logged; the next sweep tries again.
pub async fn sweep(worker: &Worker, queue: &dyn Queue) -> SweepReport {
    let mut report = SweepReport::default();
    let now = worker.clock().now();
    let before = chrono::Duration::from_std(STALE_PENDING_AFTER)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(now);
    match worker
        .store()
        .stale_pending(before, SWEEP_REQUEUE_LIMIT)
        .await
    {
        Ok(jobs) if !jobs.is_empty() => {
            let bodies: Vec<String> = jobs
                .iter()
                .map(|j| JobMessage { job_id: j.id }.encode())
                .collect();
            match queue.send(&bodies, Duration::ZERO).await {
                Ok(()) => report.requeued = bodies.len(),
                Err(QueueError::PartialSend { failed, reason }) => {
                    warn!(failed = failed.len(), %reason, "could not re-enqueue some stale pending jobs");
                    report.requeued = bodies.len().saturating_sub(failed.len());
                }
                Err(e) => warn!(error = %e, "could not re-enqueue stale pending jobs"),
            }
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "could not list stale pending jobs"),
    }
    match worker.store().delete_expired(now, SWEEP_DELETE_LIMIT).await {
        Ok(n) => report.expired = n,
        Err(e) => warn!(error = %e, "could not delete expired jobs"),
    }
    if report != SweepReport::default() {
        info!(
            requeued = report.requeued,
            expired = report.expired,
            "store swept"
        );
    }
    report
}
