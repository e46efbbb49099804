//! The port contracts against the AWS adapters on a moto server, and what only SQS and S3 do:
//! redrive to the dead-letter queue, batches over ten, presigned URLs.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use kiln_shared::adapters::aws::{create_resources, AwsBackend, ResourceNames};
use kiln_shared::clock::SystemClock;
use kiln_shared::ports::{Queue, QueueError};
use kiln_tests::contract::{blob_store_contract, job_store_contract, queue_contract};
use kiln_tests::moto::moto;

#[tokio::test]
async fn the_dynamodb_job_store_meets_the_contract() {
    let aws = moto().await.fresh(&[]).await;
    job_store_contract(aws.backend.store).await;
}

#[tokio::test]
async fn the_sqs_queue_meets_the_contract() {
    let aws = moto().await.fresh(&[]).await;
    queue_contract(aws.backend.jobs_queue).await;
}

#[tokio::test]
async fn the_s3_blob_store_meets_the_contract() {
    let aws = moto().await.fresh(&[]).await;
    blob_store_contract(aws.backend.blobs).await;
}

/// The suites promise they can share a backend, as they will on a shared AWS account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contracts_can_share_one_set_of_resources_at_once() {
    // Each queue suite hands the other's messages back, which counts as a receive: with the
    // default redrive policy they would reach the dead-letter queue mid-test, as on SQS.
    let aws = moto()
        .await
        .fresh(&[("KILN_MAX_RECEIVE_COUNT", "1000")])
        .await;
    let b = &aws.backend;
    tokio::join!(
        job_store_contract(b.store.clone()),
        job_store_contract(b.store.clone()),
        queue_contract(b.webhooks_queue.clone()),
        queue_contract(b.webhooks_queue.clone()),
        blob_store_contract(b.blobs.clone()),
        blob_store_contract(b.blobs.clone()),
    );
}

/// Receives from `queue` until a message arrives or `within` passes.
async fn receive_one(
    queue: &dyn Queue,
    within: Duration,
) -> Option<kiln_shared::ports::ReceivedMessage> {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        let mut got = queue.receive(1, Duration::from_secs(1)).await.unwrap();
        if let Some(m) = got.pop() {
            return Some(m);
        }
    }
    None
}

#[tokio::test]
async fn a_message_received_max_receive_count_times_goes_to_the_dead_letter_queue() {
    let aws = moto().await.fresh(&[("KILN_MAX_RECEIVE_COUNT", "2")]).await;
    let (queue, dlq) = (&aws.backend.jobs_queue, &aws.backend.jobs_dlq);
    queue
        .send(&["doomed".to_owned()], Duration::ZERO)
        .await
        .unwrap();
    for count in 1..=2 {
        let m = receive_one(&**queue, Duration::from_secs(10))
            .await
            .expect("delivered while under maxReceiveCount");
        assert_eq!(m.body, "doomed");
        assert_eq!(m.receive_count, count);
        // A worker that fails hands the message back at once.
        queue
            .change_visibility(&m.receipt_handle, Duration::ZERO)
            .await
            .unwrap();
    }
    assert!(
        receive_one(&**queue, Duration::from_secs(2))
            .await
            .is_none(),
        "a third delivery went past the redrive policy"
    );
    let dead = receive_one(&**dlq, Duration::from_secs(10))
        .await
        .expect("the message is in the dead-letter queue");
    assert_eq!(dead.body, "doomed");
    dlq.delete(&dead.receipt_handle).await.unwrap();
    assert_eq!(queue.depth().await.unwrap(), 0);
}

#[tokio::test]
async fn twenty_five_messages_go_out_in_batches_of_ten_and_all_arrive() {
    let aws = moto().await.fresh(&[]).await;
    let queue = &aws.backend.jobs_queue;
    let bodies: Vec<String> = (0..25).map(|i| format!("m{i}")).collect();
    queue.send(&bodies, Duration::ZERO).await.unwrap();
    assert_eq!(queue.depth().await.unwrap(), 25);
    let mut got = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < 25 && tokio::time::Instant::now() < deadline {
        let batch = queue.receive(10, Duration::from_secs(1)).await.unwrap();
        assert!(batch.len() <= 10);
        for m in batch {
            queue.delete(&m.receipt_handle).await.unwrap();
            assert!(got.insert(m.body), "delivered twice");
        }
    }
    assert_eq!(got, bodies.into_iter().collect());
}

#[tokio::test]
async fn a_batch_sqs_refuses_is_reported_by_index_and_the_rest_is_sent() {
    let aws = moto().await.fresh(&[]).await;
    let queue = &aws.backend.jobs_queue;
    let mut bodies: Vec<String> = (0..25).map(|i| format!("m{i}")).collect();
    // Over SQS's 1 MiB: the second call of ten is refused whole.
    bodies[13] = "x".repeat(1024 * 1024 + 1);
    match queue.send(&bodies, Duration::ZERO).await {
        Err(QueueError::PartialSend { failed, reason }) => {
            assert_eq!(failed, (10..20).collect::<Vec<_>>(), "{reason}");
        }
        other => panic!("expected a partial send, got {other:?}"),
    }
    assert_eq!(queue.depth().await.unwrap(), 15);
}

#[tokio::test]
async fn a_presigned_url_downloads_the_object_with_a_plain_client() {
    let aws = moto().await.fresh(&[]).await;
    let blobs = &aws.backend.blobs;
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    blobs
        .put("images/u/j/0.png", bytes.clone(), "image/png")
        .await
        .unwrap();
    let url = blobs
        .signed_url("images/u/j/0.png", Duration::from_secs(300))
        .await
        .unwrap();
    assert!(url.starts_with(moto().await.endpoint()), "{url}");
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let res = reqwest::get(&url).await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(
        res.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("image/png")
    );
    assert_eq!(res.bytes().await.unwrap().as_ref(), bytes.as_slice());
}

#[tokio::test]
async fn creating_the_resources_again_finds_the_same_ones() {
    let moto = moto().await;
    let aws = moto.fresh(&[]).await;
    let names = ResourceNames {
        table: aws.resources.table.clone(),
        jobs_queue: aws.resources.table.clone() + "-jobs",
        jobs_dlq: aws.resources.table.clone() + "-jobs-dlq",
        webhooks_queue: aws.resources.table.clone() + "-webhooks",
        webhooks_dlq: aws.resources.table.clone() + "-webhooks-dlq",
        bucket: aws.resources.bucket.clone(),
    };
    assert_eq!(names, ResourceNames::with_prefix(&aws.resources.table));
    // Other queue settings than the first time: the queues are kept and updated.
    let mut settings = aws.settings.clone();
    settings.max_receive_count += 1;
    let again = create_resources(&aws.clients, &names, &settings)
        .await
        .unwrap();
    assert_eq!(again, aws.resources);
}

#[tokio::test]
async fn the_backend_connects_through_settings_and_overrides() {
    let moto = moto().await;
    let aws = moto.fresh(&[]).await;
    let backend = AwsBackend::connect_with(&aws.settings, &moto.overrides())
        .await
        .unwrap();
    let services = backend.into_services(Arc::new(SystemClock));
    assert!(services.url_signer.is_none());
    assert_eq!(services.jobs_dlq.depth().await.unwrap(), 0);
    services
        .blobs
        .put("a/b.png", vec![1], "image/png")
        .await
        .unwrap();
    assert_eq!(
        aws.backend
            .blobs
            .get("a/b.png")
            .await
            .unwrap()
            .unwrap()
            .bytes,
        [1]
    );
}
