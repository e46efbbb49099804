//! A circuit breaker per provider: it opens after consecutive failures, lets one trial call
//! through after a cool-down (half-open), and closes again on success. Time comes from the
//! caller, so tests move it without sleeping.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::clock::after;

/// When a breaker opens and for how long.
#[derive(Debug, Clone, Copy)]
pub struct BreakerPolicy {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long it stays open before one trial call is allowed.
    pub cool_down: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cool_down: Duration::from_secs(30),
        }
    }
}

/// The breaker's state, as shown to operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are skipped until the given time.
    Open {
        /// When a trial call will be allowed.
        until: DateTime<Utc>,
    },
    /// One trial call is in flight; others are skipped.
    HalfOpen,
}

#[derive(Debug)]
struct Inner {
    failures: u32,
    state: BreakerState,
}

/// One provider's breaker.
#[derive(Debug)]
pub struct Breaker {
    policy: BreakerPolicy,
    inner: Mutex<Inner>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(policy: BreakerPolicy) -> Self {
        Self {
            policy,
            inner: Mutex::new(Inner {
                failures: 0,
                state: BreakerState::Closed,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned breaker is still a valid breaker: its state is two plain fields.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a call may go through now; an open breaker past its cool-down lets exactly one
    /// trial call through.
    pub fn allow(&self, now: DateTime<Utc>) -> bool {
        let mut g = self.lock();
        match g.state {
            BreakerState::Closed => true,
            BreakerState::Open { until } if now >= until => {
                g.state = BreakerState::HalfOpen;
                true
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen => false,
        }
    }

    /// Records a success: the circuit closes.
    pub fn succeeded(&self) {
        let mut g = self.lock();
        g.failures = 0;
        g.state = BreakerState::Closed;
    }

    /// Records a failure: the circuit opens after the threshold, or at once if this was the trial.
    pub fn failed(&self, now: DateTime<Utc>) {
        let mut g = self.lock();
        g.failures = g.failures.saturating_add(1);
        if g.state == BreakerState::HalfOpen || g.failures >= self.policy.failure_threshold {
            g.state = BreakerState::Open {
                until: after(now, self.policy.cool_down),
            };
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.lock().state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_half_opens_and_closes() {
        let b = Breaker::new(BreakerPolicy {
            failure_threshold: 3,
            cool_down: Duration::from_secs(10),
        });
        let t0 = Utc::now();
        for _ in 0..2 {
            assert!(b.allow(t0));
            b.failed(t0);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.failed(t0);
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        assert!(!b.allow(t0 + chrono::Duration::seconds(9)));
        assert!(
            b.allow(t0 + chrono::Duration::seconds(10)),
            "trial after the cool-down"
        );
        assert!(
            !b.allow(t0 + chrono::Duration::seconds(10)),
            "only one trial"
        );
        b.failed(t0 + chrono::Duration::seconds(10));
        assert!(
            !b.allow(t0 + chrono::Duration::seconds(15)),
            "a failed trial reopens"
        );
        assert!(b.allow(t0 + chrono::Duration::seconds(21)));
        b.succeeded();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow(t0 + chrono::Duration::seconds(21)));
    }
}
