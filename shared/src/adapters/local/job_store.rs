//! [`JobStore`] on SQLite: each job is a JSON document next to the columns queries filter on.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::db::{to_millis, Db};
use super::guards;
use crate::domain::{
    ApiKeyRecord, Cursor, IdempotencyKey, IdempotencyRecord, Job, JobId, JobStatus, Template,
    UserId,
};
use crate::ports::{IdempotencyClaim, JobPage, JobStore, ListQuery, StoreError};

/// Jobs and API keys in the local SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteJobStore {
    db: Db,
}

impl SqliteJobStore {
    /// A store over an opened database.
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Unavailable(format!("cannot encode: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(doc: &str) -> Result<T, StoreError> {
    serde_json::from_str(doc)
        .map_err(|e| StoreError::Unavailable(format!("stored document is unreadable: {e}")))
}

/// A new job as its `jobs` row, encoded before it reaches the writer thread.
pub(super) struct JobRow {
    id: String,
    user_id: String,
    status: &'static str,
    version: i64,
    created_at: i64,
    expires_at: i64,
    doc: String,
}

impl JobRow {
    pub(super) fn of_all(jobs: &[Job]) -> Result<Vec<Self>, StoreError> {
        jobs.iter()
            .map(|job| {
                Ok(Self {
                    id: job.id.to_string(),
                    user_id: job.user_id.to_string(),
                    status: job.status.as_str(),
                    version: version_col(job.version)?,
                    created_at: to_millis(job.created_at),
                    expires_at: to_millis(job.expires_at),
                    doc: to_json(job)?,
                })
            })
            .collect()
    }

    /// Inserts every row; `Conflict` (and nothing kept, once the caller's savepoint rolls back)
    /// if an id exists.
    pub(super) fn insert_all(conn: &Connection, rows: &[Self]) -> Result<(), StoreError> {
        let mut stmt = conn.prepare_cached(
            "INSERT INTO jobs (id, user_id, status, version, created_at, expires_at, doc)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO NOTHING",
        )?;
        for r in rows {
            let n = stmt.execute(params![
                r.id,
                r.user_id,
                r.status,
                r.version,
                r.created_at,
                r.expires_at,
                r.doc
            ])?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("job {} already exists", r.id)));
            }
        }
        Ok(())
    }
}

fn version_col(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Conflict(format!("version {v} is out of range")))
}

fn jobs_from_docs(docs: Vec<String>) -> Result<Vec<Job>, StoreError> {
    docs.iter().map(|d| from_json(d)).collect()
}

fn query_docs(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[async_trait]
impl JobStore for SqliteJobStore {
    async fn insert(&self, job: &Job) -> Result<(), StoreError> {
        let rows = JobRow::of_all(std::slice::from_ref(job))?;
        self.db
            .write(move |conn| JobRow::insert_all(conn, &rows))
            .await
    }

    async fn get(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        let id = id.to_string();
        let doc = self
            .db
            .read(move |conn| {
                Ok::<_, StoreError>(
                    conn.prepare_cached("SELECT doc FROM jobs WHERE id = ?1")?
                        .query_row([id], |r| r.get::<_, String>(0))
                        .optional()?,
                )
            })
            .await?;
        doc.map(|d| from_json(&d)).transpose()
    }

    async fn update(&self, job: &Job) -> Result<(), StoreError> {
        let Some(expected) = job.version.checked_sub(1) else {
            return Err(StoreError::Conflict(format!(
                "job {} at version 0 has no previous version to replace",
                job.id
            )));
        };
        let expected = version_col(expected)?;
        let version = version_col(job.version)?;
        let doc = to_json(job)?;
        let (id, status, expires) = (job.id.to_string(), job.status, to_millis(job.expires_at));
        self.db
            .write(move |conn| {
                let n = conn
                    .prepare_cached(
                        "UPDATE jobs SET status = ?1, version = ?2, expires_at = ?3, doc = ?4
                         WHERE id = ?5 AND version = ?6",
                    )?
                    .execute(params![
                        status.as_str(),
                        version,
                        expires,
                        doc,
                        id,
                        expected
                    ])?;
                if n == 0 {
                    return Err(StoreError::Conflict(format!(
                        "job {id} is missing or no longer at version {expected}"
                    )));
                }
                Ok(())
            })
            .await
    }

    async fn list(&self, user: &UserId, query: &ListQuery) -> Result<JobPage, StoreError> {
        // A page of zero would report "no more" while there are; one is the least useful page.
        let limit = query.limit.max(1);
        let user = user.to_string();
        let status = query.status.map(|s| s.as_str());
        let before = query.cursor.map(|c| c.before.to_string());
        // One row more than asked says whether there is a next page without a second query.
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
        let docs = self
            .db
            .read(move |conn| {
                query_docs(
                    conn,
                    "SELECT doc FROM jobs
                     WHERE user_id = ?1
                       AND (?2 IS NULL OR status = ?2)
                       AND (?3 IS NULL OR id < ?3)
                     ORDER BY id DESC LIMIT ?4",
                    params![user, status, before, fetch],
                )
            })
            .await?;
        let mut jobs = jobs_from_docs(docs)?;
        let next = if jobs.len() > limit {
            jobs.truncate(limit);
            jobs.last().map(|j| Cursor { before: j.id })
        } else {
            None
        };
        Ok(JobPage { jobs, next })
    }

    async fn stale_pending(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let before = to_millis(before);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let docs = self
            .db
            .read(move |conn| {
                query_docs(
                    conn,
                    "SELECT doc FROM jobs WHERE status = ?1 AND created_at < ?2
                     ORDER BY created_at, id LIMIT ?3",
                    params![JobStatus::Pending.as_str(), before, limit],
                )
            })
            .await?;
        jobs_from_docs(docs)
    }

    async fn delete_expired(&self, now: DateTime<Utc>, limit: usize) -> Result<usize, StoreError> {
        guards::delete_expired_keys(&self.db, now).await?;
        let now = to_millis(now);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db
            .call(move |conn| {
                Ok(conn.execute(
                    "DELETE FROM jobs WHERE id IN
                       (SELECT id FROM jobs WHERE expires_at < ?1 ORDER BY expires_at LIMIT ?2)",
                    params![now, limit],
                )?)
            })
            .await
    }

    async fn insert_api_key(&self, record: &ApiKeyRecord) -> Result<(), StoreError> {
        let doc = to_json(record)?;
        let (id, hash, user) = (
            record.id.clone(),
            record.hash.clone(),
            record.user_id.to_string(),
        );
        let created = to_millis(record.created_at);
        let revoked = record.revoked_at.map(to_millis);
        self.db
            .call(move |conn| {
                // Neither the id nor the hash may repeat: a repeated hash would make the key
                // authenticate as whichever record a lookup happened to find.
                let n = conn.execute(
                    "INSERT INTO api_keys (id, hash, user_id, created_at, revoked_at, doc)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
                    params![id, hash, user, created, revoked, doc],
                )?;
                if n == 0 {
                    return Err(StoreError::Conflict(format!(
                        "an API key with id {id} or the same hash already exists"
                    )));
                }
                Ok(())
            })
            .await
    }

    async fn find_api_key(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let hash = hash.to_owned();
        let doc = self
            .db
            .read(move |conn| {
                Ok::<_, StoreError>(
                    conn.prepare_cached("SELECT doc FROM api_keys WHERE hash = ?1")?
                        .query_row([hash], |r| r.get::<_, String>(0))
                        .optional()?,
                )
            })
            .await?;
        doc.map(|d| from_json(&d)).transpose()
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let docs = self
            .db
            .read(|conn| {
                query_docs(
                    conn,
                    "SELECT doc FROM api_keys ORDER BY created_at DESC, id DESC",
                    [],
                )
            })
            .await?;
        docs.iter().map(|d| from_json(d)).collect()
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
        let id = id.to_owned();
        self.db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let exact = tx
                    .query_row("SELECT doc FROM api_keys WHERE id = ?1", [&id], |r| {
                        r.get::<_, String>(0)
                    })
                    .optional()?;
                let doc = match exact {
                    Some(doc) => doc,
                    None => {
                        // substr, not LIKE: LIKE ignores case and treats `_` and `%` as patterns.
                        let docs = query_docs(
                            &tx,
                            "SELECT doc FROM api_keys
                             WHERE substr(id, 1, length(?1)) = ?1 ORDER BY id LIMIT 2",
                            [&id],
                        )?;
                        match docs.as_slice() {
                            [] => return Ok(None),
                            [one] => one.clone(),
                            _ => {
                                return Err(StoreError::Conflict(format!(
                                "key id prefix {id:?} matches more than one key; give more of it"
                            )))
                            }
                        }
                    }
                };
                let mut record: ApiKeyRecord = from_json(&doc)?;
                // Revoking twice keeps the first revocation time.
                if record.revoked_at.is_none() {
                    record.revoked_at = Some(now);
                    tx.execute(
                        "UPDATE api_keys SET revoked_at = ?1, doc = ?2 WHERE id = ?3",
                        params![to_millis(now), to_json(&record)?, record.id],
                    )?;
                }
                tx.commit()?;
                Ok(Some(record))
            })
            .await
    }

    async fn insert_many(&self, jobs: &[Job]) -> Result<(), (usize, StoreError)> {
        let rows = JobRow::of_all(jobs).map_err(|e| (0, e))?;
        // One write: the write's savepoint makes the rows all or nothing, so a failure leaves
        // none stored.
        self.db
            .write(move |conn| JobRow::insert_all(conn, &rows))
            .await
            .map_err(|e| (0, e))
    }

    async fn claim_idempotency_key(
        &self,
        record: &IdempotencyRecord,
        now: DateTime<Utc>,
    ) -> Result<IdempotencyClaim, StoreError> {
        guards::claim_idempotency_key(&self.db, record, now).await
    }

    async fn complete_idempotency_key(&self, record: &IdempotencyRecord) -> Result<(), StoreError> {
        guards::complete_idempotency_key(&self.db, record).await
    }

    async fn release_idempotency_key(
        &self,
        user: &UserId,
        key: &IdempotencyKey,
    ) -> Result<(), StoreError> {
        guards::release_idempotency_key(&self.db, user, key).await
    }

    async fn take_rate_token(
        &self,
        user: &UserId,
        window_start: DateTime<Utc>,
        window: std::time::Duration,
        limit: u32,
    ) -> Result<bool, StoreError> {
        guards::take_rate_token(&self.db, user, window_start, window, limit).await
    }

    async fn count_in_flight(&self, user: &UserId, up_to: usize) -> Result<usize, StoreError> {
        guards::count_in_flight(&self.db, user, up_to).await
    }

    async fn insert_template(&self, template: &Template) -> Result<(), StoreError> {
        guards::insert_template(&self.db, template).await
    }

    async fn get_template(
        &self,
        owner: Option<&UserId>,
        name: &str,
    ) -> Result<Option<Template>, StoreError> {
        guards::get_template(&self.db, owner, name).await
    }

    async fn list_templates(&self, owner: Option<&UserId>) -> Result<Vec<Template>, StoreError> {
        guards::list_templates(&self.db, owner).await
    }

    async fn delete_template(
        &self,
        owner: Option<&UserId>,
        name: &str,
    ) -> Result<bool, StoreError> {
        guards::delete_template(&self.db, owner, name).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::Tier;

    fn store() -> (tempfile::TempDir, SqliteJobStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("kiln.db")).unwrap();
        (dir, SqliteJobStore::new(db))
    }

    fn job(user: &str, now: DateTime<Utc>) -> Job {
        Job::sample(user, now)
    }

    #[tokio::test]
    async fn update_is_a_compare_and_swap() {
        let (_dir, store) = store();
        let now = Utc::now();
        let j = job("u", now);
        store.insert(&j).await.unwrap();
        let canceled = j.cancel(now).unwrap();
        store.update(&canceled).await.unwrap();
        assert!(matches!(
            store.update(&canceled).await,
            Err(StoreError::Conflict(_))
        ));
        let mut zero = j.clone();
        zero.version = 0;
        assert!(matches!(
            store.update(&zero).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.get(&j.id).await.unwrap(), Some(canceled));
    }

    #[tokio::test]
    async fn stale_pending_and_expiry_use_the_indexed_times() {
        let (_dir, store) = store();
        let t0 = Utc::now();
        let old = job("u", t0);
        let mut young = job("u", t0 + chrono::Duration::seconds(10));
        young.expires_at = t0 + chrono::Duration::days(1);
        let running = job("u", t0).claim(t0, Duration::from_secs(60)).unwrap();
        for j in [&old, &young, &running] {
            store.insert(j).await.unwrap();
        }
        let stale = store
            .stale_pending(t0 + chrono::Duration::seconds(5), 10)
            .await
            .unwrap();
        assert_eq!(stale, vec![old.clone()]);

        let later = t0 + chrono::Duration::hours(2);
        assert_eq!(store.delete_expired(later, 1).await.unwrap(), 1);
        assert_eq!(store.delete_expired(later, 10).await.unwrap(), 1);
        assert_eq!(store.delete_expired(later, 10).await.unwrap(), 0);
        assert_eq!(store.get(&young.id).await.unwrap(), Some(young));
    }

    #[tokio::test]
    async fn revoking_by_prefix_needs_it_to_be_unambiguous() {
        let (_dir, store) = store();
        let now = Utc::now();
        for id in ["abc1", "abc2", "xyz_1"] {
            let (_, mut rec) = ApiKeyRecord::issue(UserId::parse("u").unwrap(), Tier::Vip, now);
            rec.id = id.into();
            store.insert_api_key(&rec).await.unwrap();
        }
        assert!(matches!(
            store.revoke_api_key("abc", now).await,
            Err(StoreError::Conflict(_))
        ));
        // Neither `%` nor `_` is a pattern.
        assert!(store.revoke_api_key("xyz%", now).await.unwrap().is_none());
        assert!(store.revoke_api_key("", now).await.unwrap().is_none());
        let rec = store.revoke_api_key("abc2", now).await.unwrap().unwrap();
        assert_eq!(rec.revoked_at, Some(now));
        let again = store
            .revoke_api_key("abc2", now + chrono::Duration::seconds(1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.revoked_at, Some(now));
        assert_eq!(store.find_api_key(&rec.hash).await.unwrap().unwrap(), again);
        assert_eq!(
            store.revoke_api_key("xyz", now).await.unwrap().unwrap().id,
            "xyz_1"
        );
    }
}
