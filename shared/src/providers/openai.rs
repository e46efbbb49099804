//! The `openai` protocol: the OpenAI Images API (`POST {endpoint}/images/generations`) and every
//! service compatible with it, such as Doubao Seedream on Volcengine Ark. Images come back as
//! `b64_json` or as a `url` that is downloaded, bounded in bytes and time.

use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::http::{
    budget, classify, failure, read_bounded, scrub, transport, within, MAX_RESPONSE_BYTES,
};
use crate::config::Secret;
use crate::domain::Quality;
use crate::ports::{GeneratedImage, GenerationRequest, ImageProvider, ProviderError};

/// Largest single image downloaded from a `url` answer.
const MAX_DOWNLOAD_BYTES: usize = 20 * 1024 * 1024;

/// A provider speaking the OpenAI Images API.
pub struct OpenAiProvider {
    name: String,
    endpoint: String,
    model: String,
    key: Secret,
    http: reqwest::Client,
    timeout: Duration,
    extra: Map<String, Value>,
}

impl OpenAiProvider {
    /// A provider at `endpoint` (e.g. `https://api.openai.com/v1`); `extra` is merged into
    /// every request body (e.g. `response_format`, `watermark`).
    pub fn new(
        name: String,
        endpoint: String,
        model: String,
        key: Secret,
        http: reqwest::Client,
        timeout: Duration,
        extra: Map<String, Value>,
    ) -> Self {
        Self {
            name,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            model,
            key,
            http,
            timeout,
            extra,
        }
    }

    fn body(&self, req: &GenerationRequest) -> Value {
        let mut body = json!({
            "model": self.model,
            "prompt": req.prompt,
            "n": req.n,
            "size": req.size.to_string(),
        });
        if req.quality == Quality::High {
            body["quality"] = json!("high");
        }
        for (k, v) in &self.extra {
            body[k] = v.clone();
        }
        body
    }

    async fn download(&self, url: &str, deadline: Instant) -> Result<Vec<u8>, ProviderError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let resp = self
            .http
            .get(url)
            .timeout(left)
            .send()
            .await
            .map_err(|e| transport(&e, left))?;
        if !resp.status().is_success() {
            return Err(failure(resp, &self.key, left).await);
        }
        read_bounded(resp, MAX_DOWNLOAD_BYTES, left).await
    }
}

#[async_trait]
impl ImageProvider for OpenAiProvider {
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
            let resp = self
                .http
                .post(format!("{}/images/generations", self.endpoint))
                .bearer_auth(self.key.expose())
                .json(&self.body(req))
                .timeout(left)
                .send()
                .await
                .map_err(|e| transport(&e, left))?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = read_bounded(resp, MAX_RESPONSE_BYTES, left).await?;
            if !status.is_success() {
                return Err(classify(status, &headers, &body, Some(&self.key)));
            }
            let parsed: Value =
                serde_json::from_slice(&body).map_err(|e| ProviderError::Transient {
                    status: Some(status.as_u16()),
                    message: scrub(&format!("answer is not JSON: {e}"), None),
                    retry_after: None,
                })?;
            let data = parsed["data"]
                .as_array()
                .filter(|d| !d.is_empty())
                .ok_or_else(|| ProviderError::InvalidImage("answer has no `data` images".into()))?;
            let mut images = Vec::with_capacity(data.len());
            for item in data.iter().take(usize::from(req.n)) {
                let bytes = if let Some(b64) = item["b64_json"].as_str() {
                    STANDARD
                        .decode(b64)
                        .map_err(|e| ProviderError::InvalidImage(format!("b64_json: {e}")))?
                } else if let Some(url) = item["url"].as_str() {
                    self.download(url, Instant::now() + left).await?
                } else {
                    return Err(ProviderError::InvalidImage(
                        "image has neither b64_json nor url".into(),
                    ));
                };
                images.push(GeneratedImage { bytes });
            }
            Ok(images)
        };
        within(left, call).await
    }
}
