//! The worker on AWS Lambda: an SQS event source hands it batches; it runs them through the same
//! batch processor as the local pool and answers `batchItemFailures` naming exactly the messages
//! that must come back (the function's event source has `ReportBatchItemFailures`).

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{TimeZone, Utc};
use kiln_shared::adapters::aws::{parameters_by_path, AwsClients, AwsOverrides};
use kiln_shared::adapters::Services;
use kiln_shared::config::Settings;
use kiln_shared::metrics;
use kiln_shared::ports::ReceivedMessage;
use kiln_shared::{logging, SystemClock};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use tokio::time::Instant;

use crate::{WebhookSender, Worker, WorkerConfig};

/// Time kept back from the invocation's deadline to answer the runtime.
const ANSWER_MARGIN: Duration = Duration::from_millis(1500);

/// Runs the jobs worker function until the Lambda runtime stops it.
pub async fn run_jobs() -> Result<(), Error> {
    let settings = Settings::from_env()?;
    logging::init(settings.log_format);
    let services = Services::on_aws(&settings, Arc::new(SystemClock)).await?;
    // Provider keys from SSM, read once per cold start; never in the function's environment.
    let secrets = match &settings.provider_keys_ssm_path {
        Some(path) => {
            let clients = AwsClients::load(&AwsOverrides::default()).await?;
            parameters_by_path(&clients, path).await?
        }
        None => Default::default(),
    };
    let providers = kiln_shared::providers::file::from_settings_with(&settings, &secrets)?;
    let worker = Worker::new(
        services.store,
        services.blobs,
        Arc::new(providers),
        services.clock,
        WorkerConfig {
            lease: settings.lease,
            job_timeout: settings.job_timeout,
            max_receive_count: settings.max_receive_count,
            concurrency: settings.worker_concurrency,
        },
    )
    .with_webhooks(services.webhooks_queue);
    let worker = &worker;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<_, Error>(handle(worker, event).await)
    }))
    .await
}

/// Runs the webhook sender function until the Lambda runtime stops it: each SQS batch of
/// webhook events is delivered, retried later or parked, as in `kiln serve`.
pub async fn run_webhooks() -> Result<(), Error> {
    let settings = Settings::from_env()?;
    logging::init(settings.log_format);
    let services = Services::on_aws(&settings, Arc::new(SystemClock)).await?;
    let public_url = settings.public_url.clone().unwrap_or_default();
    let sender = WebhookSender::from_settings(&settings, &services, public_url);
    let sender = &sender;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let messages = event
            .payload
            .records
            .into_iter()
            .filter_map(received)
            .collect();
        let failed = sender.process_batch(messages).await;
        Ok::<_, Error>(batch_response(failed))
    }))
    .await
}

/// Runs one SQS batch before the invocation's deadline.
pub async fn handle(worker: &Worker, event: LambdaEvent<SqsEvent>) -> SqsBatchResponse {
    let left_ms = event
        .context
        .deadline
        .saturating_sub(Utc::now().timestamp_millis().max(0) as u64);
    let deadline = Instant::now() + Duration::from_millis(left_ms).saturating_sub(ANSWER_MARGIN);
    let messages: Vec<ReceivedMessage> = event
        .payload
        .records
        .into_iter()
        .filter_map(received)
        .collect();
    let failed = worker.process_batch(messages, deadline).await;
    // One EMF document per invocation (plus one per provider called), on stdout, which Lambda
    // sends to CloudWatch Logs, where the metrics are extracted.
    for line in metrics::take_emf(&event.context.env_config.function_name, Utc::now()) {
        println!("{line}");
    }
    batch_response(failed)
}

/// `batchItemFailures` naming the messages that must come back.
fn batch_response(failed: Vec<String>) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failed
        .into_iter()
        .map(|id| {
            let mut f = BatchItemFailure::default();
            f.item_identifier = id;
            f
        })
        .collect();
    response
}

/// The port's view of an SQS record; a record without an id cannot be reported and is skipped
/// (it comes back on its own after the visibility timeout only if the whole batch failed).
fn received(m: SqsMessage) -> Option<ReceivedMessage> {
    let Some(message_id) = m.message_id else {
        tracing::error!("SQS record without a message id; skipping it");
        return None;
    };
    let receive_count = m
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let sent_at = m
        .attributes
        .get("SentTimestamp")
        .and_then(|v| v.parse::<i64>().ok())
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .unwrap_or_else(Utc::now);
    Some(ReceivedMessage {
        message_id,
        receipt_handle: m.receipt_handle.unwrap_or_default(),
        body: m.body.unwrap_or_default(),
        receive_count,
        sent_at,
    })
}
