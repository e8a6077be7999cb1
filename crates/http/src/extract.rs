//! Extractors whose rejections keep the JSON error contract (axum's own answer in plain text).

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use chunkvault_types::FileId;

use crate::ApiError;
use crate::error::file_id;

/// The `{id}` path segment as a file id: 400 `invalid_id` for anything else, including
/// segments that are not UTF-8.
pub(crate) struct FileIdPath(pub FileId);

impl<S: Send + Sync> FromRequestParts<S> for FileIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| {
                ApiError::bad_request("invalid_id", "the file id in the path is not valid")
            })?;
        file_id(&raw).map(Self)
    }
}

/// The query string, decoded strictly: percent-escapes must decode to UTF-8 (a name is never
/// stored with replacement characters), and a parameter may appear once.
pub(crate) struct StrictQuery(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for StrictQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parse_query(parts.uri.query().unwrap_or("")).map(Self)
    }
}

fn parse_query(raw: &str) -> Result<HashMap<String, String>, ApiError> {
    let decode = |s: &str| {
        let spaced = s.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| ApiError::bad_request("invalid_query", "query parameters must be UTF-8"))
    };
    let mut out = HashMap::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (decode(k)?, decode(v)?);
        if out.contains_key(&k) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("query parameter {k:?} is given twice"),
            ));
        }
        out.insert(k, v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_strictly() {
        let q = parse_query("fileName=a%20b+c%C3%A9&x=").unwrap();
        assert_eq!(q["fileName"], "a b cé");
        assert_eq!(q["x"], "");
        assert!(parse_query("").unwrap().is_empty());
        assert_eq!(
            parse_query("fileName=%FF").unwrap_err().code,
            "invalid_query"
        );
        assert_eq!(
            parse_query("limit=1&limit=2").unwrap_err().code,
            "invalid_query"
        );
    }
}
