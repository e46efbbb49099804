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

/// Parses `bytes` as `T`; the error names the path of the offending value, or `body` when the
/// document itself is broken.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Every body is an object; serde would otherwise also take a struct from an array.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid("body", "must be a JSON object"));
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
}
