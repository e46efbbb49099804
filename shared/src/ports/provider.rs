//! Image providers: something that turns a prompt into image bytes.

use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::domain::{ImageSize, Quality};

/// What a provider is asked to make; the prompt has any template already expanded.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// Full prompt.
    pub prompt: String,
    /// What to avoid.
    pub negative_prompt: Option<String>,
    /// How many images.
    pub n: u8,
    /// Their size.
    pub size: ImageSize,
    /// Seed, where supported.
    pub seed: Option<u64>,
    /// Quality hint.
    pub quality: Quality,
}

/// Bytes a provider returned, not yet checked.
#[derive(Debug, Clone)]
pub struct GeneratedImage {
    /// Encoded image.
    pub bytes: Vec<u8>,
}

/// Failures of an [`ImageProvider`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying: 429, 5xx, connection errors.
    #[error("provider transient error{}: {message}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    Transient {
        /// HTTP status, if the provider answered.
        status: Option<u16>,
        /// What happened.
        message: String,
        /// How long the provider asked us to wait.
        retry_after: Option<Duration>,
    },
    /// The call ran out of time.
    #[error("provider timed out after {0:?}")]
    Timeout(Duration),
    /// Not worth retrying anywhere: bad request, content policy.
    #[error("provider rejected the request ({code}): {message}")]
    Rejected {
        /// HTTP status, if any.
        status: Option<u16>,
        /// Stable code (`content_policy`, `bad_request`, `unauthorized`).
        code: String,
        /// What the provider said (secrets removed).
        message: String,
    },
    /// The provider answered with something that is not a usable image.
    #[error("provider returned an invalid image: {0}")]
    InvalidImage(String),
}

impl ProviderError {
    /// Whether trying again (here or on another provider) could help.
    pub fn retriable(&self) -> bool {
        !matches!(self, Self::Rejected { .. })
    }

    /// The stable code recorded on attempts and job errors.
    pub fn code(&self) -> &str {
        match self {
            Self::Transient {
                status: Some(429), ..
            } => "rate_limited",
            Self::Transient { .. } => "provider_error",
            Self::Timeout(_) => "timeout",
            Self::Rejected { code, .. } => code,
            Self::InvalidImage(_) => "invalid_image",
        }
    }

    /// HTTP status the provider answered, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Transient { status, .. } | Self::Rejected { status, .. } => *status,
            _ => None,
        }
    }
}

/// An image generator.
#[async_trait]
pub trait ImageProvider: Send + Sync + 'static {
    /// The provider's configured name.
    fn name(&self) -> &str;

    /// Generates `req.n` images, giving up at `deadline`.
    async fn generate(
        &self,
        req: &GenerationRequest,
        deadline: Instant,
    ) -> Result<Vec<GeneratedImage>, ProviderError>;
}
