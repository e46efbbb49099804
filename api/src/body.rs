//! JSON request bodies whose parse errors name the field at fault (`n`, `items[3].prompt`).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderMap;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// A JSON body, refused with `415` unless sent as `application/json`, with `413` beyond the
/// router's body limit, and with `400` naming the field on any parse error.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await?;
        parse(&bytes).map(JsonBody)
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// A JSON body as [`JsonBody`] reads it, plus the hex SHA-256 of its canonical form (keys
/// sorted, no insignificant whitespace) when the request carries an `Idempotency-Key`: two
/// bodies that mean the same hash the same, which is what the key compares.
#[derive(Debug, Clone)]
pub struct HashedJsonBody<T> {
    /// The parsed body.
    pub value: T,
    /// Hex SHA-256 of the canonical JSON; empty without an `Idempotency-Key` header, where
    /// nothing compares it (and the second parse it takes is saved).
    pub hash: String,
}

impl<S, T> FromRequest<S> for HashedJsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let keyed = req
            .headers()
            .contains_key(&crate::idempotency::IDEMPOTENCY_KEY);
        let bytes = Bytes::from_request(req, state).await?;
        let value = parse(&bytes)?;
        if !keyed {
            return Ok(Self {
                value,
                hash: String::new(),
            });
        }
        // `parse` accepted it, so it is one JSON document.
        let doc: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::invalid("body", format!("malformed JSON: {e}")))?;
        Ok(Self {
            value,
            hash: canonical_hash(&doc),
        })
    }
}

/// Hex SHA-256 of `doc` written with sorted keys and no whitespace.
pub fn canonical_hash(doc: &serde_json::Value) -> String {
    use sha2::{Digest, Sha256};
    let mut text = String::new();
    write_canonical(doc, &mut text);
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn write_canonical(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Deepest nesting of arrays and objects a body may have.
pub const MAX_DEPTH: usize = 32;

/// Whether the JSON text nests arrays and objects deeper than `max`; a scan of the bytes that
/// skips strings, so it is cheap and cannot overflow a stack whatever the input.
fn too_deep(bytes: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Parses `bytes` as `T`; the error names the path of the offending value, or `body` when the
/// document itself is broken or nests deeper than [`MAX_DEPTH`].
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Every body is an object; serde would otherwise also take a struct from an array.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    }
    if too_deep(bytes, MAX_DEPTH) {
        return Err(ApiError::invalid(
            "body",
            format!("nests arrays and objects deeper than {MAX_DEPTH} levels"),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(path_error)?;
    de.end().map_err(|e| {
        ApiError::invalid(
            "body",
            format!("trailing characters after the JSON value: {e}"),
        )
    })?;
    Ok(value)
}

fn path_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let field = if inner.is_data() && path != "." {
        path
    } else {
        "body".to_owned()
    };
    let message = if inner.is_data() {
        inner.to_string()
    } else {
        format!("malformed JSON: {inner}")
    };
    ApiError::invalid(field, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_shared::domain::SubmitJob;

    fn field_of(json: &str) -> Option<String> {
        match parse::<SubmitJob>(json.as_bytes()) {
            Err(ApiError::InvalidRequest { field, .. }) => field,
            other => panic!("expected a parse error for {json}, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            field_of(r#"{"prompt": "a", "n": "2"}"#).as_deref(),
            Some("n")
        );
        assert_eq!(
            field_of(r#"{"prompt": "a", "colour": 1}"#).as_deref(),
            Some("colour")
        );
        assert_eq!(field_of(r#"{"prompt": "a""#).as_deref(), Some("body"));
        assert_eq!(field_of("[1]").as_deref(), Some("body"));
        assert_eq!(field_of(r#"{"prompt": "a"} x"#).as_deref(), Some("body"));
        assert_eq!(field_of("").as_deref(), Some("body"));
    }

    #[test]
    fn deep_nesting_is_refused_but_brackets_in_strings_do_not_count() {
        let deep = format!(
            r#"{{"prompt": "a", "metadata": {{"k": {}1{}}}}}"#,
            "[".repeat(40),
            "]".repeat(40)
        );
        assert_eq!(field_of(&deep).as_deref(), Some("body"));
        let shallow = format!(r#"{{"prompt": "{}\"[", "n": 1}}"#, "[".repeat(100));
        assert!(parse::<SubmitJob>(shallow.as_bytes()).is_ok());
    }

    #[test]
    fn the_canonical_hash_ignores_key_order_and_whitespace() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b": [1, {"y": 2, "x": 1}], "a": "s"}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{"a":"s","b":[1,{"x":1,"y":2}]}"#).unwrap();
        let c: serde_json::Value =
            serde_json::from_str(r#"{"a":"s","b":[{"x":1,"y":2},1]}"#).unwrap();
        assert_eq!(canonical_hash(&a), canonical_hash(&b));
        assert_ne!(canonical_hash(&a), canonical_hash(&c));
    }
}
