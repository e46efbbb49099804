//! Image providers and the routing between them.
//!
//! Routing policy (the seed design's, kept as the default): a job is only sent to providers
//! whose `tiers` list its owner's tier. The first provider tried is the *cheapest* one for
//! `standard` and the *most expensive* one for `vip` (cost stands in for quality: a provider
//! that charges more per image is the higher-quality one). After that first choice, the others
//! follow by `priority`, lowest number first, as fallbacks. Ties break on priority, then cost,
//! then the order the entries were configured in.

pub mod breaker;
pub mod dispatch;
pub mod file;
pub mod http;
pub mod limited;
pub mod local;
pub mod openai;
pub mod stability;

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::domain::Tier;
use crate::ports::ImageProvider;

pub use dispatch::{CheckedImage, DispatchError, Dispatcher, Generated, RetryPolicy};
pub use local::LocalProvider;

/// One configured provider and how routing treats it.
#[derive(Clone)]
pub struct ProviderEntry {
    /// The provider.
    pub provider: Arc<dyn ImageProvider>,
    /// What one image costs, in US dollars.
    pub cost_per_image_usd: f64,
    /// Fallback order: lower numbers are tried first.
    pub priority: u32,
    /// Tiers whose jobs may use this provider.
    pub tiers: Vec<Tier>,
}

impl std::fmt::Debug for ProviderEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderEntry")
            .field("provider", &self.provider.name())
            .field("cost_per_image_usd", &self.cost_per_image_usd)
            .field("priority", &self.priority)
            .field("tiers", &self.tiers)
            .finish()
    }
}

/// The routing table: every configured provider.
#[derive(Debug, Clone)]
pub struct Providers {
    entries: Vec<ProviderEntry>,
}

impl Providers {
    /// A table of these entries.
    pub fn new(entries: Vec<ProviderEntry>) -> Self {
        Self { entries }
    }

    /// The built-in renderer alone, free, serving every tier.
    pub fn local_only(latency: Duration) -> Self {
        Self::new(vec![ProviderEntry {
            provider: Arc::new(LocalProvider::new(latency)),
            cost_per_image_usd: 0.0,
            priority: 1,
            tiers: vec![Tier::Standard, Tier::Vip],
        }])
    }

    /// Every entry, in configured order.
    pub fn entries(&self) -> &[ProviderEntry] {
        &self.entries
    }

    /// The providers to try for a job of `tier`, in order (see the module docs for the policy).
    pub fn route(&self, tier: Tier) -> Vec<&ProviderEntry> {
        let mut eligible: Vec<&ProviderEntry> = self
            .entries
            .iter()
            .filter(|e| e.tiers.contains(&tier))
            .collect();
        // Stable sort: equal entries keep their configured order.
        eligible.sort_by(|a, b| by_priority(a, b));
        let first = match tier {
            Tier::Standard => eligible
                .iter()
                .enumerate()
                .min_by(|(_, a), (_, b)| cost(a, b).then_with(|| by_priority(a, b))),
            Tier::Vip => eligible
                .iter()
                .enumerate()
                // `min_by` keeps the first of equals, so reverse only the cost.
                .min_by(|(_, a), (_, b)| cost(b, a).then_with(|| by_priority(a, b))),
        }
        .map(|(i, _)| i);
        if let Some(i) = first {
            let head = eligible.remove(i);
            eligible.insert(0, head);
        }
        eligible
    }
}

fn cost(a: &ProviderEntry, b: &ProviderEntry) -> Ordering {
    a.cost_per_image_usd.total_cmp(&b.cost_per_image_usd)
}

fn by_priority(a: &ProviderEntry, b: &ProviderEntry) -> Ordering {
    a.priority.cmp(&b.priority).then_with(|| cost(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, cost: f64, priority: u32, tiers: &[Tier]) -> ProviderEntry {
        ProviderEntry {
            provider: Arc::new(LocalProvider::named(name, Duration::ZERO)),
            cost_per_image_usd: cost,
            priority,
            tiers: tiers.to_vec(),
        }
    }

    fn names(route: Vec<&ProviderEntry>) -> Vec<&str> {
        route.into_iter().map(|e| e.provider.name()).collect()
    }

    const BOTH: &[Tier] = &[Tier::Standard, Tier::Vip];

    #[test]
    fn standard_starts_cheapest_vip_starts_most_expensive_then_priority() {
        let p = Providers::new(vec![
            entry("premium", 0.08, 3, BOTH),
            entry("mid", 0.04, 1, BOTH),
            entry("budget", 0.01, 2, BOTH),
            entry("vip-only", 0.12, 4, &[Tier::Vip]),
        ]);
        assert_eq!(names(p.route(Tier::Standard)), ["budget", "mid", "premium"]);
        assert_eq!(
            names(p.route(Tier::Vip)),
            ["vip-only", "mid", "budget", "premium"]
        );
    }

    #[test]
    fn ties_keep_priority_then_configured_order() {
        let p = Providers::new(vec![
            entry("b", 0.0, 2, BOTH),
            entry("a", 0.0, 1, BOTH),
            entry("c", 0.0, 1, BOTH),
        ]);
        assert_eq!(names(p.route(Tier::Standard)), ["a", "c", "b"]);
        assert_eq!(names(p.route(Tier::Vip)), ["a", "c", "b"]);
    }

    #[test]
    fn a_tier_with_no_provider_routes_nowhere() {
        let p = Providers::new(vec![entry("vip", 0.1, 1, &[Tier::Vip])]);
        assert!(p.route(Tier::Standard).is_empty());
        assert_eq!(
            names(Providers::local_only(Duration::ZERO).route(Tier::Vip)),
            ["local"]
        );
    }
}
