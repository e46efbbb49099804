//! The DynamoDB store's idempotency keys, rate windows, in-flight counts and templates, as
//! items of the one table:
//!
//! | item | `pk` | `sk` | other attributes |
//! | --- | --- | --- | --- |
//! | idempotency key | `IDEM#{user id}` | `IDEM#{key}` | `doc` (the record as JSON), `idem_state` (`in_progress`, `completed`), `expires_at` (TTL) |
//! | rate window | `RATE#{user id}` | `RATE#{window start, ms}` | `hits` (N), `expires_at` (TTL) |
//! | template | `TPL#{user id}`, or `TPL#*` for a global one | `TPL#{name}` | `doc` |
//!
//! A key is claimed with a put on `attribute_not_exists(pk) OR expires_at <= now` (TTL deletes
//! lazily, so an expired item may still be there); a rate window counts with an atomic `ADD`
//! on the condition that the count is below the limit. Jobs in flight are counted on the sparse
//! [`IN_FLIGHT_INDEX`] (`Select: COUNT`, keys only), which holds exactly the pending and
//! running jobs because every job write puts the whole item with the attributes its state
//! calls for.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, Select};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};

use super::error_mapping::store_error;
use super::job_store::{decode_doc, encode, n, s, IN_FLIGHT_INDEX, TTL_ATTRIBUTE};
use crate::domain::{IdempotencyKey, IdempotencyRecord, IdempotencyState, Template, UserId};
use crate::ports::{IdempotencyClaim, StoreError};

type Item = HashMap<String, AttributeValue>;

/// How often a claim retries when the item it lost to vanished before it could be read.
const CLAIM_TRIES: usize = 3;

fn idem_key(user: &UserId, key: &IdempotencyKey) -> (AttributeValue, AttributeValue) {
    (
        s(format!("IDEM#{}", user.as_str())),
        s(format!("IDEM#{}", key.as_str())),
    )
}

fn idem_item(record: &IdempotencyRecord) -> Result<Item, StoreError> {
    let (pk, sk) = idem_key(&record.user_id, &record.key);
    let state = match record.state {
        IdempotencyState::InProgress => "in_progress",
        IdempotencyState::Completed { .. } => "completed",
    };
    Ok(Item::from([
        ("pk".to_owned(), pk),
        ("sk".to_owned(), sk),
        ("doc".to_owned(), s(encode(record)?)),
        ("idem_state".to_owned(), s(state)),
        (TTL_ATTRIBUTE.to_owned(), n(record.expires_at.timestamp())),
    ]))
}

fn template_key(owner: Option<&UserId>, name: &str) -> (AttributeValue, AttributeValue) {
    (template_pk(owner), s(format!("TPL#{name}")))
}

fn template_pk(owner: Option<&UserId>) -> AttributeValue {
    // `*` is not a character of user ids, so the global partition is no user's.
    s(format!("TPL#{}", owner.map_or("*", |u| u.as_str())))
}

pub(super) async fn claim_idempotency_key(
    client: &Client,
    table: &str,
    record: &IdempotencyRecord,
    now: DateTime<Utc>,
) -> Result<IdempotencyClaim, StoreError> {
    let item = idem_item(record)?;
    for _ in 0..CLAIM_TRIES {
        let put = client
            .put_item()
            .table_name(table)
            .set_item(Some(item.clone()))
            .condition_expression("attribute_not_exists(pk) OR #ttl <= :now")
            .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
            .expression_attribute_values(":now", n(now.timestamp()))
            .send()
            .await
            .map_err(|e| store_error("PutItem", e));
        match put {
            Ok(_) => return Ok(IdempotencyClaim::Claimed),
            Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
        let (pk, sk) = idem_key(&record.user_id, &record.key);
        let out = client
            .get_item()
            .table_name(table)
            .key("pk", pk)
            .key("sk", sk)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error("GetItem", e))?;
        if let Some(item) = out.item {
            return Ok(IdempotencyClaim::Existing(decode_doc(&item)?));
        }
        // Released between the put and the read: try to claim it again.
    }
    Err(StoreError::Throttled)
}

pub(super) async fn complete_idempotency_key(
    client: &Client,
    table: &str,
    record: &IdempotencyRecord,
) -> Result<(), StoreError> {
    client
        .put_item()
        .table_name(table)
        .set_item(Some(idem_item(record)?))
        .send()
        .await
        .map_err(|e| store_error("PutItem", e))?;
    Ok(())
}

pub(super) async fn release_idempotency_key(
    client: &Client,
    table: &str,
    user: &UserId,
    key: &IdempotencyKey,
) -> Result<(), StoreError> {
    let (pk, sk) = idem_key(user, key);
    let out = client
        .delete_item()
        .table_name(table)
        .key("pk", pk)
        .key("sk", sk)
        .condition_expression("idem_state = :ip")
        .expression_attribute_values(":ip", s("in_progress"))
        .send()
        .await
        .map_err(|e| store_error("DeleteItem", e));
    match out {
        Ok(_) | Err(StoreError::Conflict(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

pub(super) async fn take_rate_token(
    client: &Client,
    table: &str,
    user: &UserId,
    window_start: DateTime<Utc>,
    window: Duration,
    limit: u32,
) -> Result<bool, StoreError> {
    let window_secs = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
    let expires = window_start
        .timestamp()
        .saturating_add(window_secs.saturating_mul(2));
    let out = client
        .update_item()
        .table_name(table)
        .key("pk", s(format!("RATE#{}", user.as_str())))
        .key("sk", s(format!("RATE#{}", window_start.timestamp_millis())))
        .update_expression("ADD hits :one SET #ttl = :exp")
        .condition_expression("attribute_not_exists(hits) OR hits < :limit")
        .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
        .expression_attribute_values(":one", n(1))
        .expression_attribute_values(":exp", n(expires))
        .expression_attribute_values(":limit", n(limit))
        .send()
        .await
        .map_err(|e| store_error("UpdateItem", e));
    match out {
        Ok(_) => Ok(true),
        Err(StoreError::Conflict(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

pub(super) async fn count_in_flight(
    client: &Client,
    table: &str,
    user: &UserId,
    up_to: usize,
) -> Result<usize, StoreError> {
    let mut count = 0usize;
    let mut start = None;
    while count < up_to {
        let missing = i32::try_from(up_to - count).unwrap_or(i32::MAX);
        let out = client
            .query()
            .table_name(table)
            .index_name(IN_FLIGHT_INDEX)
            .key_condition_expression("active_pk = :u")
            .expression_attribute_values(":u", s(user.as_str()))
            .select(Select::Count)
            .limit(missing)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| store_error("Query", e))?;
        count += usize::try_from(out.count).unwrap_or(0);
        match out.last_evaluated_key {
            Some(k) if !k.is_empty() => start = Some(k),
            _ => break,
        }
    }
    Ok(count.min(up_to))
}

pub(super) async fn insert_template(
    client: &Client,
    table: &str,
    t: &Template,
) -> Result<(), StoreError> {
    let (pk, sk) = template_key(t.owner.as_ref(), &t.name);
    let item = Item::from([
        ("pk".to_owned(), pk),
        ("sk".to_owned(), sk),
        ("doc".to_owned(), s(encode(t)?)),
    ]);
    client
        .put_item()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression("attribute_not_exists(pk)")
        .send()
        .await
        .map_err(|e| match store_error("PutItem", e) {
            StoreError::Conflict(_) => {
                StoreError::Conflict(format!("a template named {} already exists", t.name))
            }
            other => other,
        })?;
    Ok(())
}

pub(super) async fn get_template(
    client: &Client,
    table: &str,
    owner: Option<&UserId>,
    name: &str,
) -> Result<Option<Template>, StoreError> {
    let (pk, sk) = template_key(owner, name);
    let out = client
        .get_item()
        .table_name(table)
        .key("pk", pk)
        .key("sk", sk)
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| store_error("GetItem", e))?;
    out.item.map(|i| decode_doc(&i)).transpose()
}

pub(super) async fn list_templates(
    client: &Client,
    table: &str,
    owner: Option<&UserId>,
) -> Result<Vec<Template>, StoreError> {
    let mut found = Vec::new();
    let mut start = None;
    loop {
        let out = client
            .query()
            .table_name(table)
            .key_condition_expression("pk = :p")
            .expression_attribute_values(":p", template_pk(owner))
            .consistent_read(true)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| store_error("Query", e))?;
        for item in out.items() {
            found.push(decode_doc(item)?);
        }
        match out.last_evaluated_key {
            Some(k) if !k.is_empty() => start = Some(k),
            _ => return Ok(found),
        }
    }
}

pub(super) async fn delete_template(
    client: &Client,
    table: &str,
    owner: Option<&UserId>,
    name: &str,
) -> Result<bool, StoreError> {
    let (pk, sk) = template_key(owner, name);
    let out = client
        .delete_item()
        .table_name(table)
        .key("pk", pk)
        .key("sk", sk)
        .return_values(ReturnValue::AllOld)
        .send()
        .await
        .map_err(|e| store_error("DeleteItem", e))?;
    Ok(out.attributes.is_some_and(|a| !a.is_empty()))
}
