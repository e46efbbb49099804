//! The local store's idempotency keys, rate windows, in-flight counts and templates. Each
//! check-and-write runs inside one write of the writer thread (a savepoint of its group's
//! `IMMEDIATE` transaction), so it holds across processes sharing the file.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};

use super::db::{duration_millis, to_millis, Db};
use crate::domain::{IdempotencyKey, IdempotencyRecord, JobStatus, Template, UserId};
use crate::ports::{IdempotencyClaim, StoreError};

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Unavailable(format!("cannot encode: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(doc: &str) -> Result<T, StoreError> {
    serde_json::from_str(doc)
        .map_err(|e| StoreError::Unavailable(format!("stored document is unreadable: {e}")))
}

fn owner_col(owner: Option<&UserId>) -> String {
    owner.map(|u| u.to_string()).unwrap_or_default()
}

pub(super) async fn claim_idempotency_key(
    db: &Db,
    record: &IdempotencyRecord,
    now: DateTime<Utc>,
) -> Result<IdempotencyClaim, StoreError> {
    let doc = to_json(record)?;
    let (user, key) = (record.user_id.to_string(), record.key.as_str().to_owned());
    let (expires, now) = (to_millis(record.expires_at), to_millis(now));
    let existing = db
        .write(move |conn| {
            // One statement: inserts, or replaces an expired record, or changes nothing.
            let n = conn.execute(
                "INSERT INTO idempotency_keys (user_id, key, expires_at, doc) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user_id, key) DO UPDATE SET expires_at = ?3, doc = ?4
                 WHERE idempotency_keys.expires_at <= ?5",
                params![user, key, expires, doc, now],
            )?;
            if n == 1 {
                return Ok::<_, StoreError>(None);
            }
            Ok(conn
                .prepare_cached("SELECT doc FROM idempotency_keys WHERE user_id = ?1 AND key = ?2")?
                .query_row(params![user, key], |r| r.get::<_, String>(0))
                .optional()?)
        })
        .await?;
    match existing {
        None => Ok(IdempotencyClaim::Claimed),
        Some(doc) => Ok(IdempotencyClaim::Existing(from_json(&doc)?)),
    }
}

pub(super) async fn complete_idempotency_key(
    db: &Db,
    record: &IdempotencyRecord,
) -> Result<(), StoreError> {
    let doc = to_json(record)?;
    let (user, key) = (record.user_id.to_string(), record.key.as_str().to_owned());
    let expires = to_millis(record.expires_at);
    db.write(move |conn| {
        conn.execute(
            "UPDATE idempotency_keys SET doc = ?3, expires_at = ?4 WHERE user_id = ?1 AND key = ?2",
            params![user, key, doc, expires],
        )?;
        Ok(())
    })
    .await
}

pub(super) async fn release_idempotency_key(
    db: &Db,
    user: &UserId,
    key: &IdempotencyKey,
) -> Result<(), StoreError> {
    let (user, key) = (user.to_string(), key.as_str().to_owned());
    db.write(move |conn| {
        conn.execute(
            "DELETE FROM idempotency_keys WHERE user_id = ?1 AND key = ?2
               AND json_extract(doc, '$.state.state') = 'in_progress'",
            params![user, key],
        )?;
        Ok(())
    })
    .await
}

pub(super) async fn take_rate_token(
    db: &Db,
    user: &UserId,
    window_start: DateTime<Utc>,
    window: Duration,
    limit: u32,
) -> Result<bool, StoreError> {
    let user = user.to_string();
    let start = to_millis(window_start);
    // Kept one window past its end, then swept by the next request of the same user.
    let expires = start.saturating_add(duration_millis(window).saturating_mul(2));
    db.write(move |conn| {
        conn.prepare_cached("DELETE FROM rate_windows WHERE user_id = ?1 AND expires_at < ?2")?
            .execute(params![user, start])?;
        let n = conn
            .prepare_cached(
                "INSERT INTO rate_windows (user_id, window_start, count, expires_at)
                 VALUES (?1, ?2, 1, ?3)
                 ON CONFLICT (user_id, window_start) DO UPDATE SET count = count + 1
                 WHERE rate_windows.count < ?4",
            )?
            .execute(params![user, start, expires, limit])?;
        Ok(n == 1)
    })
    .await
}

pub(super) async fn count_in_flight(
    db: &Db,
    user: &UserId,
    up_to: usize,
) -> Result<usize, StoreError> {
    let user = user.to_string();
    let up_to = i64::try_from(up_to).unwrap_or(i64::MAX);
    db.read(move |conn| {
        let n: i64 = conn
            .prepare_cached(
                "SELECT COUNT(*) FROM (SELECT 1 FROM jobs
                 WHERE user_id = ?1 AND status IN (?2, ?3) LIMIT ?4)",
            )?
            .query_row(
                params![
                    user,
                    JobStatus::Pending.as_str(),
                    JobStatus::Running.as_str(),
                    up_to
                ],
                |r| r.get(0),
            )?;
        Ok(usize::try_from(n).unwrap_or(0))
    })
    .await
}

pub(super) async fn insert_template(db: &Db, t: &Template) -> Result<(), StoreError> {
    let doc = to_json(t)?;
    let (owner, name) = (owner_col(t.owner.as_ref()), t.name.clone());
    db.write(move |conn| {
        let n = conn.execute(
            "INSERT INTO templates (owner, name, doc) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            params![owner, name, doc],
        )?;
        if n == 0 {
            return Err(StoreError::Conflict(format!(
                "a template named {name} already exists"
            )));
        }
        Ok(())
    })
    .await
}

pub(super) async fn get_template(
    db: &Db,
    owner: Option<&UserId>,
    name: &str,
) -> Result<Option<Template>, StoreError> {
    let (owner, name) = (owner_col(owner), name.to_owned());
    let doc = db
        .read(move |conn| {
            Ok::<_, StoreError>(
                conn.prepare_cached("SELECT doc FROM templates WHERE owner = ?1 AND name = ?2")?
                    .query_row(params![owner, name], |r| r.get::<_, String>(0))
                    .optional()?,
            )
        })
        .await?;
    doc.map(|d| from_json(&d)).transpose()
}

pub(super) async fn list_templates(
    db: &Db,
    owner: Option<&UserId>,
) -> Result<Vec<Template>, StoreError> {
    let owner = owner_col(owner);
    let docs = db
        .read(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT doc FROM templates WHERE owner = ?1 ORDER BY name")?;
            let rows = stmt.query_map([owner], |r| r.get::<_, String>(0))?;
            Ok::<Vec<String>, StoreError>(rows.collect::<Result<_, _>>()?)
        })
        .await?;
    docs.iter().map(|d| from_json(d)).collect()
}

pub(super) async fn delete_template(
    db: &Db,
    owner: Option<&UserId>,
    name: &str,
) -> Result<bool, StoreError> {
    let (owner, name) = (owner_col(owner), name.to_owned());
    db.write(move |conn| {
        Ok(conn.execute(
            "DELETE FROM templates WHERE owner = ?1 AND name = ?2",
            params![owner, name],
        )? == 1)
    })
    .await
}

/// Deletes idempotency keys past their expiry.
pub(super) async fn delete_expired_keys(db: &Db, now: DateTime<Utc>) -> Result<(), StoreError> {
    let now = to_millis(now);
    db.write(move |conn| {
        conn.execute(
            "DELETE FROM idempotency_keys WHERE expires_at <= ?1",
            params![now],
        )?;
        Ok(())
    })
    .await
}
