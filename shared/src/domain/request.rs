//! Validated generation requests. A [`JobRequest`] can only be built by [`SubmitJob::validate`],
//! so once built it is valid and nothing downstream checks it again.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{Webhook, WebhookEvent};

/// Longest prompt accepted, in characters.
pub const MAX_PROMPT_CHARS: usize = 4000;
/// Longest negative prompt accepted, in characters.
pub const MAX_NEGATIVE_PROMPT_CHARS: usize = 2000;
/// Longest `style`, `character` or `template` name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Most images one job may ask for.
pub const MAX_IMAGES: u8 = 4;
/// Largest client `metadata`, as compact JSON bytes.
pub const MAX_METADATA_BYTES: usize = 4096;
/// Most keys in client `metadata`.
pub const MAX_METADATA_KEYS: usize = 32;

/// Sizes a job may ask for, as `WIDTHxHEIGHT`.
pub const ALLOWED_SIZES: &[(u32, u32)] = &[
    (256, 256),
    (512, 512),
    (768, 768),
    (1024, 1024),
    (1024, 1536),
    (1536, 1024),
    (1024, 1792),
    (1792, 1024),
];

/// A request field that failed validation, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The field's name as the client sent it (`request.n`, `metadata`, ...).
    pub field: String,
    /// What is wrong, in words a client can act on.
    pub message: String,
}

impl ValidationError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An image size from [`ALLOWED_SIZES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageSize {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl Default for ImageSize {
    fn default() -> Self {
        Self {
            width: 1024,
            height: 1024,
        }
    }
}

impl FromStr for ImageSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let allowed = || {
            ALLOWED_SIZES
                .iter()
                .map(|(w, h)| format!("{w}x{h}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let parsed = s
            .split_once('x')
            .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)));
        match parsed {
            Some((width, height)) if ALLOWED_SIZES.contains(&(width, height)) => {
                Ok(Self { width, height })
            }
            _ => Err(format!("must be one of {} (got {s:?})", allowed())),
        }
    }
}

impl fmt::Display for ImageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

impl Serialize for ImageSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ImageSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Requested quality; providers map it to their own settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    /// The provider's default.
    #[default]
    Standard,
    /// The provider's best.
    High,
}

/// A valid generation request, as stored on a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    /// What to draw; non-blank, at most [`MAX_PROMPT_CHARS`].
    pub prompt: String,
    /// What to avoid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    /// How many images, 1 to [`MAX_IMAGES`].
    pub n: u8,
    /// Image size.
    pub size: ImageSize,
    /// Style name (a template fragment or a free label).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub style: Option<String>,
    /// Character name (a template fragment or a free label).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub character: Option<String>,
    /// Prompt template name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Seed for reproducible output where the provider supports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Requested quality.
    pub quality: Quality,
}

/// The body of `POST /v1/jobs` as a client sends it, before validation. Unknown fields are
/// refused so that a typo does not silently fall back to a default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    /// See [`JobRequest::prompt`].
    pub prompt: Option<String>,
    /// See [`JobRequest::negative_prompt`].
    pub negative_prompt: Option<String>,
    /// See [`JobRequest::n`]; wide type so that 0, 5 or -1 get a message instead of a parse error.
    pub n: Option<i64>,
    /// `WIDTHxHEIGHT`, one of [`ALLOWED_SIZES`].
    pub size: Option<String>,
    /// See [`JobRequest::style`].
    pub style: Option<String>,
    /// See [`JobRequest::character`].
    pub character: Option<String>,
    /// See [`JobRequest::template`].
    pub template: Option<String>,
    /// See [`JobRequest::seed`].
    pub seed: Option<u64>,
    /// `standard` or `high`.
    pub quality: Option<String>,
    /// Client's own data, returned with the job; an object of at most [`MAX_METADATA_KEYS`] keys
    /// and [`MAX_METADATA_BYTES`] bytes.
    pub metadata: Option<serde_json::Value>,
    /// Where to send events about the job; its shape is checked by [`WebhookSpec::validate`],
    /// its address by the webhook guard (which needs DNS, so it is not part of [`Self::validate`]).
    pub webhook: Option<WebhookSpec>,
}

/// Longest webhook URL accepted, in bytes.
pub const MAX_WEBHOOK_URL_BYTES: usize = 2048;

/// A webhook subscription as a client sends it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// The subscriber's URL.
    pub url: Option<String>,
    /// `running` and/or `completed`; default `[completed]`.
    pub events: Option<Vec<String>>,
}

impl WebhookSpec {
    /// Checks the shape: a URL of bounded length, known events (deduplicated, none is an error).
    pub fn validate(self) -> Result<Webhook, ValidationError> {
        let url = self
            .url
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .ok_or_else(|| ValidationError::new("webhook.url", "is required"))?;
        if url.len() > MAX_WEBHOOK_URL_BYTES {
            return Err(ValidationError::new(
                "webhook.url",
                format!("must be at most {MAX_WEBHOOK_URL_BYTES} bytes"),
            ));
        }
        let events = match self.events {
            None => vec![WebhookEvent::Completed],
            Some(names) => {
                let mut events = Vec::new();
                for name in &names {
                    let e = match name.as_str() {
                        "running" => WebhookEvent::Running,
                        "completed" => WebhookEvent::Completed,
                        other => {
                            return Err(ValidationError::new(
                                "webhook.events",
                                format!("must hold only running and completed (got {other:?})"),
                            ))
                        }
                    };
                    if !events.contains(&e) {
                        events.push(e);
                    }
                }
                if events.is_empty() {
                    return Err(ValidationError::new(
                        "webhook.events",
                        "must name at least one event (running, completed)",
                    ));
                }
                events
            }
        };
        Ok(Webhook { url, events })
    }
}

impl SubmitJob {
    /// Checks every field; the first problem found is returned, naming its field.
    pub fn validate(
        self,
    ) -> Result<
        (
            JobRequest,
            Option<serde_json::Map<String, serde_json::Value>>,
        ),
        ValidationError,
    > {
        let prompt = self
            .prompt
            .ok_or_else(|| ValidationError::new("prompt", "is required"))?;
        let prompt = prompt.trim().to_owned();
        if prompt.is_empty() {
            return Err(ValidationError::new("prompt", "must not be blank"));
        }
        check_len("prompt", &prompt, MAX_PROMPT_CHARS)?;
        let negative_prompt = optional_text(
            "negative_prompt",
            self.negative_prompt,
            MAX_NEGATIVE_PROMPT_CHARS,
        )?;
        let n = match self.n {
            None => 1,
            Some(n) if (1..=i64::from(MAX_IMAGES)).contains(&n) => n as u8,
            Some(n) => {
                return Err(ValidationError::new(
                    "n",
                    format!("must be between 1 and {MAX_IMAGES} (got {n})"),
                ))
            }
        };
        let size = match self.size {
            None => ImageSize::default(),
            Some(s) => s.parse().map_err(|m| ValidationError::new("size", m))?,
        };
        let quality = match self.quality.as_deref() {
            None | Some("standard") => Quality::Standard,
            Some("high") => Quality::High,
            Some(other) => {
                return Err(ValidationError::new(
                    "quality",
                    format!("must be standard or high (got {other:?})"),
                ))
            }
        };
        let request = JobRequest {
            prompt,
            negative_prompt,
            n,
            size,
            style: optional_name("style", self.style)?,
            character: optional_name("character", self.character)?,
            template: optional_name("template", self.template)?,
            seed: self.seed,
            quality,
        };
        let metadata = match self.metadata {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Object(map)) => {
                if map.len() > MAX_METADATA_KEYS {
                    return Err(ValidationError::new(
                        "metadata",
                        format!("must have at most {MAX_METADATA_KEYS} keys"),
                    ));
                }
                let bytes = serde_json::to_vec(&map)
                    .map(|v| v.len())
                    .unwrap_or(usize::MAX);
                if bytes > MAX_METADATA_BYTES {
                    return Err(ValidationError::new(
                        "metadata",
                        format!("must be at most {MAX_METADATA_BYTES} bytes as JSON (got {bytes})"),
                    ));
                }
                Some(map)
            }
            Some(_) => return Err(ValidationError::new("metadata", "must be a JSON object")),
        };
        Ok((request, metadata))
    }
}

fn check_len(field: &str, s: &str, max: usize) -> Result<(), ValidationError> {
    let chars = s.chars().count();
    if chars > max {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max} characters (got {chars})"),
        ));
    }
    if s.chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn optional_text(
    field: &str,
    s: Option<String>,
    max: usize,
) -> Result<Option<String>, ValidationError> {
    match s.map(|s| s.trim().to_owned()) {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => check_len(field, &s, max).map(|()| Some(s)),
    }
}

fn optional_name(field: &str, s: Option<String>) -> Result<Option<String>, ValidationError> {
    optional_text(field, s, MAX_NAME_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit(json: serde_json::Value) -> Result<JobRequest, ValidationError> {
        serde_json::from_value::<SubmitJob>(json)
            .expect("shape")
            .validate()
            .map(|(r, _)| r)
    }

    #[test]
    fn defaults_fill_in() {
        let r = submit(serde_json::json!({"prompt": "  a red fox  "})).unwrap();
        assert_eq!(r.prompt, "a red fox");
        assert_eq!(r.n, 1);
        assert_eq!(
            r.size,
            ImageSize {
                width: 1024,
                height: 1024
            }
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (serde_json::json!({}), "prompt"),
            (serde_json::json!({"prompt": "   "}), "prompt"),
            (serde_json::json!({"prompt": "x".repeat(4001)}), "prompt"),
            (serde_json::json!({"prompt": "a", "n": 0}), "n"),
            (serde_json::json!({"prompt": "a", "n": 5}), "n"),
            (serde_json::json!({"prompt": "a", "n": -3}), "n"),
            (
                serde_json::json!({"prompt": "a", "size": "1000x1000"}),
                "size",
            ),
            (serde_json::json!({"prompt": "a", "size": "big"}), "size"),
            (
                serde_json::json!({"prompt": "a", "quality": "ultra"}),
                "quality",
            ),
            (
                serde_json::json!({"prompt": "a", "style": "s".repeat(65)}),
                "style",
            ),
            (
                serde_json::json!({"prompt": "a", "metadata": [1]}),
                "metadata",
            ),
            (
                serde_json::json!({"prompt": "a", "metadata": {"k": "v".repeat(5000)}}),
                "metadata",
            ),
            (serde_json::json!({"prompt": "a\u{0}b"}), "prompt"),
        ];
        for (body, field) in cases {
            let err = submit(body.clone()).expect_err(&body.to_string());
            assert_eq!(err.field, field, "{body}: {err}");
        }
    }

    #[test]
    fn webhook_shapes_are_checked_and_events_default_to_completed() {
        let spec = |v: serde_json::Value| serde_json::from_value::<WebhookSpec>(v).unwrap();
        let w = spec(serde_json::json!({"url": " https://a.example/h "}))
            .validate()
            .unwrap();
        assert_eq!(w.url, "https://a.example/h");
        assert_eq!(w.events, [WebhookEvent::Completed]);
        let w = spec(serde_json::json!({"url": "https://a", "events": ["running", "running"]}))
            .validate()
            .unwrap();
        assert_eq!(w.events, [WebhookEvent::Running]);
        for (body, field) in [
            (serde_json::json!({}), "webhook.url"),
            (
                serde_json::json!({"url": "https://a", "events": []}),
                "webhook.events",
            ),
            (
                serde_json::json!({"url": "https://a", "events": ["done"]}),
                "webhook.events",
            ),
            (
                serde_json::json!({"url": format!("https://a/{}", "x".repeat(3000))}),
                "webhook.url",
            ),
        ] {
            assert_eq!(spec(body).validate().unwrap_err().field, field);
        }
        assert!(serde_json::from_value::<WebhookSpec>(serde_json::json!({"uri": "x"})).is_err());
    }

    #[test]
    fn sizes_parse_only_from_the_list() {
        assert_eq!(
            "512x512".parse::<ImageSize>().unwrap().to_string(),
            "512x512"
        );
        assert!("512x513".parse::<ImageSize>().is_err());
        assert!("x".parse::<ImageSize>().is_err());
    }
}
