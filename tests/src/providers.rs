//! Providers for tests: a counting wrapper around any provider.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use kiln_shared::domain::Tier;
use kiln_shared::ports::{GeneratedImage, GenerationRequest, ImageProvider, ProviderError};
use kiln_shared::providers::{ProviderEntry, Providers};
use tokio::time::Instant;

/// Counts the calls made to the provider it wraps.
pub struct Counting {
    inner: Arc<dyn ImageProvider>,
    calls: Arc<AtomicUsize>,
}

impl Counting {
    /// Wraps `inner`; the returned counter sees every call.
    pub fn wrap(inner: Arc<dyn ImageProvider>) -> (Self, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        (
            Self {
                inner,
                calls: calls.clone(),
            },
            calls,
        )
    }

    /// A routing table with this provider alone, for both tiers, at `cost` per image.
    pub fn into_providers(self, cost: f64) -> Providers {
        Providers::new(vec![ProviderEntry {
            provider: Arc::new(self),
            cost_per_image_usd: cost,
            priority: 1,
            tiers: vec![Tier::Standard, Tier::Vip],
        }])
    }
}

#[async_trait]
impl ImageProvider for Counting {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn generate(
        &self,
        req: &GenerationRequest,
        deadline: Instant,
    ) -> Result<Vec<GeneratedImage>, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.generate(req, deadline).await
    }
}
