//! The bench's providers: a fixed small PNG, at once or after a fixed delay.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kiln_shared::domain::Tier;
use kiln_shared::ports::{GeneratedImage, GenerationRequest, ImageProvider, ProviderError};
use kiln_shared::providers::{ProviderEntry, Providers};
use tokio::time::Instant;

/// Answers every request with the same small PNG after `delay`.
pub struct FixedImage {
    image: Vec<u8>,
    delay: Duration,
}

impl FixedImage {
    /// A provider that answers after `delay` (zero: at once).
    pub fn new(delay: Duration) -> Self {
        Self {
            image: kiln_tests::fake_provider::png(64, 64),
            delay,
        }
    }

    /// The routing table of this provider alone, for every tier.
    pub fn providers(delay: Duration) -> Providers {
        Providers::new(vec![ProviderEntry {
            provider: Arc::new(Self::new(delay)),
            cost_per_image_usd: 0.002,
            priority: 1,
            tiers: vec![Tier::Standard, Tier::Vip],
        }])
    }
}

#[async_trait]
impl ImageProvider for FixedImage {
    fn name(&self) -> &str {
        "fixed"
    }

    async fn generate(
        &self,
        req: &GenerationRequest,
        _deadline: Instant,
    ) -> Result<Vec<GeneratedImage>, ProviderError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        Ok((0..req.n)
            .map(|_| GeneratedImage {
                bytes: self.image.clone(),
            })
            .collect())
    }
}
