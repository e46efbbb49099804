//! The `stability` protocol: Stability AI REST v2beta
//! (`POST {endpoint}/v2beta/stable-image/generate/{model}`, multipart form, image bytes back,
//! one image a call).

use std::time::Duration;

use async_trait::async_trait;
use reqwest::multipart::Form;
use tokio::time::Instant;

use super::http::{budget, failure, read_bounded, transport, within};
use crate::config::Secret;
use crate::domain::ImageSize;
use crate::ports::{GeneratedImage, GenerationRequest, ImageProvider, ProviderError};

const MAX_IMAGE_BYTES: usize = 20 * 1024 * 1024;

/// Aspect ratios the API accepts, as (name, width/height).
const RATIOS: &[(&str, f64)] = &[
    ("1:1", 1.0),
    ("16:9", 16.0 / 9.0),
    ("21:9", 21.0 / 9.0),
    ("2:3", 2.0 / 3.0),
    ("3:2", 1.5),
    ("4:5", 0.8),
    ("5:4", 1.25),
    ("9:16", 9.0 / 16.0),
    ("9:21", 9.0 / 21.0),
];

/// The accepted aspect ratio nearest to `size`.
pub fn aspect_ratio(size: ImageSize) -> &'static str {
    let want = f64::from(size.width) / f64::from(size.height);
    RATIOS
        .iter()
        .min_by(|a, b| (a.1 - want).abs().total_cmp(&(b.1 - want).abs()))
        .map(|r| r.0)
        .unwrap_or("1:1")
}

/// A provider speaking Stability AI's v2beta API.
pub struct StabilityProvider {
    name: String,
    endpoint: String,
    model: String,
    key: Secret,
    http: reqwest::Client,
    timeout: Duration,
}

impl StabilityProvider {
    /// A provider at `endpoint` (e.g. `https://api.stability.ai`) for `model` (`core`, `ultra`, `sd3`).
    pub fn new(
        name: String,
        endpoint: String,
        model: String,
        key: Secret,
        http: reqwest::Client,
        timeout: Duration,
    ) -> Self {
        Self {
            name,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            model,
            key,
            http,
            timeout,
        }
    }

    async fn one(
        &self,
        req: &GenerationRequest,
        index: u8,
        left: Duration,
    ) -> Result<GeneratedImage, ProviderError> {
        let mut form = Form::new()
            .text("prompt", req.prompt.clone())
            .text("aspect_ratio", aspect_ratio(req.size))
            .text("output_format", "png");
        if let Some(n) = &req.negative_prompt {
            form = form.text("negative_prompt", n.clone());
        }
        if let Some(seed) = req.seed {
            // Each image of a job gets its own seed, so n images differ but stay repeatable.
            form = form.text(
                "seed",
                (seed.wrapping_add(u64::from(index)) % 4_294_967_295).to_string(),
            );
        }
        let resp = self
            .http
            .post(format!(
                "{}/v2beta/stable-image/generate/{}",
                self.endpoint, self.model
            ))
            .bearer_auth(self.key.expose())
            .header("accept", "image/*")
            .multipart(form)
            .timeout(left)
            .send()
            .await
            .map_err(|e| transport(&e, left))?;
        if !resp.status().is_success() {
            return Err(failure(resp, &self.key, left).await);
        }
        Ok(GeneratedImage {
            bytes: read_bounded(resp, MAX_IMAGE_BYTES, left).await?,
        })
    }
}

#[async_trait]
impl ImageProvider for StabilityProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn generate(
        &self,
        req: &GenerationRequest,
        deadline: Instant,
    ) -> Result<Vec<GeneratedImage>, ProviderError> {
        let left = budget(deadline, self.timeout);
        let call = async {
            let mut images = Vec::with_capacity(usize::from(req.n));
            for i in 0..req.n {
                images.push(self.one(req, i, left).await?);
            }
            Ok(images)
        };
        within(left, call).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_map_to_the_nearest_ratio() {
        let s = |w, h| {
            aspect_ratio(ImageSize {
                width: w,
                height: h,
            })
        };
        assert_eq!(s(1024, 1024), "1:1");
        assert_eq!(s(1792, 1024), "16:9");
        assert_eq!(s(1024, 1536), "2:3");
        assert_eq!(s(1024, 1792), "9:16");
    }
}
