//! [`WebhookSecretStore`] on SQLite: one row per user, written by compare-and-swap on `version`.

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use super::db::Db;
use crate::domain::UserId;
use crate::ports::{StoreError, WebhookSecretStore};
use crate::webhooks::UserWebhookSecrets;

/// Users' webhook secrets in the local SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteWebhookSecrets {
    db: Db,
}

impl SqliteWebhookSecrets {
    /// Secrets over an opened database.
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

#[async_trait]
impl WebhookSecretStore for SqliteWebhookSecrets {
    async fn get_secrets(&self, user: &UserId) -> Result<Option<UserWebhookSecrets>, StoreError> {
        let user = user.to_string();
        let doc = self
            .db
            .call(move |conn| {
                Ok::<_, StoreError>(
                    conn.prepare_cached("SELECT doc FROM webhook_secrets WHERE user_id = ?1")?
                        .query_row([user], |r| r.get::<_, String>(0))
                        .optional()?,
                )
            })
            .await?;
        doc.map(|d| {
            serde_json::from_str(&d).map_err(|e| {
                StoreError::Unavailable(format!("stored webhook secrets are unreadable: {e}"))
            })
        })
        .transpose()
    }

    async fn put_secrets(&self, secrets: &UserWebhookSecrets) -> Result<(), StoreError> {
        let doc = serde_json::to_string(secrets)
            .map_err(|e| StoreError::Unavailable(format!("cannot encode: {e}")))?;
        let user = secrets.user_id.to_string();
        let version = i64::try_from(secrets.version)
            .map_err(|_| StoreError::Conflict("version out of range".into()))?;
        self.db
            .call(move |conn| {
                let n = if version == 1 {
                    conn.execute(
                        "INSERT INTO webhook_secrets (user_id, version, doc) VALUES (?1, ?2, ?3)
                         ON CONFLICT (user_id) DO NOTHING",
                        params![user, version, doc],
                    )?
                } else {
                    conn.execute(
                        "UPDATE webhook_secrets SET version = ?2, doc = ?3
                         WHERE user_id = ?1 AND version = ?2 - 1",
                        params![user, version, doc],
                    )?
                };
                if n == 0 {
                    return Err(StoreError::Conflict(format!(
                        "webhook secrets of {user} changed meanwhile"
                    )));
                }
                Ok(())
            })
            .await
    }
}
