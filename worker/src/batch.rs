//! The generic batch wrapper: runs a handler for each message of a batch concurrently, each in
//! its own span, and collects the ids of the messages that must come back (SQS
//! `batchItemFailures` semantics).

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::{FutureExt, StreamExt};
use kiln_shared::ports::ReceivedMessage;
use tracing::{Instrument, Span};

/// What to do with a message once its handler is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done with it (handled, or not worth handling): delete it.
    Ack,
    /// It must come back: leave it on the queue to be received again (and, after the last
    /// allowed receive, to move to the dead-letter queue).
    Retry,
}

/// Runs `handler` on every message, at most `concurrency` at once, each inside the span `span`
/// makes for it, and returns the ids of the messages whose outcome is [`Outcome::Retry`] in the
/// order they were given. A handler that panics counts as a retry instead of failing the batch.
pub async fn run_batch<F, Fut>(
    messages: Vec<ReceivedMessage>,
    concurrency: usize,
    span: impl Fn(&ReceivedMessage) -> Span,
    handler: F,
) -> Vec<String>
where
    F: Fn(ReceivedMessage) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let runs = messages.into_iter().enumerate().map(|(i, msg)| {
        let span = span(&msg);
        let id = msg.message_id.clone();
        let run = AssertUnwindSafe(handler(msg)).catch_unwind();
        async move {
            let outcome = run.await.unwrap_or_else(|_| {
                tracing::error!("message handler panicked; the message will come back");
                Outcome::Retry
            });
            (i, id, outcome)
        }
        .instrument(span)
    });
    let mut failed: Vec<(usize, String)> = futures::stream::iter(runs)
        .buffer_unordered(concurrency.max(1))
        .filter_map(
            |(i, id, outcome)| async move { (outcome == Outcome::Retry).then_some((i, id)) },
        )
        .collect()
        .await;
    failed.sort_unstable_by_key(|(i, _)| *i);
    failed.into_iter().map(|(_, id)| id).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn msg(id: &str, body: &str) -> ReceivedMessage {
        ReceivedMessage {
            message_id: id.into(),
            receipt_handle: format!("r-{id}"),
            body: body.into(),
            receive_count: 1,
            sent_at: chrono::Utc::now(),
        }
    }

    #[tokio::test]
    async fn returns_exactly_the_failed_ids_in_order_and_bounds_concurrency() {
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let messages: Vec<_> = (0..8)
            .map(|i| msg(&format!("m{i}"), if i % 3 == 0 { "fail" } else { "ok" }))
            .collect();
        let failed = run_batch(
            messages,
            3,
            |m| tracing::info_span!("message", message_id = %m.message_id),
            |m| {
                let (running, peak) = (running.clone(), peak.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    // Later messages finish first, so completion order differs from input order.
                    let n: u64 = m.message_id[1..].parse().unwrap();
                    tokio::time::sleep(Duration::from_millis(40 - n * 4)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    if m.body == "fail" {
                        Outcome::Retry
                    } else {
                        Outcome::Ack
                    }
                }
            },
        )
        .await;
        assert_eq!(failed, ["m0", "m3", "m6"]);
        assert!(peak.load(Ordering::SeqCst) <= 3);
        assert!(peak.load(Ordering::SeqCst) >= 2, "ran concurrently");
    }

    #[tokio::test]
    async fn a_panicking_handler_fails_only_its_message() {
        let failed = run_batch(
            vec![msg("a", "ok"), msg("b", "panic")],
            2,
            |_| Span::none(),
            |m| async move {
                if m.body == "panic" {
                    panic!("boom");
                }
                Outcome::Ack
            },
        )
        .await;
        assert_eq!(failed, ["b"]);
    }
}
