//! [`Intake`]: how a submit makes its jobs durable and runnable: the pending jobs stored, and a
//! message on the jobs queue for each.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{JobMessage, JobStore, Queue, StoreError};
use crate::domain::Job;

/// Most messages one [`Queue::send`] carries (the SQS batch limit).
const SEND_BATCH: usize = 10;

/// Stores new pending jobs and enqueues a [`JobMessage`] for each.
#[async_trait]
pub trait Intake: Send + Sync + 'static {
    /// Stores `jobs` (all or none, where the store can) and enqueues their ids. `Err` carries
    /// how many were stored before the failure. A stored job whose message could not be sent
    /// is still `Ok`: the worker pool's sweeper enqueues pending jobs that sat too long.
    async fn accept(&self, jobs: &[Job]) -> Result<(), (usize, StoreError)>;
}

/// The [`Intake`] of stores and queues that cannot write together (DynamoDB and SQS): the jobs
/// are stored, then sent in batches. A crash between the two leaves pending jobs that the sweeper
/// enqueues later.
pub struct StoreThenEnqueue {
    store: Arc<dyn JobStore>,
    queue: Arc<dyn Queue>,
}

impl StoreThenEnqueue {
    /// Stores into `store`, then sends to `queue`.
    pub fn new(store: Arc<dyn JobStore>, queue: Arc<dyn Queue>) -> Self {
        Self { store, queue }
    }
}

#[async_trait]
impl Intake for StoreThenEnqueue {
    async fn accept(&self, jobs: &[Job]) -> Result<(), (usize, StoreError)> {
        let stored = self.store.insert_many(jobs).await;
        let n = match &stored {
            Ok(()) => jobs.len(),
            Err((n, _)) => *n,
        };
        for chunk in jobs[..n].chunks(SEND_BATCH) {
            let bodies: Vec<String> = chunk
                .iter()
                .map(|j| JobMessage { job_id: j.id }.encode())
                .collect();
            if let Err(e) = self.queue.send(&bodies, Duration::ZERO).await {
                let ids: Vec<String> = chunk.iter().map(|j| j.id.to_string()).collect();
                tracing::warn!(
                    error = %e,
                    job_ids = ?ids,
                    "enqueue failed; the jobs are stored and the sweeper will enqueue them"
                );
            }
        }
        stored
    }
}

#[cfg(all(test, feature = "local"))]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::adapters::local::{Db, SqliteJobStore};
    use crate::ports::{QueueError, ReceivedMessage};

    /// A queue whose every call fails.
    struct Down;

    #[async_trait]
    impl Queue for Down {
        async fn send(&self, _: &[String], _: Duration) -> Result<(), QueueError> {
            Err(QueueError::Unavailable("down".into()))
        }
        async fn receive(&self, _: usize, _: Duration) -> Result<Vec<ReceivedMessage>, QueueError> {
            Err(QueueError::Unavailable("down".into()))
        }
        async fn delete(&self, _: &str) -> Result<(), QueueError> {
            Err(QueueError::Unavailable("down".into()))
        }
        async fn change_visibility(&self, _: &str, _: Duration) -> Result<(), QueueError> {
            Err(QueueError::Unavailable("down".into()))
        }
        async fn depth(&self) -> Result<u64, QueueError> {
            Err(QueueError::Unavailable("down".into()))
        }
    }

    #[tokio::test]
    async fn a_failed_send_still_accepts_the_stored_jobs_for_the_sweeper() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteJobStore::new(
            Db::open(&dir.path().join("kiln.db")).unwrap(),
        ));
        let intake = StoreThenEnqueue::new(store.clone(), Arc::new(Down));
        let jobs: Vec<Job> = (0..12).map(|_| Job::sample("u", Utc::now())).collect();
        intake.accept(&jobs).await.unwrap();
        let later = Utc::now() + chrono::Duration::minutes(1);
        let pending = store.stale_pending(later, 100).await.unwrap();
        assert_eq!(pending.len(), 12, "every job is stored and pending");
    }
}
