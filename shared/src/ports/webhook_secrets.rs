//! Where users' webhook signing secrets live.

use async_trait::async_trait;

use super::StoreError;
use crate::domain::UserId;
use crate::webhooks::UserWebhookSecrets;

/// Users' webhook secrets, one record per user.
#[async_trait]
pub trait WebhookSecretStore: Send + Sync + 'static {
    /// The user's secrets, if any were made.
    async fn get_secrets(&self, user: &UserId) -> Result<Option<UserWebhookSecrets>, StoreError>;

    /// Stores `secrets` if the stored record is at `secrets.version - 1` (absent for version 1);
    /// `Conflict` otherwise.
    async fn put_secrets(&self, secrets: &UserWebhookSecrets) -> Result<(), StoreError>;
}

/// The user's secrets, made on first use; `true` when they were made by this call (so the
/// caller may show the secret, once).
pub async fn secrets_for(
    store: &dyn WebhookSecretStore,
    user: &UserId,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(UserWebhookSecrets, bool), StoreError> {
    if let Some(s) = store.get_secrets(user).await? {
        return Ok((s, false));
    }
    let fresh = UserWebhookSecrets::issue(user.clone(), now);
    match store.put_secrets(&fresh).await {
        Ok(()) => Ok((fresh, true)),
        // Someone else made them first: theirs count.
        Err(StoreError::Conflict(_)) => store
            .get_secrets(user)
            .await?
            .map(|s| (s, false))
            .ok_or_else(|| StoreError::Conflict("webhook secrets vanished".into())),
        Err(e) => Err(e),
    }
}
