//! The webhook sender: takes events off the webhook queue, loads the job fresh, and POSTs
//! `{type, id, timestamp, data: job}` signed per Standard Webhooks to the job's URL, connecting
//! only to the addresses the guard approved. A failed attempt is retried after the next delay of
//! the schedule (a new message carrying the attempt count, so no queue limit on delays or
//! visibility matters); once the schedule is spent the event is parked in the webhook DLQ. Every
//! attempt is recorded on the job.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kiln_shared::adapters::Services;
use kiln_shared::clock::Clock;
use kiln_shared::config::Settings;
use kiln_shared::domain::{EventType, JobId, UserId, WebhookDelivery};
use kiln_shared::ports::{
    secrets_for, BlobStore, JobStore, Queue, ReceivedMessage, StoreError, WebhookSecretStore,
};
use kiln_shared::view::JobView;
use kiln_shared::webhooks::{
    signature_header, GuardPolicy, UserWebhookSecrets, WebhookGuard, WebhookMessage,
};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, info_span, warn, Span};

use crate::batch::{run_batch, Outcome};
use crate::pool::retry_delay;

/// Longest a delivery may take, connection included.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of a subscriber's answer read (the rest is dropped with the connection).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Longest delay a queue message may carry (SQS's limit); longer waits are chained.
pub const MAX_QUEUE_DELAY: Duration = Duration::from_secs(15 * 60);
/// Tries of recording an attempt on a job that other writers keep changing.
const RECORD_ROUNDS: usize = 5;
/// How long one receive of the local feed waits for a first message.
const LONG_POLL: Duration = Duration::from_secs(20);

/// How the sender behaves.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Waits before each retry; `len() + 1` attempts in all.
    pub retry_delays: Vec<Duration>,
    /// Longest one attempt may take.
    pub timeout: Duration,
    /// Longest delay one queue message may carry.
    pub max_queue_delay: Duration,
    /// Deliveries at once.
    pub concurrency: usize,
    /// Lifetime of the image URLs in payloads.
    pub url_ttl: Duration,
    /// Base of the absolute URLs in payloads (`http://host`, no trailing slash).
    pub public_url: String,
}

/// What one POST came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempted {
    /// 2xx from the subscriber.
    pub delivered: bool,
    /// The subscriber's status, if it answered.
    pub status_code: Option<u16>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// How long it took.
    pub latency: Duration,
    /// The guard refused the URL: retrying cannot help.
    pub refused: bool,
}

/// The payload of every event.
#[derive(Debug, Serialize)]
struct Payload<'a, T: Serialize> {
    #[serde(rename = "type")]
    event_type: EventType,
    id: &'a str,
    timestamp: DateTime<Utc>,
    data: T,
}

/// Delivers webhook events.
pub struct WebhookSender {
    store: Arc<dyn JobStore>,
    secrets: Arc<dyn WebhookSecretStore>,
    blobs: Arc<dyn BlobStore>,
    guard: WebhookGuard,
    clock: Arc<dyn Clock>,
    queue: Arc<dyn Queue>,
    dlq: Arc<dyn Queue>,
    config: SenderConfig,
}

impl WebhookSender {
    /// A sender over these ports; `queue` is where retries go, `dlq` where spent events park.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn JobStore>,
        secrets: Arc<dyn WebhookSecretStore>,
        blobs: Arc<dyn BlobStore>,
        guard: WebhookGuard,
        clock: Arc<dyn Clock>,
        queue: Arc<dyn Queue>,
        dlq: Arc<dyn Queue>,
        config: SenderConfig,
    ) -> Self {
        Self {
            store,
            secrets,
            blobs,
            guard,
            clock,
            queue,
            dlq,
            config,
        }
    }

    /// The sender's settings.
    pub fn config(&self) -> &SenderConfig {
        &self.config
    }

    /// Runs a batch of webhook messages concurrently and returns the ids of those that must
    /// come back (SQS `batchItemFailures`).
    pub async fn process_batch(&self, messages: Vec<ReceivedMessage>) -> Vec<String> {
        run_batch(
            messages,
            self.config.concurrency,
            message_span,
            |msg| async move { self.process_message(&msg).await },
        )
        .await
    }

    /// Handles one webhook message: delivers it, or re-sends it for later, or parks it.
    pub async fn process_message(&self, msg: &ReceivedMessage) -> Outcome {
        let event = match WebhookMessage::decode(&msg.body) {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "undecodable webhook message; leaving it to reach the dead-letter queue");
                return Outcome::Retry;
            }
        };
        let now = self.clock.now();
        if let Some(left) = event
            .not_before
            .and_then(|at| (at - now).to_std().ok())
            .filter(|d| *d >= Duration::from_secs(1))
        {
            // A wait longer than a queue delay: hop once more.
            return self
                .resend(&self.queue, &event, left.min(self.config.max_queue_delay))
                .await;
        }
        let job = match self.store.get(&event.job_id).await {
            Ok(Some(job)) => job,
            Ok(None) => {
                info!("job is gone; dropping its webhook event");
                return Outcome::Ack;
            }
            Err(e) => {
                warn!(error = %e, "could not read the job");
                return Outcome::Retry;
            }
        };
        let Some(webhook) = job.webhook.clone() else {
            return Outcome::Ack;
        };
        let secrets = match secrets_for(&*self.secrets, &job.user_id, now).await {
            Ok((s, created)) => {
                if created {
                    info!(user_id = %job.user_id, "webhook secret created on first use");
                }
                s
            }
            Err(e) => {
                warn!(error = %e, "could not read the webhook secret");
                return Outcome::Retry;
            }
        };
        let view = match JobView::render(
            &*self.blobs,
            self.config.url_ttl,
            &self.config.public_url,
            job,
        )
        .await
        {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "could not render the job");
                return Outcome::Retry;
            }
        };
        let body = match serde_json::to_vec(&Payload {
            event_type: event.event_type,
            id: &event.event_id,
            timestamp: event.occurred_at,
            data: view,
        }) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "could not encode the payload");
                return Outcome::Retry;
            }
        };
        let attempt = event.attempts + 1;
        let started = self.clock.now();
        let result = self
            .post(&webhook.url, &secrets, &event.event_id, body)
            .await;
        self.record(
            &event.job_id,
            WebhookDelivery {
                event_id: event.event_id.clone(),
                event_type: event.event_type,
                attempt,
                at: started,
                delivered: result.delivered,
                status_code: result.status_code,
                error: result.error.clone(),
                latency_ms: u64::try_from(result.latency.as_millis()).unwrap_or(u64::MAX),
            },
        )
        .await;
        let next = WebhookMessage {
            attempts: attempt,
            not_before: None,
            ..event
        };
        if result.delivered {
            info!(
                attempt,
                status = result.status_code,
                latency_ms = result.latency.as_millis() as u64,
                "webhook delivered"
            );
            return Outcome::Ack;
        }
        let delay = self
            .config
            .retry_delays
            .get(event.attempts as usize)
            .copied();
        match delay {
            Some(delay) if !result.refused => {
                warn!(
                    attempt,
                    status = result.status_code,
                    error = result.error.as_deref().unwrap_or(""),
                    retry_in_secs = delay.as_secs(),
                    "webhook delivery failed; will retry"
                );
                let next = WebhookMessage {
                    not_before: Some(
                        self.clock.now() + chrono::Duration::from_std(delay).unwrap_or_default(),
                    ),
                    ..next
                };
                self.resend(&self.queue, &next, delay.min(self.config.max_queue_delay))
                    .await
            }
            _ => {
                warn!(
                    attempt,
                    status = result.status_code,
                    error = result.error.as_deref().unwrap_or(""),
                    "webhook delivery failed for good; parking the event in the dead-letter queue"
                );
                self.resend(&self.dlq, &next, Duration::ZERO).await
            }
        }
    }

    /// Sends `msg` to `queue` after `delay`: the message being handled is then done with;
    /// if the send fails it must come back instead.
    async fn resend(
        &self,
        queue: &Arc<dyn Queue>,
        msg: &WebhookMessage,
        delay: Duration,
    ) -> Outcome {
        match queue.send(&[msg.encode()], delay).await {
            Ok(()) => Outcome::Ack,
            Err(e) => {
                warn!(error = %e, "could not re-send the webhook message; it will come back");
                Outcome::Retry
            }
        }
    }

    /// Records an attempt on the job (best effort: a lost record costs history, not delivery).
    async fn record(&self, id: &JobId, delivery: WebhookDelivery) {
        for _ in 0..RECORD_ROUNDS {
            let job = match self.store.get(id).await {
                Ok(Some(job)) => job,
                Ok(None) => return,
                Err(e) => {
                    warn!(error = %e, "could not read the job to record a delivery");
                    return;
                }
            };
            match self
                .store
                .update(&job.record_delivery(delivery.clone()))
                .await
            {
                Ok(()) => return,
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => {
                    warn!(error = %e, "could not record a delivery");
                    return;
                }
            }
        }
        warn!("the job kept changing; a delivery attempt went unrecorded");
    }

    /// Checks `url` with the guard, then POSTs `body` signed with every secret of `secrets`
    /// that signs now, connecting only to the approved addresses, without following redirects.
    pub async fn post(
        &self,
        url: &str,
        secrets: &UserWebhookSecrets,
        event_id: &str,
        body: Vec<u8>,
    ) -> Attempted {
        let started = Instant::now();
        let failed = |error: String, refused: bool| Attempted {
            delivered: false,
            status_code: None,
            error: Some(error),
            latency: started.elapsed(),
            refused,
        };
        let approved = match self.guard.check(url).await {
            Ok(a) => a,
            Err(e) => return failed(format!("refused: the URL {e}"), true),
        };
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(self.config.timeout)
            .connect_timeout(self.config.timeout)
            .no_proxy()
            .user_agent(concat!("kiln-webhooks/", env!("CARGO_PKG_VERSION")));
        if let Some(domain) = &approved.domain {
            // Pin the name to what the guard checked: a second lookup could answer otherwise.
            builder = builder.resolve_to_addrs(domain, &approved.addrs);
        }
        let client = match builder.build() {
            Ok(c) => c,
            Err(e) => return failed(format!("cannot build the HTTP client: {e}"), false),
        };
        let timestamp = self.clock.now().timestamp();
        let signature = signature_header(
            &secrets.signing(self.clock.now()),
            event_id,
            timestamp,
            &body,
        );
        let sent = client
            .post(approved.url)
            .header("content-type", "application/json")
            .header("webhook-id", event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => return failed(describe(&e, self.config.timeout), false),
        };
        let status = resp.status();
        // Read (a bounded part of) the answer so the exchange completes; its content is unused.
        let mut read = 0usize;
        while read < MAX_RESPONSE_BYTES {
            match resp.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Ok(None) | Err(_) => break,
            }
        }
        let delivered = status.is_success();
        Attempted {
            delivered,
            status_code: Some(status.as_u16()),
            error: (!delivered).then(|| format!("HTTP {status}")),
            latency: started.elapsed(),
            refused: false,
        }
    }

    /// Sends a signed `webhook.test` event to `url` as `user` would receive one (through the
    /// same guard); the user's secret is made if it did not exist.
    pub async fn send_test(
        &self,
        url: &str,
        user: &UserId,
    ) -> Result<(String, Attempted), StoreError> {
        let now = self.clock.now();
        let (secrets, _) = secrets_for(&*self.secrets, user, now).await?;
        let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
        let body = serde_json::to_vec(&Payload {
            event_type: EventType::Test,
            id: &id,
            timestamp: now,
            data: serde_json::json!({"message": "a test event from kiln", "user_id": user}),
        })
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let result = self.post(url, &secrets, &id, body).await;
        Ok((id, result))
    }
}

/// A reqwest error in words, with its causes.
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("timed out after {}s", timeout.as_secs());
    }
    let mut out = if e.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn message_span(msg: &ReceivedMessage) -> Span {
    let (job_id, event_id) = WebhookMessage::decode(&msg.body)
        .map(|m| (m.job_id.to_string(), m.event_id))
        .unwrap_or_default();
    info_span!(
        "webhook_message",
        message_id = %msg.message_id,
        receive_count = msg.receive_count,
        job_id = %job_id,
        event_id = %event_id,
    )
}

/// The webhook guard the settings ask for, resolving through the services' resolver.
pub fn guard_for(settings: &Settings, services: &Services) -> WebhookGuard {
    WebhookGuard::new(
        GuardPolicy {
            allow_http: settings.webhook_allow_http,
            allow_private: settings.webhook_allow_private,
        },
        services.resolver.clone(),
    )
}

impl WebhookSender {
    /// The sender a process runs over `services`; payload URLs are made absolute under
    /// `public_url`.
    pub fn from_settings(settings: &Settings, services: &Services, public_url: String) -> Self {
        Self::new(
            services.store.clone(),
            services.webhook_secrets.clone(),
            services.blobs.clone(),
            guard_for(settings, services),
            services.clock.clone(),
            services.webhooks_queue.clone(),
            services.webhooks_dlq.clone(),
            SenderConfig {
                retry_delays: settings.webhook_retry_delays.clone(),
                timeout: DELIVERY_TIMEOUT,
                max_queue_delay: MAX_QUEUE_DELAY,
                concurrency: settings.worker_concurrency,
                url_ttl: settings.url_ttl,
                public_url: public_url.trim_end_matches('/').to_owned(),
            },
        )
    }
}

/// The local feed of the sender: receives webhook messages from its queue, delivers them,
/// deletes what is done and brings the rest back soon, until `shutdown` turns `true`.
pub async fn run_webhook_pool(sender: Arc<WebhookSender>, mut shutdown: watch::Receiver<bool>) {
    let queue = Arc::clone(&sender.queue);
    info!("webhook sender started");
    loop {
        let received = tokio::select! {
            r = queue.receive(10, LONG_POLL) => r,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let messages = match received {
            Ok(m) if m.is_empty() => continue,
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "could not receive webhook messages");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.wait_for(|s| *s) => break,
                }
            }
        };
        let handles: Vec<(String, String, u32)> = messages
            .iter()
            .map(|m| {
                (
                    m.message_id.clone(),
                    m.receipt_handle.clone(),
                    m.receive_count,
                )
            })
            .collect();
        let failed = sender.process_batch(messages).await;
        for (id, receipt, count) in handles {
            let settled = if failed.contains(&id) {
                queue.change_visibility(&receipt, retry_delay(count)).await
            } else {
                queue.delete(&receipt).await
            };
            if let Err(e) = settled {
                warn!(message_id = %id, error = %e, "could not settle a webhook message");
            }
        }
    }
    info!("webhook sender stopped");
}
