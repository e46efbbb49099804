//! `Prefer: wait=N` (RFC 7240): how long the client would like a submit to be held open.

use std::time::Duration;

use axum::http::header::HeaderName;
use axum::http::HeaderMap;

use crate::ApiError;

/// The `Prefer` request header.
pub static PREFER: HeaderName = HeaderName::from_static("prefer");
/// The `Preference-Applied` response header.
pub static PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");

/// The `wait` preference in whole seconds, if the client sent one. Other preferences are
/// ignored, as RFC 7240 asks; a `wait` whose value is not a whole number of seconds is a `400`
/// naming `Prefer`. Values beyond `u64` saturate (they are clamped by the caller anyway).
pub fn wait(headers: &HeaderMap) -> Result<Option<Duration>, ApiError> {
    let mut found = None;
    for value in headers.get_all(&PREFER) {
        let text = value
            .to_str()
            .map_err(|_| ApiError::invalid("Prefer", "must be visible ASCII"))?;
        for preference in text.split(',') {
            // `token [= value] *(; parameter)`; parameters of `wait` mean nothing.
            let head = preference.split(';').next().unwrap_or_default();
            let (name, value) = match head.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (head.trim(), None),
            };
            if !name.eq_ignore_ascii_case("wait") {
                continue;
            }
            if found.is_some() {
                // The first occurrence wins (RFC 7240 section 2).
                continue;
            }
            let value = value.map(|v| {
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v)
            });
            let secs = match value {
                Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                    v.parse::<u64>().unwrap_or(u64::MAX)
                }
                _ => {
                    return Err(ApiError::invalid(
                        "Prefer",
                        "wait must be a whole number of seconds, as in `Prefer: wait=10`",
                    ))
                }
            };
            found = Some(Duration::from_secs(secs));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn parse(values: &[&str]) -> Result<Option<u64>, ApiError> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(&PREFER, HeaderValue::from_str(v).expect("test header"));
        }
        wait(&headers).map(|d| d.map(|d| d.as_secs()))
    }

    #[test]
    fn wait_is_found_among_other_preferences() {
        assert_eq!(parse(&[]).ok(), Some(None));
        assert_eq!(parse(&["wait=10"]).ok(), Some(Some(10)));
        assert_eq!(parse(&["respond-async, Wait = 3"]).ok(), Some(Some(3)));
        assert_eq!(parse(&["return=minimal", "wait=\"7\""]).ok(), Some(Some(7)));
        assert_eq!(parse(&["wait=5, wait=9"]).ok(), Some(Some(5)));
        assert_eq!(parse(&["respond-async"]).ok(), Some(None));
        assert_eq!(
            parse(&["wait=99999999999999999999999"]).ok(),
            Some(Some(u64::MAX))
        );
    }

    #[test]
    fn malformed_wait_names_the_header() {
        for bad in [
            "wait",
            "wait=",
            "wait=-1",
            "wait=1.5",
            "wait=soon",
            "wait=1s",
        ] {
            match parse(&[bad]) {
                Err(ApiError::InvalidRequest { field, .. }) => {
                    assert_eq!(field.as_deref(), Some("Prefer"), "{bad}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
