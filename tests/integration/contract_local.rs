//! The port contracts against the local adapters.

use std::sync::Arc;
use std::time::Duration;

use kiln_shared::adapters::local::{LocalBackend, LocalOptions};
use kiln_shared::config::Secret;
use kiln_shared::SystemClock;
use kiln_tests::contract::{blob_store_contract, job_store_contract, queue_contract};

fn backend() -> (tempfile::TempDir, LocalBackend) {
    backend_redriving_after(5)
}

fn backend_redriving_after(max_receive_count: u32) -> (tempfile::TempDir, LocalBackend) {
    let dir = tempfile::tempdir().unwrap();
    let opts = LocalOptions {
        visibility_timeout: Duration::from_secs(30),
        max_receive_count,
        url_signing_secret: Some(Secret::new("contract")),
    };
    let local = LocalBackend::open(dir.path(), &opts, Arc::new(SystemClock)).unwrap();
    (dir, local)
}

#[tokio::test]
async fn the_sqlite_job_store_meets_the_contract() {
    let (_dir, local) = backend();
    job_store_contract(local.store).await;
}

#[tokio::test]
async fn the_sqlite_queue_meets_the_contract() {
    let (_dir, local) = backend();
    queue_contract(local.jobs_queue).await;
}

#[tokio::test]
async fn the_file_blob_store_meets_the_contract() {
    let (_dir, local) = backend();
    blob_store_contract(local.blobs).await;
}

/// The suites promise they can share a backend, as they will on a shared AWS account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contracts_can_share_one_backend_at_once() {
    // Suites hand each other's messages back, which counts as receives: a low redrive limit
    // would park messages in the dead-letter queue mid-test.
    let (_dir, local) = backend_redriving_after(1000);
    tokio::join!(
        job_store_contract(local.store.clone()),
        job_store_contract(local.store.clone()),
        queue_contract(local.webhooks_queue.clone()),
        queue_contract(local.webhooks_queue.clone()),
        blob_store_contract(local.blobs.clone()),
        blob_store_contract(local.blobs.clone()),
    );
}
