//! Dispatch: one job's images from the providers its tier may use. Each provider is retried on
//! transient errors with exponential backoff and full jitter (backon), honouring `Retry-After`,
//! never past the deadline; then the next provider takes over. A provider whose breaker is open
//! is skipped. A non-retriable refusal (bad request, content policy) ends the job at once.
//! Every call is recorded as an [`Attempt`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::future::BoxFuture;
use rand::Rng;
use tokio::time::Instant;
use tracing::Instrument;

use super::breaker::{Breaker, BreakerPolicy};
use super::Providers;
use crate::clock::Clock;
use crate::domain::{Attempt, JobError, Tier};
use crate::images::{inspect, ImageInfo, ImageLimits};
use crate::ports::{GenerationRequest, ProviderError};

/// How one provider is retried before falling back to the next.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// First backoff ceiling.
    pub min_delay: Duration,
    /// Largest backoff ceiling (a `Retry-After` may ask for more, up to the deadline).
    pub max_delay: Duration,
    /// Calls per provider, the first included.
    pub max_attempts: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
            max_attempts: 3,
        }
    }
}

/// How the dispatcher waits between retries; tests pass one that records and returns at once.
pub type Sleeper = Arc<dyn Fn(Duration) -> BoxFuture<'static, ()> + Send + Sync>;

/// Adapts a [`Sleeper`] to backon's trait with a nameable future type, which keeps the
/// dispatch future `Send` (a closure sleeper makes the compiler lose track of it).
struct DynSleeper(Sleeper);

impl backon::Sleeper for DynSleeper {
    type Sleep = BoxFuture<'static, ()>;

    fn sleep(&self, dur: Duration) -> Self::Sleep {
        (self.0)(dur)
    }
}

/// The real sleeper.
pub fn tokio_sleeper() -> Sleeper {
    Arc::new(|d| Box::pin(tokio::time::sleep(d)))
}

/// A checked image, ready to store.
#[derive(Debug, Clone)]
pub struct CheckedImage {
    /// Encoded bytes.
    pub bytes: Vec<u8>,
    /// What the check found.
    pub info: ImageInfo,
}

/// A successful dispatch.
#[derive(Debug)]
pub struct Generated {
    /// The provider that made the images.
    pub provider: String,
    /// The images, checked.
    pub images: Vec<CheckedImage>,
    /// Every call made, failures included.
    pub attempts: Vec<Attempt>,
}

/// A failed dispatch: why, and every call made.
#[derive(Debug)]
pub struct DispatchError {
    /// What the job's error becomes.
    pub error: JobError,
    /// Every call made.
    pub attempts: Vec<Attempt>,
}

/// Sends jobs to providers.
pub struct Dispatcher {
    providers: Arc<Providers>,
    breakers: Vec<Breaker>,
    clock: Arc<dyn Clock>,
    retry: RetryPolicy,
    sleeper: Sleeper,
    limits: ImageLimits,
}

/// Why one provider gave up, for the job's error message.
struct ProviderFailure {
    name: String,
    error: ProviderError,
}

impl Dispatcher {
    /// A dispatcher over `providers` with default retry, breaker and image limits.
    pub fn new(providers: Arc<Providers>, clock: Arc<dyn Clock>) -> Self {
        Self::with_policies(
            providers,
            clock,
            RetryPolicy::default(),
            BreakerPolicy::default(),
            tokio_sleeper(),
        )
    }

    /// A dispatcher with explicit policies and sleeper.
    pub fn with_policies(
        providers: Arc<Providers>,
        clock: Arc<dyn Clock>,
        retry: RetryPolicy,
        breaker: BreakerPolicy,
        sleeper: Sleeper,
    ) -> Self {
        let breakers = providers
            .entries()
            .iter()
            .map(|_| Breaker::new(breaker))
            .collect();
        Self {
            providers,
            breakers,
            clock,
            retry,
            sleeper,
            limits: ImageLimits::default(),
        }
    }

    /// The breaker of the provider named `name`.
    pub fn breaker(&self, name: &str) -> Option<&Breaker> {
        let i = self
            .providers
            .entries()
            .iter()
            .position(|e| e.provider.name() == name)?;
        self.breakers.get(i)
    }

    /// Generates `req` for a job of `tier`, before `deadline`.
    pub async fn generate<'a>(
        &'a self,
        tier: Tier,
        req: &'a GenerationRequest,
        deadline: Instant,
    ) -> Result<Generated, DispatchError> {
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let mut failures: Vec<ProviderFailure> = Vec::new();
        let entries = self.providers.entries();
        for entry in self.providers.route(tier) {
            let index = entries
                .iter()
                .position(|e| std::ptr::eq(e, entry))
                .unwrap_or(0);
            let breaker = &self.breakers[index];
            let name = entry.provider.name().to_owned();
            if Instant::now() >= deadline {
                break;
            }
            if !failures.is_empty() {
                crate::metrics::fallback();
            }
            if !breaker.allow(self.clock.now()) {
                record(
                    &attempts,
                    &name,
                    "circuit_open",
                    None,
                    Duration::ZERO,
                    0.0,
                    self.clock.now(),
                );
                failures.push(ProviderFailure {
                    name,
                    error: ProviderError::Transient {
                        status: None,
                        message: "circuit open: skipped".into(),
                        retry_after: None,
                    },
                });
                continue;
            }
            let call = || -> BoxFuture<'a, Result<Vec<CheckedImage>, ProviderError>> {
                let attempts = attempts.clone();
                let name = name.clone();
                Box::pin(async move {
                    let attempt = attempts.lock().map(|a| a.len() + 1).unwrap_or(0);
                    let span = tracing::info_span!("provider", provider = %name, attempt);
                    let started_at = self.clock.now();
                    let t = Instant::now();
                    let result = self
                        .call_once(entry, req, deadline)
                        .instrument(span.clone())
                        .await;
                    let latency = t.elapsed();
                    match &result {
                        Ok(images) => {
                            breaker.succeeded();
                            let cost = entry.cost_per_image_usd * images.len() as f64;
                            tracing::info!(parent: &span, latency_ms = latency.as_millis() as u64, "provider succeeded");
                            record(&attempts, &name, "success", None, latency, cost, started_at);
                        }
                        Err(e) => {
                            if matches!(e, ProviderError::Rejected { .. }) {
                                // The request's fault, not the provider's: the provider is up.
                                breaker.succeeded();
                            } else {
                                breaker.failed(self.clock.now());
                            }
                            tracing::warn!(parent: &span, latency_ms = latency.as_millis() as u64, error = %e, "provider failed");
                            record(
                                &attempts,
                                &name,
                                e.code(),
                                e.status(),
                                latency,
                                0.0,
                                started_at,
                            );
                        }
                    }
                    result
                })
            };
            let backoff = ExponentialBuilder::default()
                .with_min_delay(self.retry.min_delay)
                .with_max_delay(self.retry.max_delay)
                .with_max_times(self.retry.max_attempts.saturating_sub(1));
            let sleeper = self.sleeper.clone();
            let outcome = call
                .retry(backoff)
                .sleep(DynSleeper(sleeper))
                // Only a transient error is worth the same provider again; a bad image goes elsewhere.
                .when(is_transient)
                .adjust(|e: &ProviderError, ceiling: Option<Duration>| {
                    let ceiling = ceiling?;
                    let jittered = rand::rng().random_range(Duration::ZERO..=ceiling);
                    let wait = match e {
                        ProviderError::Transient {
                            retry_after: Some(ra),
                            ..
                        } => jittered.max(*ra),
                        _ => jittered,
                    };
                    // Retrying only makes sense if a call could still finish before the deadline.
                    (Instant::now() + wait < deadline).then_some(wait)
                })
                .await;
            match outcome {
                Ok(images) => {
                    return Ok(Generated {
                        provider: name,
                        images,
                        attempts: take(&attempts),
                    });
                }
                Err(error @ ProviderError::Rejected { .. }) => {
                    let job_error = JobError {
                        code: error.code().to_owned(),
                        message: format!("{name}: {error}"),
                        retriable: false,
                    };
                    return Err(DispatchError {
                        error: job_error,
                        attempts: take(&attempts),
                    });
                }
                Err(error) => {
                    tracing::warn!(provider = %name, error = %error, "provider failed; falling back");
                    failures.push(ProviderFailure { name, error });
                }
            }
        }
        let attempts = take(&attempts);
        let (code, message) = if failures.is_empty() && Instant::now() >= deadline {
            (
                "deadline_exceeded",
                "no time left to call a provider".to_owned(),
            )
        } else if failures.is_empty() {
            ("no_provider", format!("no provider serves tier {tier}"))
        } else {
            let reasons: Vec<String> = failures
                .iter()
                .map(|f| format!("{}: {}", f.name, f.error))
                .collect();
            (
                "provider_unavailable",
                format!("every provider failed: {}", reasons.join("; ")),
            )
        };
        Err(DispatchError {
            error: JobError {
                code: code.into(),
                message,
                retriable: true,
            },
            attempts,
        })
    }
}

impl Dispatcher {
    /// One call, cut off at `deadline` even if the provider ignores it, and its images checked.
    async fn call_once(
        &self,
        entry: &super::ProviderEntry,
        req: &GenerationRequest,
        deadline: Instant,
    ) -> Result<Vec<CheckedImage>, ProviderError> {
        let t0 = Instant::now();
        let images = tokio::time::timeout_at(deadline, entry.provider.generate(req, deadline))
            .await
            .unwrap_or_else(|_| Err(ProviderError::Timeout(t0.elapsed())))?;
        let wanted = usize::from(req.n);
        if images.len() < wanted {
            return Err(ProviderError::InvalidImage(format!(
                "asked for {wanted} images, got {}",
                images.len()
            )));
        }
        let limits = self.limits;
        // Decoding headers and hashing up to 20 MiB an image is CPU work: off the runtime threads.
        tokio::task::spawn_blocking(move || {
            images
                .into_iter()
                .take(wanted)
                .enumerate()
                .map(|(i, g)| match inspect(&g.bytes, &limits) {
                    Ok(info) => Ok(CheckedImage {
                        bytes: g.bytes,
                        info,
                    }),
                    Err(e) => Err(ProviderError::InvalidImage(format!("image {i}: {e}"))),
                })
                .collect()
        })
        .await
        .map_err(|e| ProviderError::InvalidImage(format!("image check did not finish: {e}")))?
    }
}

fn take(attempts: &Mutex<Vec<Attempt>>) -> Vec<Attempt> {
    std::mem::take(&mut *attempts.lock().unwrap_or_else(|p| p.into_inner()))
}

fn is_transient(e: &ProviderError) -> bool {
    matches!(
        e,
        ProviderError::Transient { .. } | ProviderError::Timeout(_)
    )
}

fn record(
    attempts: &Mutex<Vec<Attempt>>,
    provider: &str,
    outcome: &str,
    status_code: Option<u16>,
    latency: Duration,
    cost_usd: f64,
    started_at: chrono::DateTime<chrono::Utc>,
) {
    crate::metrics::provider_call(provider, outcome, latency, cost_usd);
    let attempt = Attempt {
        provider: provider.to_owned(),
        outcome: outcome.to_owned(),
        status_code,
        latency_ms: latency.as_millis().min(u128::from(u64::MAX)) as u64,
        cost_usd,
        started_at,
    };
    attempts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(attempt);
}

/// Compile-time check: workers spawn dispatches on a multi-threaded runtime.
#[allow(dead_code)]
fn dispatch_future_is_send(d: &Dispatcher, req: &GenerationRequest) {
    fn is_send<T: Send>(_: T) {}
    is_send(d.generate(Tier::Standard, req, Instant::now()));
}
