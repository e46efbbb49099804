//! The local [`Intake`]: jobs and their queue messages live in one database, so a submit writes
//! both in one transaction: either the job is stored and queued, or neither.

use std::sync::Arc;

use async_trait::async_trait;

use super::db::to_millis;
use super::job_store::JobRow;
use super::queue::{insert_messages, SqliteQueue};
use crate::domain::Job;
use crate::ports::{Intake, JobMessage, StoreError};

/// Stores jobs and enqueues them on the jobs queue in one write, in the queue's database.
#[derive(Debug)]
pub struct SqliteIntake {
    queue: Arc<SqliteQueue>,
}

impl SqliteIntake {
    /// Stores into the database of `queue`, and enqueues on it.
    pub fn new(queue: Arc<SqliteQueue>) -> Self {
        Self { queue }
    }
}

#[async_trait]
impl Intake for SqliteIntake {
    async fn accept(&self, jobs: &[Job]) -> Result<(), (usize, StoreError)> {
        if jobs.is_empty() {
            return Ok(());
        }
        let rows = JobRow::of_all(jobs).map_err(|e| (0, e))?;
        let bodies: Vec<String> = jobs
            .iter()
            .map(|j| JobMessage { job_id: j.id }.encode())
            .collect();
        let name = self.queue.name().to_owned();
        let clock = Arc::clone(self.queue.clock());
        self.queue
            .db()
            .write(move |conn| {
                JobRow::insert_all(conn, &rows)?;
                let now = to_millis(clock.now());
                insert_messages(conn, &name, &bodies, now, now)?;
                Ok(())
            })
            .await
            .map_err(|e| (0, e))?;
        self.queue.wake_receivers();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::Utc;

    use super::*;
    use crate::adapters::local::{LocalBackend, LocalOptions};
    use crate::config::Secret;
    use crate::ports::{JobStore, Queue};
    use crate::SystemClock;

    fn backend() -> (tempfile::TempDir, LocalBackend) {
        let dir = tempfile::tempdir().unwrap();
        let opts = LocalOptions {
            visibility_timeout: Duration::from_secs(30),
            max_receive_count: 5,
            url_signing_secret: Some(Secret::new("test")),
        };
        let b = LocalBackend::open(dir.path(), &opts, Arc::new(SystemClock)).unwrap();
        (dir, b)
    }

    #[tokio::test]
    async fn stores_and_queues_together_and_wakes_a_waiting_receive() {
        let (_dir, b) = backend();
        let jobs = [Job::sample("u", Utc::now()), Job::sample("u", Utc::now())];
        let queue = Arc::clone(&b.jobs_queue);
        let waiting = tokio::spawn(async move { queue.receive(10, Duration::from_secs(20)).await });
        tokio::task::yield_now().await;
        b.intake.accept(&jobs).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the send woke the receive")
            .unwrap()
            .unwrap();
        let mut ids: Vec<_> = got
            .iter()
            .map(|m| JobMessage::decode(&m.body).unwrap().job_id)
            .collect();
        ids.sort();
        let mut want: Vec<_> = jobs.iter().map(|j| j.id).collect();
        want.sort();
        assert_eq!(ids, want);
        for job in &jobs {
            assert!(b.store.get(&job.id).await.unwrap().is_some());
        }
    }

    #[tokio::test]
    async fn a_conflict_keeps_neither_the_jobs_nor_their_messages() {
        let (_dir, b) = backend();
        let old = Job::sample("u", Utc::now());
        b.store.insert(&old).await.unwrap();
        let fresh = Job::sample("u", Utc::now());
        let err = b.intake.accept(&[fresh.clone(), old]).await.unwrap_err();
        assert_eq!(err.0, 0);
        assert!(matches!(err.1, StoreError::Conflict(_)), "{:?}", err.1);
        assert!(b.store.get(&fresh.id).await.unwrap().is_none());
        assert_eq!(b.jobs_queue.depth().await.unwrap(), 0);
    }
}
