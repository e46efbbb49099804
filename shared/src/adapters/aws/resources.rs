//! Creating the AWS resources Kiln runs on: the table (on demand, with its indexes and TTL), the
//! four queues (dead-letter queues first, then the queues that redrive to them) and the bucket
//! (public access blocked, encrypted). Each step is idempotent: what exists already counts as
//! made, and its settings are brought in line where the service allows it.

use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TableStatus, TimeToLiveSpecification, TimeToLiveStatus,
};
use aws_sdk_s3::types::{
    BucketLocationConstraint, CreateBucketConfiguration, PublicAccessBlockConfiguration,
    ServerSideEncryption, ServerSideEncryptionByDefault, ServerSideEncryptionConfiguration,
    ServerSideEncryptionRule,
};
use aws_sdk_sqs::types::QueueAttributeName;

use super::error_mapping::{code, detail};
use super::job_store::{IN_FLIGHT_INDEX, KEYS_INDEX, PENDING_INDEX, TTL_ATTRIBUTE, USER_INDEX};
use super::queue::MAX_VISIBILITY;
use super::AwsClients;
use crate::config::{AwsResources, Settings};

/// How long to wait for a new table to become active.
const TABLE_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long dead letters are kept: SQS's maximum, 14 days, to leave operators time.
const DLQ_RETENTION_SECS: u64 = 14 * 24 * 3600;

/// A resource that could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {message}")]
pub struct ResourceError {
    /// The resource (`table kiln`, `queue kiln-jobs`, `bucket kiln-images`).
    pub resource: String,
    /// What went wrong.
    pub message: String,
}

impl ResourceError {
    fn new(resource: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            resource: resource.into(),
            message: message.into(),
        }
    }
}

/// The names of the resources to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceNames {
    /// DynamoDB table.
    pub table: String,
    /// SQS jobs queue.
    pub jobs_queue: String,
    /// Its dead-letter queue.
    pub jobs_dlq: String,
    /// SQS webhook queue.
    pub webhooks_queue: String,
    /// Its dead-letter queue.
    pub webhooks_dlq: String,
    /// S3 bucket (a globally unique name on AWS).
    pub bucket: String,
}

impl ResourceNames {
    /// `{prefix}` for the table, `{prefix}-jobs`, `{prefix}-jobs-dlq`, `{prefix}-webhooks`,
    /// `{prefix}-webhooks-dlq` for the queues and `{prefix}-images` for the bucket.
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            table: prefix.to_owned(),
            jobs_queue: format!("{prefix}-jobs"),
            jobs_dlq: format!("{prefix}-jobs-dlq"),
            webhooks_queue: format!("{prefix}-webhooks"),
            webhooks_dlq: format!("{prefix}-webhooks-dlq"),
            bucket: format!("{prefix}-images"),
        }
    }
}

/// Makes (or finds) every resource in `names`; queues get `settings.visibility_timeout` and a
/// redrive policy of `settings.max_receive_count` receives. Returns what a process needs to
/// run on them (the `KILN_*` values of [`AwsResources`]).
pub async fn create_resources(
    clients: &AwsClients,
    names: &ResourceNames,
    settings: &Settings,
) -> Result<AwsResources, ResourceError> {
    create_table(clients, &names.table).await?;
    let visibility = settings.visibility_timeout.min(MAX_VISIBILITY).as_secs();
    let receives = settings.max_receive_count;
    let jobs_dlq_url = create_queue(clients, &names.jobs_dlq, &dlq_attributes()).await?;
    let jobs_queue_url = create_queue(
        clients,
        &names.jobs_queue,
        &source_attributes(
            clients,
            &jobs_dlq_url,
            &names.jobs_dlq,
            visibility,
            receives,
        )
        .await?,
    )
    .await?;
    let webhooks_dlq_url = create_queue(clients, &names.webhooks_dlq, &dlq_attributes()).await?;
    let webhooks_queue_url = create_queue(
        clients,
        &names.webhooks_queue,
        &source_attributes(
            clients,
            &webhooks_dlq_url,
            &names.webhooks_dlq,
            visibility,
            receives,
        )
        .await?,
    )
    .await?;
    create_bucket(clients, &names.bucket).await?;
    Ok(AwsResources {
        table: names.table.clone(),
        jobs_queue_url,
        jobs_dlq_url,
        webhooks_queue_url,
        webhooks_dlq_url,
        bucket: names.bucket.clone(),
    })
}

fn string_key(name: &str, key_type: KeyType) -> Result<KeySchemaElement, String> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(key_type)
        .build()
        .map_err(|e| e.to_string())
}

fn index(name: &str, partition: &str, sort: &str) -> Result<GlobalSecondaryIndex, String> {
    projected_index(name, partition, sort, ProjectionType::All)
}

fn projected_index(
    name: &str,
    partition: &str,
    sort: &str,
    projection: ProjectionType,
) -> Result<GlobalSecondaryIndex, String> {
    GlobalSecondaryIndex::builder()
        .index_name(name)
        .key_schema(string_key(partition, KeyType::Hash)?)
        .key_schema(string_key(sort, KeyType::Range)?)
        .projection(Projection::builder().projection_type(projection).build())
        .build()
        .map_err(|e| e.to_string())
}

async fn create_table(clients: &AwsClients, table: &str) -> Result<(), ResourceError> {
    let resource = format!("table {table}");
    let fail = |m: String| ResourceError::new(&resource, m);
    let mut request = clients
        .dynamodb
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(string_key("pk", KeyType::Hash).map_err(fail)?)
        .key_schema(string_key("sk", KeyType::Range).map_err(fail)?)
        .global_secondary_indexes(index(USER_INDEX, "user_pk", "user_sk").map_err(fail)?)
        .global_secondary_indexes(index(PENDING_INDEX, "pending_pk", "pending_sk").map_err(fail)?)
        .global_secondary_indexes(index(KEYS_INDEX, "keys_pk", "keys_sk").map_err(fail)?)
        .global_secondary_indexes(
            projected_index(
                IN_FLIGHT_INDEX,
                "active_pk",
                "active_sk",
                ProjectionType::KeysOnly,
            )
            .map_err(fail)?,
        );
    for attribute in [
        "pk",
        "sk",
        "user_pk",
        "user_sk",
        "pending_pk",
        "pending_sk",
        "keys_pk",
        "keys_sk",
        "active_pk",
        "active_sk",
    ] {
        request = request.attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(attribute)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|e| fail(e.to_string()))?,
        );
    }
    match request.send().await {
        Ok(_) => {}
        Err(e) if code(&e) == Some("ResourceInUseException") => {}
        Err(e) => return Err(fail(format!("CreateTable: {}", detail(&e)))),
    }
    wait_until_active(clients, table).await.map_err(fail)?;
    enable_ttl(clients, table).await.map_err(fail)
}

async fn wait_until_active(clients: &AwsClients, table: &str) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + TABLE_READY_TIMEOUT;
    loop {
        let out = clients
            .dynamodb
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| format!("DescribeTable: {}", detail(&e)))?;
        let status = out.table().and_then(|t| t.table_status());
        if status == Some(&TableStatus::Active) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "not active after {TABLE_READY_TIMEOUT:?} (status {status:?})"
            ));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn enable_ttl(clients: &AwsClients, table: &str) -> Result<(), String> {
    let current = clients
        .dynamodb
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(|e| format!("DescribeTimeToLive: {}", detail(&e)))?;
    let status = current
        .time_to_live_description()
        .and_then(|d| d.time_to_live_status());
    // Enabling it again is an error on DynamoDB.
    if matches!(
        status,
        Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
    ) {
        return Ok(());
    }
    let spec = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(TTL_ATTRIBUTE)
        .build()
        .map_err(|e| e.to_string())?;
    clients
        .dynamodb
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(spec)
        .send()
        .await
        .map_err(|e| format!("UpdateTimeToLive: {}", detail(&e)))?;
    Ok(())
}

fn dlq_attributes() -> Vec<(QueueAttributeName, String)> {
    vec![
        (
            QueueAttributeName::MessageRetentionPeriod,
            DLQ_RETENTION_SECS.to_string(),
        ),
        (QueueAttributeName::SqsManagedSseEnabled, "true".to_owned()),
    ]
}

/// Attributes of a queue that redrives to the dead-letter queue at `dlq_url`.
async fn source_attributes(
    clients: &AwsClients,
    dlq_url: &str,
    dlq_name: &str,
    visibility_secs: u64,
    max_receive_count: u32,
) -> Result<Vec<(QueueAttributeName, String)>, ResourceError> {
    let fail = |m: String| ResourceError::new(format!("queue {dlq_name}"), m);
    let out = clients
        .sqs
        .get_queue_attributes()
        .queue_url(dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| fail(format!("GetQueueAttributes: {}", detail(&e))))?;
    let arn = out
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .ok_or_else(|| fail("GetQueueAttributes answered no QueueArn".to_owned()))?;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": arn,
        "maxReceiveCount": max_receive_count,
    });
    Ok(vec![
        (
            QueueAttributeName::VisibilityTimeout,
            visibility_secs.to_string(),
        ),
        (QueueAttributeName::RedrivePolicy, redrive.to_string()),
        (QueueAttributeName::SqsManagedSseEnabled, "true".to_owned()),
    ])
}

/// Creates the queue, or brings an existing one's attributes in line; returns its URL.
async fn create_queue(
    clients: &AwsClients,
    name: &str,
    attributes: &[(QueueAttributeName, String)],
) -> Result<String, ResourceError> {
    let fail = |m: String| ResourceError::new(format!("queue {name}"), m);
    let mut request = clients.sqs.create_queue().queue_name(name);
    for (k, v) in attributes {
        request = request.attributes(k.clone(), v);
    }
    match request.send().await {
        Ok(out) => out
            .queue_url
            .ok_or_else(|| fail("CreateQueue answered no queue URL".to_owned())),
        // Exists with other attributes: keep it (and its messages), update the attributes.
        Err(e) if code(&e).is_some_and(|c| c.ends_with("QueueAlreadyExists")) => {
            let url = clients
                .sqs
                .get_queue_url()
                .queue_name(name)
                .send()
                .await
                .map_err(|e| fail(format!("GetQueueUrl: {}", detail(&e))))?
                .queue_url
                .ok_or_else(|| fail("GetQueueUrl answered no queue URL".to_owned()))?;
            let mut update = clients.sqs.set_queue_attributes().queue_url(&url);
            for (k, v) in attributes {
                update = update.attributes(k.clone(), v);
            }
            update
                .send()
                .await
                .map_err(|e| fail(format!("SetQueueAttributes: {}", detail(&e))))?;
            Ok(url)
        }
        Err(e) => Err(fail(format!("CreateQueue: {}", detail(&e)))),
    }
}

async fn create_bucket(clients: &AwsClients, bucket: &str) -> Result<(), ResourceError> {
    let fail = |m: String| ResourceError::new(format!("bucket {bucket}"), m);
    let mut request = clients.s3.create_bucket().bucket(bucket);
    // us-east-1 is the one region that takes no location constraint.
    if let Some(region) = clients
        .s3
        .config()
        .region()
        .map(|r| r.as_ref())
        .filter(|r| *r != "us-east-1")
    {
        request = request.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(region))
                .build(),
        );
    }
    match request.send().await {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_bucket_already_owned_by_you()) => {}
        Err(e) => return Err(fail(format!("CreateBucket: {}", detail(&e)))),
    }
    let block = PublicAccessBlockConfiguration::builder()
        .block_public_acls(true)
        .ignore_public_acls(true)
        .block_public_policy(true)
        .restrict_public_buckets(true)
        .build();
    clients
        .s3
        .put_public_access_block()
        .bucket(bucket)
        .public_access_block_configuration(block)
        .send()
        .await
        .map_err(|e| fail(format!("PutPublicAccessBlock: {}", detail(&e))))?;
    let default = ServerSideEncryptionByDefault::builder()
        .sse_algorithm(ServerSideEncryption::Aes256)
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let encryption = ServerSideEncryptionConfiguration::builder()
        .rules(
            ServerSideEncryptionRule::builder()
                .apply_server_side_encryption_by_default(default)
                .build(),
        )
        .build()
        .map_err(|e| fail(e.to_string()))?;
    clients
        .s3
        .put_bucket_encryption()
        .bucket(bucket)
        .server_side_encryption_configuration(encryption)
        .send()
        .await
        .map_err(|e| fail(format!("PutBucketEncryption: {}", detail(&e))))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_a_prefix() {
        let n = ResourceNames::with_prefix("kiln-dev");
        assert_eq!(n.table, "kiln-dev");
        assert_eq!(n.jobs_dlq, "kiln-dev-jobs-dlq");
        assert_eq!(n.bucket, "kiln-dev-images");
    }
}
