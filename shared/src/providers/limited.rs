//! A cap on the calls in flight to one provider (`max_concurrency`).

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::ports::{GeneratedImage, GenerationRequest, ImageProvider, ProviderError};

/// Wraps a provider so that at most `max` calls run at once; a caller waits for a slot until
/// its deadline, then gives up with a timeout.
pub struct Limited {
    inner: Arc<dyn ImageProvider>,
    slots: Semaphore,
}

impl Limited {
    /// At most `max` concurrent calls to `inner`.
    pub fn new(inner: Arc<dyn ImageProvider>, max: usize) -> Self {
        Self {
            inner,
            slots: Semaphore::new(max.max(1)),
        }
    }
}

#[async_trait]
impl ImageProvider for Limited {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn generate(
        &self,
        req: &GenerationRequest,
        deadline: Instant,
    ) -> Result<Vec<GeneratedImage>, ProviderError> {
        let waited = Instant::now();
        let _permit = match tokio::time::timeout_at(deadline, self.slots.acquire()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) | Err(_) => return Err(ProviderError::Timeout(waited.elapsed())),
        };
        self.inner.generate(req, deadline).await
    }
}
