//! What every HTTP provider shares: classifying answers into [`ProviderError`]s, `Retry-After`,
//! reads bounded in bytes, and messages scrubbed of secrets.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;

use crate::config::Secret;
use crate::ports::ProviderError;

/// Largest provider answer read (base64 JSON of four large images fits).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Longest provider message kept on a job.
const MAX_MESSAGE_CHARS: usize = 300;

/// `Retry-After` as seconds or an HTTP date, relative to `now`; capped at one hour.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(wait.min(Duration::from_secs(3600)))
}

/// Shortens a provider's message and removes the key from it, should a provider echo it.
pub fn scrub(message: &str, key: Option<&Secret>) -> String {
    let mut m: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
    if let Some(k) = key.filter(|k| !k.expose().is_empty()) {
        m = m.replace(k.expose(), "***");
    }
    m
}

/// The provider's own message from a JSON error body (`{"error": {"message"}}`, `{"message"}`,
/// `{"errors": [...]}`), else the start of the body.
fn message_of(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let candidates = [
            &v["error"]["message"],
            &v["message"],
            &v["errors"][0],
            &v["error"],
            &v["name"],
        ];
        if let Some(s) = candidates.iter().find_map(|c| c.as_str()) {
            return s.to_owned();
        }
    }
    String::from_utf8_lossy(&body[..body.len().min(MAX_MESSAGE_CHARS)]).into_owned()
}

/// Turns a non-success answer into an error: 408, 429 and 5xx are transient; content-policy
/// refusals, bad requests and auth failures are not.
pub fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    key: Option<&Secret>,
) -> ProviderError {
    let message = scrub(&message_of(body), key);
    let code = status.as_u16();
    if code == 429 || code == 408 || status.is_server_error() {
        return ProviderError::Transient {
            status: Some(code),
            message,
            retry_after: retry_after(headers, SystemTime::now()),
        };
    }
    let lowered = String::from_utf8_lossy(body).to_lowercase();
    let policy = [
        "content_policy",
        "content policy",
        "safety",
        "moderation",
        "content_moderation",
    ];
    let code_name = match code {
        401 | 403 => "unauthorized",
        400 | 422 if policy.iter().any(|p| lowered.contains(p)) => "content_policy",
        404 => "model_not_found",
        413 => "request_too_large",
        _ => "bad_request",
    };
    ProviderError::Rejected {
        status: Some(code),
        code: code_name.to_owned(),
        message,
    }
}

/// Maps a transport error; never includes the request (whose headers hold the key).
pub fn transport(e: &reqwest::Error, timeout: Duration) -> ProviderError {
    if e.is_timeout() {
        return ProviderError::Timeout(timeout);
    }
    let kind = if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "connection dropped while reading the answer"
    } else {
        "request failed"
    };
    ProviderError::Transient {
        status: e.status().map(|s| s.as_u16()),
        message: kind.to_owned(),
        retry_after: None,
    }
}

/// The time one call may take: what is left before `deadline`, at most the provider's `timeout`.
pub fn budget(deadline: tokio::time::Instant, timeout: Duration) -> Duration {
    deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .min(timeout)
}

/// Runs `call` for at most `left`; a call still running then is a [`ProviderError::Timeout`].
pub async fn within<T>(
    left: Duration,
    call: impl std::future::Future<Output = Result<T, ProviderError>>,
) -> Result<T, ProviderError> {
    if left.is_zero() {
        return Err(ProviderError::Timeout(Duration::ZERO));
    }
    tokio::time::timeout(left, call)
        .await
        .unwrap_or(Err(ProviderError::Timeout(left)))
}

/// Largest error body read to learn why a provider refused.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// What a non-success answer means; its body is read bounded, and `key` scrubbed from it.
pub async fn failure(resp: reqwest::Response, key: &Secret, left: Duration) -> ProviderError {
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = read_bounded(resp, MAX_ERROR_BODY, left)
        .await
        .unwrap_or_default();
    classify(status, &headers, &body, Some(key))
}

/// Reads a body, giving up past `max` bytes.
pub async fn read_bounded(
    mut resp: reqwest::Response,
    max: usize,
    timeout: Duration,
) -> Result<Vec<u8>, ProviderError> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(ProviderError::InvalidImage(format!(
            "answer larger than {max} bytes"
        )));
    }
    let mut out = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if out.len() + chunk.len() > max {
                    return Err(ProviderError::InvalidImage(format!(
                        "answer larger than {max} bytes"
                    )));
                }
                out.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(out),
            Err(e) => return Err(transport(&e, timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(retry: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(retry).unwrap());
        h
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = SystemTime::now();
        assert_eq!(
            retry_after(&headers("7"), now),
            Some(Duration::from_secs(7))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(120));
        let got = retry_after(&headers(&later), now).unwrap();
        assert!(
            got <= Duration::from_secs(120) && got >= Duration::from_secs(118),
            "{got:?}"
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(120));
        assert_eq!(retry_after(&headers(&past), now), Some(Duration::ZERO));
        assert_eq!(retry_after(&headers("soon"), now), None);
        assert_eq!(
            retry_after(&headers("999999"), now),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn classification_separates_transient_from_final() {
        let none = HeaderMap::new();
        let k = Secret::new("sk-secret");
        assert!(classify(StatusCode::TOO_MANY_REQUESTS, &headers("3"), b"{}", None).retriable());
        assert!(classify(StatusCode::SERVICE_UNAVAILABLE, &none, b"", None).retriable());
        let policy = classify(
            StatusCode::BAD_REQUEST,
            &none,
            br#"{"error":{"code":"content_policy_violation","message":"no"}}"#,
            None,
        );
        assert_eq!(policy.code(), "content_policy");
        assert!(!policy.retriable());
        let auth = classify(
            StatusCode::UNAUTHORIZED,
            &none,
            br#"{"error":{"message":"bad key sk-secret"}}"#,
            Some(&k),
        );
        assert_eq!(auth.code(), "unauthorized");
        assert!(!auth.to_string().contains("sk-secret"), "{auth}");
    }
}
