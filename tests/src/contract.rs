//! Port contract tests, written once and run against every adapter.
//!
//! Each suite takes a port as a trait object and asserts only what every adapter promises (for
//! the queue: what SQS itself does). Suites use ids, users and keys unique to the run, so several
//! may share one backend, also at the same time; the queue suite puts back any message that is
//! not its own.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kiln_shared::domain::{ApiKeyRecord, Job, JobStatus, NewJob, SubmitJob, Tier, UserId};
use kiln_shared::ports::{
    BlobError, BlobStore, JobStore, ListQuery, Queue, QueueError, ReceivedMessage, StoreError,
};
use tokio::time::Instant;

/// A short id unique to this run of a suite.
fn run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

fn user(run: &str, name: &str) -> UserId {
    UserId::parse(&format!("contract-{run}-{name}")).expect("the test user id is valid")
}

fn new_job(user: &UserId, now: DateTime<Utc>) -> Job {
    let (request, metadata) = SubmitJob {
        prompt: Some("a contract".into()),
        ..Default::default()
    }
    .validate()
    .expect("the test request is valid");
    Job::new(
        NewJob {
            user_id: user.clone(),
            tier: Tier::Standard,
            request,
            webhook: None,
            metadata,
        },
        now,
        Duration::from_secs(24 * 3600),
    )
}

/// Everything [`JobStore`] promises: conditional writes, paging, sweeps and API keys.
pub async fn job_store_contract(store: Arc<dyn JobStore>) {
    jobs_are_inserted_once_and_updated_by_version(&*store).await;
    concurrent_updates_from_one_version_let_exactly_one_win(&store).await;
    lists_page_newest_first_per_user(&*store).await;
    stale_pending_and_expired_jobs_are_found(&*store).await;
    api_keys_are_stored_found_and_revoked(&*store).await;
    idempotency_keys_are_claimed_once(&store).await;
    rate_windows_count_atomically(&store).await;
    jobs_in_flight_are_counted(&*store).await;
    templates_are_stored_per_owner(&*store).await;
    batches_are_stored_whole(&*store).await;
}

async fn batches_are_stored_whole(store: &dyn JobStore) {
    let run = run_id();
    let u = user(&run, "batch");
    let now = Utc::now();
    let jobs: Vec<Job> = (0..100).map(|_| new_job(&u, now)).collect();
    store.insert_many(&jobs).await.map_err(|(_, e)| e).unwrap();
    assert_eq!(store.count_in_flight(&u, 1000).await.unwrap(), 100);
    // A batch holding an existing id stores none of its jobs.
    let v = user(&run, "dup");
    let mut dup: Vec<Job> = (0..3).map(|_| new_job(&v, now)).collect();
    dup[2] = jobs[0].clone();
    match store.insert_many(&dup).await {
        Err((0, StoreError::Conflict(_))) => {}
        other => panic!("expected a conflict with none stored, got {other:?}"),
    }
    assert_eq!(store.get(&dup[0].id).await.unwrap(), None);
}

async fn idempotency_keys_are_claimed_once(store: &Arc<dyn JobStore>) {
    use kiln_shared::domain::{IdempotencyKey, IdempotencyRecord, IdempotencyState, ItemOutcome};
    use kiln_shared::ports::IdempotencyClaim;
    let run = run_id();
    let alice = user(&run, "alice");
    let key = IdempotencyKey::parse("order 1").unwrap();
    let now = Utc::now();
    let record = IdempotencyRecord::claim(alice.clone(), key.clone(), "h1".into(), now);
    let claims = futures::future::join_all((0..10).map(|_| {
        let store = Arc::clone(store);
        let record = record.clone();
        async move { store.claim_idempotency_key(&record, now).await.unwrap() }
    }))
    .await;
    let won = claims
        .iter()
        .filter(|c| **c == IdempotencyClaim::Claimed)
        .count();
    assert_eq!(won, 1, "exactly one concurrent claim wins");
    // Another user's identical key is theirs.
    let bob = IdempotencyRecord::claim(user(&run, "bob"), key.clone(), "h2".into(), now);
    assert_eq!(
        store.claim_idempotency_key(&bob, now).await.unwrap(),
        IdempotencyClaim::Claimed
    );

    let mut done = record.clone();
    done.state = IdempotencyState::Completed {
        items: vec![ItemOutcome::Job {
            id: kiln_shared::domain::JobId::new(),
        }],
    };
    store.complete_idempotency_key(&done).await.unwrap();
    // A completed key is not released, and is found as completed.
    store.release_idempotency_key(&alice, &key).await.unwrap();
    assert_eq!(
        store.claim_idempotency_key(&record, now).await.unwrap(),
        IdempotencyClaim::Existing(done.clone())
    );
    // Past its expiry it may be claimed anew.
    let later = done.expires_at + chrono::Duration::seconds(1);
    let fresh = IdempotencyRecord::claim(alice.clone(), key.clone(), "h3".into(), later);
    assert_eq!(
        store.claim_idempotency_key(&fresh, later).await.unwrap(),
        IdempotencyClaim::Claimed
    );
    // An in-progress claim released is free again.
    store.release_idempotency_key(&alice, &key).await.unwrap();
    assert_eq!(
        store.claim_idempotency_key(&fresh, later).await.unwrap(),
        IdempotencyClaim::Claimed
    );
}

async fn rate_windows_count_atomically(store: &Arc<dyn JobStore>) {
    let run = run_id();
    let u = user(&run, "rate");
    let start = Utc::now();
    let window = Duration::from_secs(60);
    let taken = futures::future::join_all((0..12).map(|_| {
        let store = Arc::clone(store);
        let u = u.clone();
        async move { store.take_rate_token(&u, start, window, 5).await.unwrap() }
    }))
    .await;
    assert_eq!(taken.iter().filter(|t| **t).count(), 5);
    // The next window starts empty; another user has a budget of their own.
    let next = start + chrono::Duration::seconds(60);
    assert!(store.take_rate_token(&u, next, window, 5).await.unwrap());
    assert!(store
        .take_rate_token(&user(&run, "other"), start, window, 1)
        .await
        .unwrap());
}

async fn jobs_in_flight_are_counted(store: &dyn JobStore) {
    let run = run_id();
    let u = user(&run, "busy");
    let now = Utc::now();
    let jobs: Vec<Job> = (0..4).map(|_| new_job(&u, now)).collect();
    store.insert_many(&jobs).await.map_err(|(_, e)| e).unwrap();
    let running = jobs[1].claim(now, Duration::from_secs(60)).unwrap();
    store.update(&running).await.unwrap();
    let canceled = jobs[2].cancel(now).unwrap();
    store.update(&canceled).await.unwrap();
    assert_eq!(store.count_in_flight(&u, 100).await.unwrap(), 3);
    assert_eq!(store.count_in_flight(&u, 2).await.unwrap(), 2);
    assert_eq!(
        store
            .count_in_flight(&user(&run, "idle"), 100)
            .await
            .unwrap(),
        0
    );
}

async fn templates_are_stored_per_owner(store: &dyn JobStore) {
    use kiln_shared::domain::NewTemplate;
    let run = run_id();
    let u = user(&run, "tpl");
    let make = |name: &str, owner: Option<UserId>| {
        NewTemplate {
            name: Some(name.into()),
            style: Some(format!("{name} style")),
            ..Default::default()
        }
        .validate(owner, Utc::now())
        .unwrap()
    };
    let mine = make("b-mine", Some(u.clone()));
    store
        .insert_template(&make("a-mine", Some(u.clone())))
        .await
        .unwrap();
    store.insert_template(&mine).await.unwrap();
    assert!(matches!(
        store.insert_template(&mine).await,
        Err(StoreError::Conflict(_))
    ));
    let global_name = format!("g-{run}");
    store
        .insert_template(&make(&global_name, None))
        .await
        .unwrap();
    assert_eq!(
        store.get_template(Some(&u), "b-mine").await.unwrap(),
        Some(mine.clone())
    );
    assert_eq!(store.get_template(None, "b-mine").await.unwrap(), None);
    assert_eq!(
        store
            .get_template(Some(&user(&run, "x")), "b-mine")
            .await
            .unwrap(),
        None
    );
    let names: Vec<String> = store
        .list_templates(Some(&u))
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["a-mine", "b-mine"]);
    assert!(store
        .list_templates(None)
        .await
        .unwrap()
        .iter()
        .any(|t| t.name == global_name));
    assert!(store.delete_template(Some(&u), "b-mine").await.unwrap());
    assert!(!store.delete_template(Some(&u), "b-mine").await.unwrap());
    assert!(store.delete_template(None, &global_name).await.unwrap());
}

async fn jobs_are_inserted_once_and_updated_by_version(store: &dyn JobStore) {
    let run = run_id();
    let now = Utc::now();
    let job = new_job(&user(&run, "a"), now);
    assert!(store.get(&job.id).await.unwrap().is_none());
    store.insert(&job).await.unwrap();
    assert_eq!(store.get(&job.id).await.unwrap().as_ref(), Some(&job));

    let mut other = job.clone();
    other.cost_usd = 1.0;
    assert!(
        matches!(store.insert(&other).await, Err(StoreError::Conflict(_))),
        "a second insert with the same id must conflict"
    );
    assert_eq!(store.get(&job.id).await.unwrap().as_ref(), Some(&job));

    let canceled = job.cancel(now).unwrap();
    store.update(&canceled).await.unwrap();
    assert_eq!(store.get(&job.id).await.unwrap(), Some(canceled.clone()));
    // The same change again is a stale write now.
    assert!(matches!(
        store.update(&canceled).await,
        Err(StoreError::Conflict(_))
    ));
    let mut skipped = canceled.clone();
    skipped.version += 2;
    assert!(matches!(
        store.update(&skipped).await,
        Err(StoreError::Conflict(_))
    ));
    let missing = new_job(&user(&run, "a"), now).cancel(now).unwrap();
    assert!(matches!(
        store.update(&missing).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(store.get(&missing.id).await.unwrap().is_none());
}

async fn concurrent_updates_from_one_version_let_exactly_one_win(store: &Arc<dyn JobStore>) {
    let run = run_id();
    let now = Utc::now();
    for _ in 0..5 {
        let job = new_job(&user(&run, "race"), now);
        store.insert(&job).await.unwrap();
        // Two workers claim the same version: each gets its own lease token.
        let a = job.claim(now, Duration::from_secs(60)).unwrap();
        let b = job.claim(now, Duration::from_secs(60)).unwrap();
        assert_ne!(a, b);
        let write = |j: Job| {
            let store = Arc::clone(store);
            tokio::spawn(async move { store.update(&j).await })
        };
        let (ra, rb) = (write(a.clone()), write(b.clone()));
        let (ra, rb) = (ra.await.unwrap(), rb.await.unwrap());
        let winner = match (ra, rb) {
            (Ok(()), Err(StoreError::Conflict(_))) => a,
            (Err(StoreError::Conflict(_)), Ok(())) => b,
            other => panic!("exactly one writer must win, the other conflict: {other:?}"),
        };
        assert_eq!(store.get(&job.id).await.unwrap(), Some(winner));
    }
}

async fn lists_page_newest_first_per_user(store: &dyn JobStore) {
    let run = run_id();
    let now = Utc::now();
    let (alice, bob) = (user(&run, "alice"), user(&run, "bob"));
    let mut jobs = Vec::new();
    for _ in 0..25 {
        let job = new_job(&alice, now);
        store.insert(&job).await.unwrap();
        jobs.push(job);
    }
    let bobs = new_job(&bob, now);
    store.insert(&bobs).await.unwrap();

    let mut newest_first: Vec<_> = jobs.iter().map(|j| j.id).collect();
    newest_first.sort();
    newest_first.reverse();

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut cursor = None;
    loop {
        let query = ListQuery {
            status: None,
            limit: 10,
            cursor,
        };
        let page = store.list(&alice, &query).await.unwrap();
        sizes.push(page.jobs.len());
        seen.extend(page.jobs.iter().map(|j| j.id));
        assert!(page.jobs.iter().all(|j| j.user_id == alice));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(sizes.len() < 10, "paging does not end");
    }
    assert_eq!(sizes, [10, 10, 5]);
    assert_eq!(seen, newest_first, "newest first, each job once");

    // A page that holds everything has no next page.
    let all = ListQuery {
        limit: 100,
        ..Default::default()
    };
    let page = store.list(&alice, &all).await.unwrap();
    assert_eq!(page.jobs.len(), 25);
    assert!(page.next.is_none());
    assert_eq!(page.jobs[0], jobs[24]);

    let page = store.list(&bob, &all).await.unwrap();
    assert_eq!(page.jobs, vec![bobs.clone()]);

    for i in [3, 11, 20] {
        store.update(&jobs[i].cancel(now).unwrap()).await.unwrap();
    }
    let canceled = ListQuery {
        status: Some(JobStatus::Canceled),
        limit: 2,
        cursor: None,
    };
    let first = store.list(&alice, &canceled).await.unwrap();
    let ids: Vec<_> = first.jobs.iter().map(|j| j.id).collect();
    assert_eq!(ids, [jobs[20].id, jobs[11].id]);
    let rest = ListQuery {
        cursor: first.next,
        ..canceled
    };
    let second = store.list(&alice, &rest).await.unwrap();
    let ids: Vec<_> = second.jobs.iter().map(|j| j.id).collect();
    assert_eq!(ids, [jobs[3].id]);
    assert!(second.next.is_none());
    assert!(second.jobs.iter().all(|j| j.status == JobStatus::Canceled));

    let pending = ListQuery {
        status: Some(JobStatus::Pending),
        ..all
    };
    assert_eq!(store.list(&alice, &pending).await.unwrap().jobs.len(), 22);
    let nobody = user(&run, "nobody");
    let page = store.list(&nobody, &all).await.unwrap();
    assert!(page.jobs.is_empty() && page.next.is_none());
}

async fn stale_pending_and_expired_jobs_are_found(store: &dyn JobStore) {
    let run = run_id();
    let now = Utc::now();
    let hours = |h: i64| chrono::Duration::hours(h);
    let owner = user(&run, "sweep");
    let stale = new_job(&owner, now - hours(2));
    let fresh = new_job(&owner, now);
    let running = new_job(&owner, now - hours(2))
        .claim(now, Duration::from_secs(60))
        .unwrap();
    // Not pending: a suite sharing the backend may sweep it away at any moment.
    let mut expired = new_job(&owner, now - hours(3)).cancel(now).unwrap();
    expired.expires_at = now - chrono::Duration::minutes(1);
    for job in [&stale, &fresh, &running, &expired] {
        store.insert(job).await.unwrap();
    }

    let found = store.stale_pending(now - hours(1), 1000).await.unwrap();
    let ours: Vec<_> = found.iter().filter(|j| j.user_id == owner).collect();
    assert_eq!(ours, [&stale], "pending only");
    assert!(found.iter().all(|j| j.status == JobStatus::Pending));
    assert!(found.windows(2).all(|w| w[0].created_at <= w[1].created_at));

    // How many went is not checked: a suite sharing the backend may have swept this one.
    store.delete_expired(now, 1000).await.unwrap();
    assert!(store.get(&expired.id).await.unwrap().is_none());
    for job in [&stale, &fresh, &running] {
        assert!(store.get(&job.id).await.unwrap().is_some());
    }
}

async fn api_keys_are_stored_found_and_revoked(store: &dyn JobStore) {
    let run = run_id();
    let now = Utc::now();
    let owner = user(&run, "keys");
    let issue = |id: String, at: DateTime<Utc>| {
        let (key, mut record) = ApiKeyRecord::issue(owner.clone(), Tier::Vip, at);
        record.id = id;
        (key, record)
    };
    let (older_key, older) = issue(format!("{run}a1"), now - chrono::Duration::seconds(1));
    let (_, newer) = issue(format!("{run}a2"), now);
    let (_, lone) = issue(format!("{run}b7"), now);
    for record in [&older, &newer, &lone] {
        store.insert_api_key(record).await.unwrap();
    }

    assert_eq!(
        store
            .find_api_key(&older_key.hash())
            .await
            .unwrap()
            .as_ref(),
        Some(&older)
    );
    assert!(store.find_api_key(&"0".repeat(64)).await.unwrap().is_none());

    let listed: Vec<_> = store
        .list_api_keys()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.user_id == owner)
        .collect();
    assert_eq!(listed.len(), 3);
    let pos = |id: &str| listed.iter().position(|r| r.id == id).unwrap();
    assert!(pos(&newer.id) < pos(&older.id), "newest first");

    assert!(
        matches!(
            store.revoke_api_key(&format!("{run}a"), now).await,
            Err(StoreError::Conflict(_))
        ),
        "a prefix of two keys is ambiguous"
    );
    assert!(store
        .revoke_api_key(&format!("{run}zz"), now)
        .await
        .unwrap()
        .is_none());

    let revoked = store.revoke_api_key(&older.id, now).await.unwrap().unwrap();
    assert_eq!(revoked.id, older.id);
    assert_eq!(revoked.revoked_at, Some(now));
    assert!(!revoked.is_active());
    let found = store.find_api_key(&older.hash).await.unwrap().unwrap();
    assert!(!found.is_active());
    assert!(store
        .find_api_key(&newer.hash)
        .await
        .unwrap()
        .unwrap()
        .is_active());

    let by_prefix = store
        .revoke_api_key(&format!("{run}b"), now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_prefix.id, lone.id);
}

/// What [`Queue`] promises that SQS also does: delivery, redelivery after a visibility change
/// with a new receipt handle and a higher receive count, deletion, batches of at most ten.
///
/// The queue may hold other messages; they are handed back at once, which counts as a receive,
/// so a queue shared with other suites should not redrive after only a few receives.
pub async fn queue_contract(queue: Arc<dyn Queue>) {
    let run = run_id();
    let ours = |i: usize| format!("contract-{run}-{i}");
    let bodies: Vec<String> = (0..3).map(ours).collect();
    queue.send(&bodies, Duration::ZERO).await.unwrap();

    let first = receive_ours(&*queue, &run, 3).await;
    let got: HashSet<_> = first.iter().map(|m| m.body.clone()).collect();
    assert_eq!(got, bodies.iter().cloned().collect());
    // At least one: another suite sharing the queue may have received one of ours and put it
    // back first.
    assert!(first.iter().all(|m| m.receive_count >= 1));
    let ids: HashSet<_> = first.iter().map(|m| m.message_id.clone()).collect();
    assert_eq!(ids.len(), 3, "each message has its own id");
    queue.depth().await.unwrap();

    // Made visible again, a message comes back with a new handle and a higher count.
    let m = &first[0];
    queue
        .change_visibility(&m.receipt_handle, Duration::ZERO)
        .await
        .unwrap();
    let again = receive_ours(&*queue, &run, 1).await.remove(0);
    assert_eq!(again.message_id, m.message_id);
    assert_eq!(again.body, m.body);
    assert!(again.receive_count > m.receive_count);
    assert_ne!(again.receipt_handle, m.receipt_handle);

    queue.delete(&again.receipt_handle).await.unwrap();
    for m in &first[1..] {
        queue.delete(&m.receipt_handle).await.unwrap();
    }
    // SQS accepts a repeated delete; the local queue calls the handle invalid. Either is fine,
    // but nothing else is.
    match queue.delete(&again.receipt_handle).await {
        Ok(()) | Err(QueueError::InvalidReceipt(_)) => {}
        Err(e) => panic!("a repeated delete failed with {e}"),
    }
    let after = receive_until(&*queue, &run, Duration::from_secs(1)).await;
    assert!(after.is_empty(), "deleted messages came back: {after:?}");

    // A receive returns at most ten, however many wait.
    let many: Vec<String> = (100..112).map(ours).collect();
    queue.send(&many, Duration::ZERO).await.unwrap();
    let all = receive_ours(&*queue, &run, many.len()).await;
    let got: HashSet<_> = all.iter().map(|m| m.body.clone()).collect();
    assert_eq!(got, many.iter().cloned().collect());
    for m in &all {
        queue.delete(&m.receipt_handle).await.unwrap();
    }
}

/// How long a suite waits for its own messages before calling them lost.
const RECEIVE_DEADLINE: Duration = Duration::from_secs(20);

/// Receives until `n` of this run's messages arrived; fails after [`RECEIVE_DEADLINE`].
async fn receive_ours(queue: &dyn Queue, run: &str, n: usize) -> Vec<ReceivedMessage> {
    let got = receive_until_count(queue, run, RECEIVE_DEADLINE, n).await;
    assert_eq!(
        got.len(),
        n,
        "expected {n} messages of run {run}, got {}: {got:?}",
        got.len()
    );
    got
}

/// This run's messages received within `within`.
async fn receive_until(queue: &dyn Queue, run: &str, within: Duration) -> Vec<ReceivedMessage> {
    receive_until_count(queue, run, within, usize::MAX).await
}

async fn receive_until_count(
    queue: &dyn Queue,
    run: &str,
    within: Duration,
    n: usize,
) -> Vec<ReceivedMessage> {
    let prefix = format!("contract-{run}-");
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let batch = queue
            .receive(10, left.min(Duration::from_secs(1)))
            .await
            .unwrap();
        assert!(batch.len() <= 10, "a receive returned {}", batch.len());
        for m in batch {
            if m.body.starts_with(&prefix) {
                got.push(m);
            } else {
                // Another suite's message: hand it straight back.
                queue
                    .change_visibility(&m.receipt_handle, Duration::ZERO)
                    .await
                    .unwrap();
            }
        }
    }
    got
}

/// What [`BlobStore`] promises: whole-object put, get, overwrite and delete, key checks, URLs.
pub async fn blob_store_contract(blobs: Arc<dyn BlobStore>) {
    let run = run_id();
    let png = format!("contract/{run}/0.png");
    let jpg = format!("contract/{run}/1.jpg");

    assert!(blobs.get(&png).await.unwrap().is_none());
    blobs.put(&png, vec![1, 2, 3], "image/png").await.unwrap();
    blobs.put(&jpg, vec![9; 1000], "image/jpeg").await.unwrap();
    let blob = blobs.get(&png).await.unwrap().unwrap();
    assert_eq!(blob.bytes, [1, 2, 3]);
    assert_eq!(blob.content_type, "image/png");
    let blob = blobs.get(&jpg).await.unwrap().unwrap();
    assert_eq!(blob.bytes, vec![9; 1000]);
    assert_eq!(blob.content_type, "image/jpeg");

    blobs.put(&png, vec![4, 5], "image/png").await.unwrap();
    assert_eq!(blobs.get(&png).await.unwrap().unwrap().bytes, [4, 5]);

    let url = blobs
        .signed_url(&png, Duration::from_secs(300))
        .await
        .unwrap();
    assert!(
        url.starts_with('/') || url.starts_with("http"),
        "not a URL: {url}"
    );
    assert!(url.contains(&run), "the URL names the object: {url}");

    blobs.delete(&png).await.unwrap();
    assert!(blobs.get(&png).await.unwrap().is_none());
    blobs.delete(&png).await.unwrap();
    assert!(blobs.get(&jpg).await.unwrap().is_some());
    blobs.delete(&jpg).await.unwrap();

    for bad in ["", "../escape.png", "/absolute.png", "a/../../b.png"] {
        assert!(
            matches!(
                blobs.put(bad, vec![0], "image/png").await,
                Err(BlobError::InvalidKey(_))
            ),
            "{bad:?} was accepted"
        );
        assert!(
            matches!(blobs.get(bad).await, Err(BlobError::InvalidKey(_))),
            "{bad:?} was accepted"
        );
    }
}
