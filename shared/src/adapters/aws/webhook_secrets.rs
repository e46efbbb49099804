//! [`WebhookSecretStore`] in the jobs table: one item per user, `pk` = `WHSEC#{user}`,
//! `sk` = `WHSEC`, `doc` (the record as JSON) and `version` (N); written only over the version a
//! change was made from (absent for a first secret).

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

use super::error_mapping::store_error;
use crate::domain::UserId;
use crate::ports::{StoreError, WebhookSecretStore};
use crate::webhooks::UserWebhookSecrets;

const SK: &str = "WHSEC";

/// Users' webhook secrets in the DynamoDB table.
#[derive(Debug, Clone)]
pub struct DynamoWebhookSecrets {
    client: Client,
    table: String,
}

impl DynamoWebhookSecrets {
    /// Secrets in `table`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

fn pk(user: &UserId) -> AttributeValue {
    AttributeValue::S(format!("WHSEC#{user}"))
}

#[async_trait]
impl WebhookSecretStore for DynamoWebhookSecrets {
    async fn get_secrets(&self, user: &UserId) -> Result<Option<UserWebhookSecrets>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", pk(user))
            .key("sk", AttributeValue::S(SK.into()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error("GetItem", e))?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        let doc = item
            .get("doc")
            .and_then(|v| v.as_s().ok())
            .ok_or_else(|| StoreError::Unavailable("webhook secrets item has no `doc`".into()))?;
        serde_json::from_str(doc).map(Some).map_err(|e| {
            StoreError::Unavailable(format!("stored webhook secrets are unreadable: {e}"))
        })
    }

    async fn put_secrets(&self, secrets: &UserWebhookSecrets) -> Result<(), StoreError> {
        let doc = serde_json::to_string(secrets)
            .map_err(|e| StoreError::Unavailable(format!("cannot encode: {e}")))?;
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", pk(&secrets.user_id))
            .item("sk", AttributeValue::S(SK.into()))
            .item("doc", AttributeValue::S(doc))
            .item("version", AttributeValue::N(secrets.version.to_string()));
        let put = if secrets.version <= 1 {
            put.condition_expression("attribute_not_exists(pk)")
        } else {
            put.condition_expression("version = :prev")
                .expression_attribute_values(
                    ":prev",
                    AttributeValue::N((secrets.version - 1).to_string()),
                )
        };
        put.send().await.map_err(|e| store_error("PutItem", e))?;
        Ok(())
    }
}
