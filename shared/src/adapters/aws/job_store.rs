//! [`JobStore`] on one DynamoDB table.
//!
//! # Key schema
//!
//! The table's primary key is `pk` (S, partition) and `sk` (S, sort). Items:
//!
//! | item | `pk` | `sk` | other attributes |
//! | --- | --- | --- | --- |
//! | job | `JOB#{job id}` | `JOB` | `doc` (the job as JSON), `status`, `version` (N), `user_id`, `created_at` (RFC 3339), `expires_at` (N, epoch seconds: the table's TTL attribute), `user_pk`, `user_sk`, and while pending only `pending_pk`, `pending_sk` |
//! | API key | `KEY#{hex SHA-256 of the key}` | `KEY` | `doc` (the record as JSON), `key_id`, `user_id`, `created_at`, `keys_pk`, `keys_sk`, `revoked_at` once revoked |
//! | API key id | `KEYID#{key id}` | `KEYID` | `hash`: makes ids unique and finds a key by id in one read |
//!
//! Global secondary indexes (all projecting every attribute, so a query needs no second read):
//!
//! | index | partition | sort | holds |
//! | --- | --- | --- | --- |
//! | [`USER_INDEX`] | `user_pk` = user id | `user_sk` = job id | every job; UUID v7 ids sort by creation time, so a backward query is newest first; `status` is a filter |
//! | [`PENDING_INDEX`] | `pending_pk` = `PENDING` | `pending_sk` = `{created_at ms, 15 digits}#{job id}` | pending jobs only (sparse: every other state's item lacks the attributes), oldest first |
//! | [`KEYS_INDEX`] | `keys_pk` = `KEYS` | `keys_sk` = `{created_at ms, 15 digits}#{key id}` | API keys, for listing them newest first |
//! | [`IN_FLIGHT_INDEX`] | `active_pk` = user id | `active_sk` = job id | a user's pending and running jobs only (sparse, keys only), counted against the cap on jobs in flight |
//!
//! Idempotency keys, rate windows and templates are items of their own, described in
//! `guards.rs`.
//!
//! Every job write is conditional: an insert on `attribute_not_exists(pk)`, an update (a whole
//! item put, which also drops the pending attributes of a job that left `pending`) on
//! `version = job.version - 1`. A failed condition is [`StoreError::Conflict`].
//!
//! Expiry: DynamoDB's TTL deletes jobs after `expires_at` on its own (usually within a day or
//! two) at no cost, so nothing needs to call [`JobStore::delete_expired`] on AWS. It still works,
//! for parity with the local store and for operators, but it is a `Scan`: it reads at most
//! [`MAX_SWEEP_PAGES`] pages of the table per call, so on a large table it finds only part of
//! what TTL would. Until either gets to it, an expired job can still be read, as with the local
//! store before its sweep.
//!
//! Reads of one item are strongly consistent; index queries (listing, stale pending jobs, keys)
//! are eventually consistent, as GSIs always are: a job written a moment ago may be missing from
//! a listing for a moment.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, SecondsFormat, Utc};

use super::error_mapping::{detail, store_error};
use super::guards;
use crate::domain::{
    ApiKeyRecord, Cursor, IdempotencyKey, IdempotencyRecord, Job, JobId, JobStatus, Template,
    UserId,
};
use crate::ports::{IdempotencyClaim, JobPage, JobStore, ListQuery, StoreError};

/// GSI of a user's jobs: `user_pk` (user id) and `user_sk` (job id).
pub const USER_INDEX: &str = "by_user";
/// Sparse GSI of pending jobs: `pending_pk` (`PENDING`) and `pending_sk` (creation time and id).
pub const PENDING_INDEX: &str = "pending";
/// GSI of API keys: `keys_pk` (`KEYS`) and `keys_sk` (creation time and key id).
pub const KEYS_INDEX: &str = "api_keys";
/// Sparse GSI of a user's pending and running jobs: `active_pk` (user id), `active_sk` (job id).
pub const IN_FLIGHT_INDEX: &str = "in_flight";
/// The table's TTL attribute: epoch seconds after which DynamoDB deletes the item.
pub const TTL_ATTRIBUTE: &str = "expires_at";

const JOB_SK: &str = "JOB";
const KEY_SK: &str = "KEY";
const KEY_ID_SK: &str = "KEYID";
const PENDING_PARTITION: &str = "PENDING";
const KEYS_PARTITION: &str = "KEYS";

/// Items one filtered listing query reads: a status filter is applied after the read, so a page
/// larger than the wanted count saves round trips when few jobs match.
const FILTERED_PAGE: i32 = 100;
/// Queries one `list` call may make; past that it returns what it found with a cursor at the
/// last job it looked at, so a user with many non-matching jobs costs a bounded amount per call.
const MAX_LIST_QUERIES: usize = 10;

/// Most items in one `TransactWriteItems` call.
pub const MAX_TRANSACTION: usize = 100;

/// Scan pages (up to 1 MB each) one [`JobStore::delete_expired`] call reads.
pub const MAX_SWEEP_PAGES: usize = 10;

type Item = HashMap<String, AttributeValue>;

/// Jobs and API keys in one DynamoDB table; see the module documentation for its layout.
#[derive(Debug, Clone)]
pub struct DynamoJobStore {
    client: Client,
    table: String,
}

impl DynamoJobStore {
    /// A store over `table`, which must have the layout [`super::create_resources`] makes.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    async fn get_item(&self, pk: String, sk: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error("GetItem", e))?;
        Ok(out.item)
    }

    /// The API key record stored under `hash`, read consistently.
    async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.get_item(key_pk(hash), KEY_SK)
            .await?
            .map(|item| decode_doc(&item))
            .transpose()
    }

    /// Every API key whose id starts with `prefix` (all keys for an empty prefix), newest first,
    /// stopping once `max` are found.
    async fn api_keys_matching(
        &self,
        prefix: &str,
        max: usize,
    ) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let mut found = Vec::new();
        let mut start = None;
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(KEYS_INDEX)
                .key_condition_expression("keys_pk = :p")
                .expression_attribute_values(":p", s(KEYS_PARTITION))
                .scan_index_forward(false)
                .set_exclusive_start_key(start.take());
            if !prefix.is_empty() {
                q = q
                    .filter_expression("begins_with(key_id, :prefix)")
                    .expression_attribute_values(":prefix", s(prefix));
            }
            let out = q.send().await.map_err(|e| store_error("Query", e))?;
            for item in out.items() {
                found.push(decode_doc(item)?);
                if found.len() >= max {
                    return Ok(found);
                }
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(found),
            }
        }
    }
}

pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(super) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn job_pk(id: &JobId) -> String {
    format!("JOB#{id}")
}

fn key_pk(hash: &str) -> String {
    format!("KEY#{hash}")
}

fn key_id_pk(id: &str) -> String {
    format!("KEYID#{id}")
}

/// A sort key that orders by time, then id: fixed-width milliseconds (clamped at the epoch, so
/// the width holds) then the id.
fn time_sort_key(at: DateTime<Utc>, id: &str) -> String {
    format!("{}#{id}", time_prefix(at))
}

fn time_prefix(at: DateTime<Utc>) -> String {
    format!("{:015}", at.timestamp_millis().max(0))
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub(super) fn encode<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Unavailable(format!("cannot encode: {e}")))
}

pub(super) fn decode_doc<T: serde::de::DeserializeOwned>(item: &Item) -> Result<T, StoreError> {
    let doc = item
        .get("doc")
        .and_then(|v| v.as_s().ok())
        .ok_or_else(|| StoreError::Unavailable("stored item has no `doc` attribute".into()))?;
    serde_json::from_str(doc)
        .map_err(|e| StoreError::Unavailable(format!("stored document is unreadable: {e}")))
}

/// The item of a job, with the index attributes its state calls for.
fn job_item(job: &Job) -> Result<Item, StoreError> {
    let id = job.id.to_string();
    let mut item = Item::from([
        ("pk".to_owned(), s(job_pk(&job.id))),
        ("sk".to_owned(), s(JOB_SK)),
        ("doc".to_owned(), s(encode(job)?)),
        ("status".to_owned(), s(job.status.as_str())),
        ("version".to_owned(), n(job.version)),
        ("user_id".to_owned(), s(job.user_id.as_str())),
        ("created_at".to_owned(), s(rfc3339(job.created_at))),
        (TTL_ATTRIBUTE.to_owned(), n(job.expires_at.timestamp())),
        ("user_pk".to_owned(), s(job.user_id.as_str())),
        ("user_sk".to_owned(), s(id.clone())),
    ]);
    if matches!(job.status, JobStatus::Pending | JobStatus::Running) {
        item.insert("active_pk".into(), s(job.user_id.as_str()));
        item.insert("active_sk".into(), s(id.clone()));
    }
    if job.status == JobStatus::Pending {
        item.insert("pending_pk".into(), s(PENDING_PARTITION));
        item.insert("pending_sk".into(), s(time_sort_key(job.created_at, &id)));
    }
    Ok(item)
}

fn api_key_item(record: &ApiKeyRecord) -> Result<Item, StoreError> {
    let mut item = Item::from([
        ("pk".to_owned(), s(key_pk(&record.hash))),
        ("sk".to_owned(), s(KEY_SK)),
        ("doc".to_owned(), s(encode(record)?)),
        ("key_id".to_owned(), s(&record.id)),
        ("user_id".to_owned(), s(record.user_id.as_str())),
        ("created_at".to_owned(), s(rfc3339(record.created_at))),
        ("keys_pk".to_owned(), s(KEYS_PARTITION)),
        (
            "keys_sk".to_owned(),
            s(time_sort_key(record.created_at, &record.id)),
        ),
    ]);
    if let Some(at) = record.revoked_at {
        item.insert("revoked_at".into(), s(rfc3339(at)));
    }
    Ok(item)
}

/// Whether a canceled transaction failed on a condition, on load, or on something else.
fn transaction_error(
    op: &str,
    err: SdkError<TransactWriteItemsError, aws_sdk_dynamodb::config::http::HttpResponse>,
) -> StoreError {
    if let Some(TransactWriteItemsError::TransactionCanceledException(e)) = err.as_service_error() {
        let codes: Vec<&str> = e
            .cancellation_reasons()
            .iter()
            .filter_map(|r| r.code())
            .collect();
        let message = e.message().unwrap_or_default();
        if codes.contains(&"ConditionalCheckFailed") || message.contains("ConditionalCheckFailed") {
            return StoreError::Conflict(format!("{op}: an item with that key already exists"));
        }
        if codes
            .iter()
            .any(|c| matches!(*c, "ThrottlingError" | "TransactionConflict"))
        {
            return StoreError::Throttled;
        }
        return StoreError::Unavailable(format!("{op}: {}", detail(&err)));
    }
    store_error(op, err)
}

#[async_trait]
impl JobStore for DynamoJobStore {
    async fn insert(&self, job: &Job) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(job_item(job)?))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(|e| match store_error("PutItem", e) {
                StoreError::Conflict(_) => {
                    StoreError::Conflict(format!("job {} already exists", job.id))
                }
                other => other,
            })?;
        Ok(())
    }

    async fn get(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        self.get_item(job_pk(id), JOB_SK)
            .await?
            .map(|item| decode_doc(&item))
            .transpose()
    }

    async fn update(&self, job: &Job) -> Result<(), StoreError> {
        let Some(expected) = job.version.checked_sub(1) else {
            return Err(StoreError::Conflict(format!(
                "job {} at version 0 has no previous version to replace",
                job.id
            )));
        };
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(job_item(job)?))
            .condition_expression("attribute_exists(pk) AND version = :expected")
            .expression_attribute_values(":expected", n(expected))
            .send()
            .await
            .map_err(|e| match store_error("PutItem", e) {
                StoreError::Conflict(_) => StoreError::Conflict(format!(
                    "job {} is missing or no longer at version {expected}",
                    job.id
                )),
                other => other,
            })?;
        Ok(())
    }

    async fn list(&self, user: &UserId, query: &ListQuery) -> Result<JobPage, StoreError> {
        // A page of zero would report "no more" while there are; one is the least useful page.
        let limit = query.limit.max(1);
        // One job more than asked says whether there is a next page.
        let want = limit.saturating_add(1);
        let mut jobs: Vec<Job> = Vec::new();
        let mut start = None;
        for _ in 0..MAX_LIST_QUERIES {
            let missing = i32::try_from(want - jobs.len()).unwrap_or(i32::MAX);
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(USER_INDEX)
                .scan_index_forward(false)
                .expression_attribute_values(":u", s(user.as_str()))
                .set_exclusive_start_key(start.take());
            q = match &query.cursor {
                Some(c) => q
                    .key_condition_expression("user_pk = :u AND user_sk < :before")
                    .expression_attribute_values(":before", s(c.before.to_string())),
                None => q.key_condition_expression("user_pk = :u"),
            };
            q = match query.status {
                // `Limit` counts items read before the filter, so read more than are missing.
                Some(status) => q
                    .filter_expression("#status = :status")
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_values(":status", s(status.as_str()))
                    .limit(missing.max(FILTERED_PAGE)),
                None => q.limit(missing),
            };
            let out = q.send().await.map_err(|e| store_error("Query", e))?;
            for item in out.items() {
                jobs.push(decode_doc(item)?);
                if jobs.len() == want {
                    jobs.truncate(limit);
                    let next = jobs.last().map(|j| Cursor { before: j.id });
                    return Ok(JobPage { jobs, next });
                }
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(JobPage { jobs, next: None }),
            }
        }
        // Out of budget with the index not exhausted: resume after the last job looked at. Every
        // job returned is newer than it, so the next page neither repeats nor skips one.
        let next = start
            .as_ref()
            .and_then(|k| k.get("user_sk"))
            .and_then(|v| v.as_s().ok())
            .and_then(|id| id.parse::<JobId>().ok())
            .map(|before| Cursor { before })
            .or_else(|| jobs.last().map(|j| Cursor { before: j.id }));
        Ok(JobPage { jobs, next })
    }

    async fn stale_pending(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let mut jobs = Vec::new();
        let mut start = None;
        while jobs.len() < limit {
            let missing = i32::try_from(limit - jobs.len()).unwrap_or(i32::MAX);
            // `{ms}#{id}` < `{before ms}` exactly when ms < before ms: same width, and a string
            // sorts after its own prefix.
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(PENDING_INDEX)
                .key_condition_expression("pending_pk = :p AND pending_sk < :before")
                .expression_attribute_values(":p", s(PENDING_PARTITION))
                .expression_attribute_values(":before", s(time_prefix(before)))
                .scan_index_forward(true)
                .limit(missing)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| store_error("Query", e))?;
            for item in out.items() {
                jobs.push(decode_doc(item)?);
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        jobs.truncate(limit);
        Ok(jobs)
    }

    /// A bounded `Scan` for jobs past `expires_at`, each deleted on the condition that it is
    /// still expired; DynamoDB's TTL does the same for free, see the module documentation.
    async fn delete_expired(&self, now: DateTime<Utc>, limit: usize) -> Result<usize, StoreError> {
        let mut deleted = 0;
        let mut start = None;
        for _ in 0..MAX_SWEEP_PAGES {
            if deleted >= limit {
                break;
            }
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("sk = :job AND #ttl < :now")
                .projection_expression("pk, sk")
                .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
                .expression_attribute_values(":job", s(JOB_SK))
                .expression_attribute_values(":now", n(now.timestamp()))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| store_error("Scan", e))?;
            for item in out.items() {
                if deleted >= limit {
                    break;
                }
                let (Some(pk), Some(sk)) = (item.get("pk"), item.get("sk")) else {
                    continue;
                };
                let gone = self
                    .client
                    .delete_item()
                    .table_name(&self.table)
                    .key("pk", pk.clone())
                    .key("sk", sk.clone())
                    // A job whose expiry moved since the scan read it stays.
                    .condition_expression("#ttl < :now")
                    .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
                    .expression_attribute_values(":now", n(now.timestamp()))
                    .send()
                    .await
                    .map_err(|e| store_error("DeleteItem", e));
                match gone {
                    Ok(_) => deleted += 1,
                    Err(StoreError::Conflict(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(deleted)
    }

    async fn insert_api_key(&self, record: &ApiKeyRecord) -> Result<(), StoreError> {
        // Neither the id nor the hash may repeat: a repeated hash would make the key authenticate
        // as whichever record a lookup happened to find, a repeated id would make revoking
        // ambiguous. One transaction writes both items or neither.
        let key = Put::builder()
            .table_name(&self.table)
            .set_item(Some(api_key_item(record)?))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(|e| StoreError::Unavailable(format!("TransactWriteItems: {e}")))?;
        let id = Put::builder()
            .table_name(&self.table)
            .item("pk", s(key_id_pk(&record.id)))
            .item("sk", s(KEY_ID_SK))
            .item("hash", s(&record.hash))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(|e| StoreError::Unavailable(format!("TransactWriteItems: {e}")))?;
        self.client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(key).build())
            .transact_items(TransactWriteItem::builder().put(id).build())
            .send()
            .await
            .map_err(|e| match transaction_error("TransactWriteItems", e) {
                StoreError::Conflict(_) => StoreError::Conflict(format!(
                    "an API key with id {} or the same hash already exists",
                    record.id
                )),
                other => other,
            })?;
        Ok(())
    }

    async fn find_api_key(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.api_key_by_hash(hash).await
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.api_keys_matching("", usize::MAX).await
    }

    async fn revoke_api_key(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        if id.is_empty() {
            // An empty prefix would match every key; it names none.
            return Ok(None);
        }
        let exact = self
            .get_item(key_id_pk(id), KEY_ID_SK)
            .await?
            .and_then(|item| item.get("hash").and_then(|h| h.as_s().ok()).cloned());
        let hash = match exact {
            Some(hash) => hash,
            None => {
                let matches = self.api_keys_matching(id, 2).await?;
                match matches.as_slice() {
                    [] => return Ok(None),
                    [one] => one.hash.clone(),
                    _ => {
                        return Err(StoreError::Conflict(format!(
                            "key id prefix {id:?} matches more than one key; give more of it"
                        )))
                    }
                }
            }
        };
        let Some(mut record) = self.api_key_by_hash(&hash).await? else {
            return Ok(None);
        };
        // Revoking twice keeps the first revocation time.
        if record.revoked_at.is_some() {
            return Ok(Some(record));
        }
        record.revoked_at = Some(now);
        let written = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(key_pk(&hash)))
            .key("sk", s(KEY_SK))
            .update_expression("SET doc = :doc, revoked_at = :at")
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(revoked_at)")
            .expression_attribute_values(":doc", s(encode(&record)?))
            .expression_attribute_values(":at", s(rfc3339(now)))
            .send()
            .await
            .map_err(|e| store_error("UpdateItem", e));
        match written {
            Ok(_) => Ok(Some(record)),
            // Revoked by someone else meanwhile: theirs is the first revocation.
            Err(StoreError::Conflict(_)) => self.api_key_by_hash(&hash).await,
            Err(e) => Err(e),
        }
    }

    /// One `TransactWriteItems` per [`MAX_TRANSACTION`] jobs, each put conditional on the id
    /// being new: a chunk is stored whole or not at all, so the count of stored jobs is exact.
    async fn insert_many(&self, jobs: &[Job]) -> Result<(), (usize, StoreError)> {
        let mut stored = 0;
        for chunk in jobs.chunks(MAX_TRANSACTION) {
            let mut request = self.client.transact_write_items();
            for job in chunk {
                let put = Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(job_item(job).map_err(|e| (stored, e))?))
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .map_err(|e| {
                        (
                            stored,
                            StoreError::Unavailable(format!("TransactWriteItems: {e}")),
                        )
                    })?;
                request = request.transact_items(TransactWriteItem::builder().put(put).build());
            }
            request
                .send()
                .await
                .map_err(|e| (stored, transaction_error("TransactWriteItems", e)))?;
            stored += chunk.len();
        }
        Ok(())
    }

    async fn claim_idempotency_key(
        &self,
        record: &IdempotencyRecord,
        now: DateTime<Utc>,
    ) -> Result<IdempotencyClaim, StoreError> {
        guards::claim_idempotency_key(&self.client, &self.table, record, now).await
    }

    async fn complete_idempotency_key(&self, record: &IdempotencyRecord) -> Result<(), StoreError> {
        guards::complete_idempotency_key(&self.client, &self.table, record).await
    }

    async fn release_idempotency_key(
        &self,
        user: &UserId,
        key: &IdempotencyKey,
    ) -> Result<(), StoreError> {
        guards::release_idempotency_key(&self.client, &self.table, user, key).await
    }

    async fn take_rate_token(
        &self,
        user: &UserId,
        window_start: DateTime<Utc>,
        window: std::time::Duration,
        limit: u32,
    ) -> Result<bool, StoreError> {
        guards::take_rate_token(&self.client, &self.table, user, window_start, window, limit).await
    }

    async fn count_in_flight(&self, user: &UserId, up_to: usize) -> Result<usize, StoreError> {
        guards::count_in_flight(&self.client, &self.table, user, up_to).await
    }

    async fn insert_template(&self, template: &Template) -> Result<(), StoreError> {
        guards::insert_template(&self.client, &self.table, template).await
    }

    async fn get_template(
        &self,
        owner: Option<&UserId>,
        name: &str,
    ) -> Result<Option<Template>, StoreError> {
        guards::get_template(&self.client, &self.table, owner, name).await
    }

    async fn list_templates(&self, owner: Option<&UserId>) -> Result<Vec<Template>, StoreError> {
        guards::list_templates(&self.client, &self.table, owner).await
    }

    async fn delete_template(
        &self,
        owner: Option<&UserId>,
        name: &str,
    ) -> Result<bool, StoreError> {
        guards::delete_template(&self.client, &self.table, owner, name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_sort_keys_order_by_time_then_id_and_exclude_the_bound() {
        let t = DateTime::<Utc>::from_timestamp_millis(1_700_000_000_123).unwrap();
        let earlier = time_sort_key(t - chrono::Duration::milliseconds(1), "z");
        let at = time_sort_key(t, "a");
        assert!(earlier < time_prefix(t));
        assert!(
            at > time_prefix(t),
            "a job created at the bound is not before it"
        );
        assert!(time_sort_key(t, "a") < time_sort_key(t, "b"));
        let before_epoch = DateTime::<Utc>::from_timestamp_millis(-5).unwrap();
        assert_eq!(time_prefix(before_epoch), "000000000000000");
    }
}
