//! [`Queue`] on an SQS standard queue. Redrive to the dead-letter queue is SQS's own, set by
//! the queue's redrive policy (see [`super::create_resources`]).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{
    Message, MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use chrono::{DateTime, Utc};

use super::error_mapping::{detail, queue_error};
use crate::ports::{Queue, QueueError, ReceivedMessage};

/// Most messages one SQS call sends or receives.
pub const MAX_BATCH: usize = 10;
/// Longest long poll SQS allows.
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// Longest delay SQS allows on a message.
pub const MAX_DELAY: Duration = Duration::from_secs(900);
/// Longest visibility timeout SQS allows.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(43_200);

/// One SQS queue, by URL.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: Client,
    url: String,
}

impl SqsQueue {
    /// The queue at `url`.
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }

    /// The queue's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends `entries` (index into the caller's batch, body) in one `SendMessageBatch`; returns
    /// those that failed in a way worth retrying and those that did not, each with the reason.
    async fn send_batch(
        &self,
        entries: &[(usize, &String)],
        delay_secs: i32,
    ) -> Result<SendOutcome, String> {
        let mut request = self.client.send_message_batch().queue_url(&self.url);
        for (index, body) in entries {
            let entry = SendMessageBatchRequestEntry::builder()
                .id(index.to_string())
                .message_body(body.as_str())
                .delay_seconds(delay_secs)
                .build()
                .map_err(|e| format!("SendMessageBatch: {e}"))?;
            request = request.entries(entry);
        }
        let out = request
            .send()
            .await
            .map_err(|e| format!("SendMessageBatch: {}", detail(&e)))?;
        let mut outcome = SendOutcome::default();
        for failed in out.failed() {
            let Ok(index) = failed.id().parse::<usize>() else {
                continue;
            };
            let reason = format!(
                "{}: {}",
                failed.code(),
                failed.message().unwrap_or("no message")
            );
            // The sender's fault (a body SQS refuses) will not change on a second try.
            if failed.sender_fault() {
                outcome.rejected.push((index, reason));
            } else {
                outcome.retriable.push((index, reason));
            }
        }
        // An entry SQS reports neither sent nor failed was not sent as far as we can tell.
        for (index, _) in entries {
            let id = index.to_string();
            let reported = out.successful().iter().any(|s| s.id() == id)
                || out.failed().iter().any(|f| f.id() == id);
            if !reported {
                outcome
                    .retriable
                    .push((*index, "not in SendMessageBatch's answer".to_owned()));
            }
        }
        Ok(outcome)
    }
}

#[derive(Debug, Default)]
struct SendOutcome {
    retriable: Vec<(usize, String)>,
    rejected: Vec<(usize, String)>,
}

fn secs_rounded_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn to_received(m: &Message) -> Result<ReceivedMessage, QueueError> {
    let missing = |what: &str| QueueError::Unavailable(format!("received message has no {what}"));
    let attribute = |name: MessageSystemAttributeName| {
        m.attributes()
            .and_then(|a| a.get(&name))
            .map(String::as_str)
    };
    let receive_count = attribute(MessageSystemAttributeName::ApproximateReceiveCount)
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1);
    let sent_at = attribute(MessageSystemAttributeName::SentTimestamp)
        .and_then(|v| v.parse::<i64>().ok())
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .ok_or_else(|| missing("SentTimestamp"))?;
    Ok(ReceivedMessage {
        message_id: m.message_id().ok_or_else(|| missing("id"))?.to_owned(),
        receipt_handle: m
            .receipt_handle()
            .ok_or_else(|| missing("receipt handle"))?
            .to_owned(),
        body: m.body().unwrap_or_default().to_owned(),
        receive_count,
        sent_at,
    })
}

#[async_trait]
impl Queue for SqsQueue {
    /// Sends in `SendMessageBatch` calls of ten. Entries SQS fails for a reason of its own are
    /// sent once more; what still fails is reported by index in [`QueueError::PartialSend`], or
    /// as `Unavailable` when nothing at all was sent. SQS caps delays at 15 minutes: a longer
    /// `delay` is cut to that, so the consumer sees the message early and may delay it again.
    async fn send(&self, bodies: &[String], delay: Duration) -> Result<(), QueueError> {
        let delay_secs = i32::try_from(secs_rounded_up(delay.min(MAX_DELAY))).unwrap_or(900);
        let indexed: Vec<(usize, &String)> = bodies.iter().enumerate().collect();
        let mut failed: Vec<(usize, String)> = Vec::new();
        for chunk in indexed.chunks(MAX_BATCH) {
            let first = match self.send_batch(chunk, delay_secs).await {
                Ok(outcome) => outcome,
                Err(reason) => {
                    // The SDK already retried the call itself; the whole chunk is unsent.
                    failed.extend(chunk.iter().map(|(i, _)| (*i, reason.clone())));
                    continue;
                }
            };
            failed.extend(first.rejected);
            if first.retriable.is_empty() {
                continue;
            }
            let again: Vec<(usize, &String)> = first
                .retriable
                .iter()
                .map(|(i, _)| (*i, &bodies[*i]))
                .collect();
            match self.send_batch(&again, delay_secs).await {
                Ok(second) => {
                    failed.extend(second.retriable);
                    failed.extend(second.rejected);
                }
                Err(reason) => failed.extend(again.iter().map(|(i, _)| (*i, reason.clone()))),
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        failed.sort_by_key(|(i, _)| *i);
        let reason = failed.first().map(|(_, r)| r.clone()).unwrap_or_default();
        if failed.len() == bodies.len() {
            return Err(QueueError::Unavailable(format!(
                "none of the {} messages were sent: {reason}",
                bodies.len()
            )));
        }
        Err(QueueError::PartialSend {
            failed: failed.into_iter().map(|(i, _)| i).collect(),
            reason,
        })
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let max = i32::try_from(max.clamp(1, MAX_BATCH)).unwrap_or(1);
        let wait = i32::try_from(wait.min(MAX_WAIT).as_secs()).unwrap_or(20);
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max)
            .wait_time_seconds(wait)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .map_err(|e| queue_error("ReceiveMessage", None, e))?;
        out.messages().iter().map(to_received).collect()
    }

    async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .send()
            .await
            .map_err(|e| queue_error("DeleteMessage", Some(receipt_handle), e))?;
        Ok(())
    }

    /// SQS caps a message's visibility at 12 hours from its receipt; longer is cut to that.
    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        let secs = i32::try_from(secs_rounded_up(timeout.min(MAX_VISIBILITY))).unwrap_or(43_200);
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(secs)
            .send()
            .await
            .map_err(|e| queue_error("ChangeMessageVisibility", Some(receipt_handle), e))?;
        Ok(())
    }

    async fn depth(&self) -> Result<u64, QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| queue_error("GetQueueAttributes", None, e))?;
        let count = |name: QueueAttributeName| {
            out.attributes()
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(count(QueueAttributeName::ApproximateNumberOfMessages)
            + count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_seconds_round_up() {
        assert_eq!(secs_rounded_up(Duration::ZERO), 0);
        assert_eq!(secs_rounded_up(Duration::from_millis(1)), 1);
        assert_eq!(secs_rounded_up(Duration::from_secs(3)), 3);
    }
}
