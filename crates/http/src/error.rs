//! Error policy: every error a client can cause gets a deliberate 4xx status and a stable
//! `code` in `{"error": {"code", "message"}}`. Backends out of reach are 503 with a code
//! saying which. Anything else is a 500 whose body says only "internal error"; the full chain
//! goes to the log.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chunkvault_core::CoreError;
use chunkvault_types::{ErrorBody, ErrorDetail};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.into(),
                message: self.message,
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("5"));
        }
        resp
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        use StatusCode as S;
        match e {
            CoreError::NotFound => Self::new(S::NOT_FOUND, "not_found", "no such file"),
            CoreError::Invalid { code, message } => Self::new(S::BAD_REQUEST, code, message),
            CoreError::BodyFailed { message } => Self::new(
                S::BAD_REQUEST,
                "upload_interrupted",
                format!("the request body could not be read: {message}"),
            ),
            CoreError::UploadClosed { state } => Self::new(
                S::CONFLICT,
                "upload_closed",
                format!("the upload is {state}"),
            ),
            CoreError::Conflict { code, message } => Self::new(S::CONFLICT, code, message),
            CoreError::Busy => Self::new(
                S::SERVICE_UNAVAILABLE,
                "busy",
                "the server is busy with this content; retry",
            ),
            CoreError::BlobUnavailable(e) => {
                tracing::error!(error = ?e, "blob store unavailable");
                Self::new(
                    S::SERVICE_UNAVAILABLE,
                    "blob_store_unavailable",
                    "the blob store cannot be reached; retry later",
                )
            }
            CoreError::MetaUnavailable(e) => {
                tracing::error!(error = ?e, "metadata store unavailable");
                Self::new(
                    S::SERVICE_UNAVAILABLE,
                    "metadata_store_unavailable",
                    "the metadata store cannot be reached; retry later",
                )
            }
            CoreError::StorageFull(e) => {
                tracing::error!(error = ?e, "storage full");
                Self::new(
                    S::INSUFFICIENT_STORAGE,
                    "storage_full",
                    "the server's storage is full; the write was not completed",
                )
            }
            CoreError::QuotaExceeded { message } => {
                Self::new(S::INSUFFICIENT_STORAGE, "quota_exceeded", message)
            }
            CoreError::TooManyUploads { max } => Self::new(
                S::TOO_MANY_REQUESTS,
                "too_many_uploads",
                format!("at most {max} uploads may be in progress at once per account"),
            ),
            CoreError::Damaged { .. } => Self::new(
                S::INTERNAL_SERVER_ERROR,
                "chunk_damaged",
                "stored data failed verification; it was not served",
            ),
            e => {
                tracing::error!(error = ?e, "internal error");
                Self::new(S::INTERNAL_SERVER_ERROR, "internal", "internal error")
            }
        }
    }
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such endpoint")
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}

/// Parses a file id from a path segment.
pub(crate) fn file_id(raw: &str) -> Result<chunkvault_types::FileId, ApiError> {
    raw.parse()
        .map_err(|e: chunkvault_types::IdError| ApiError::bad_request("invalid_id", e.to_string()))
}

/// Every code a client can see, its status and what it means: the `code` enum of the OpenAPI
/// document. README.md's error table lists the same codes (a test below compares them).
pub(crate) const ERROR_CODES: &[(&str, u16, &str)] = &[
    ("invalid_id", 400, "the file id is not a hyphenated UUID"),
    ("missing_name", 400, "no fileName was given"),
    ("name_too_long", 400, "fileName is over 1024 bytes"),
    (
        "invalid_name",
        400,
        "fileName contains control characters or bidirectional override, embedding or isolate characters",
    ),
    ("invalid_type", 400, "fileType is not a valid media type"),
    (
        "invalid_size",
        400,
        "fileSize is not a whole number of bytes",
    ),
    (
        "size_mismatch",
        400,
        "the body's length differs from fileSize",
    ),
    (
        "invalid_multipart",
        400,
        "the multipart form cannot be parsed",
    ),
    ("missing_file", 400, "the form has no file part"),
    (
        "multiple_files",
        400,
        "the form has more than one file part",
    ),
    (
        "field_too_large",
        400,
        "a text field of the form is over 8 KiB",
    ),
    (
        "invalid_field",
        400,
        "a text field of the form is not UTF-8, or fileName, fileType or fileSize is given twice",
    ),
    (
        "invalid_header",
        400,
        "a metadata header is not UTF-8 or is given twice, a header and a query parameter disagree, or an HTTP/1.1 request has no Host header or two",
    ),
    (
        "invalid_query",
        400,
        "the query string is not UTF-8, or a parameter is given twice",
    ),
    ("invalid_limit", 400, "limit is not a number from 1 to 1000"),
    (
        "invalid_manifest",
        400,
        "the uploaded chunks do not add up to a file",
    ),
    (
        "upload_interrupted",
        400,
        "the request body could not be read to its end",
    ),
    ("invalid_json", 400, "a JSON request body cannot be parsed"),
    (
        "invalid_index",
        400,
        "a chunk index is not a whole number, or is offered twice",
    ),
    (
        "chunk_size_mismatch",
        400,
        "a chunk's length does not fit the upload's layout",
    ),
    (
        "chunk_hash_mismatch",
        400,
        "a chunk's body does not hash to its Chunk-Hash",
    ),
    (
        "incomplete_upload",
        400,
        "commit before every chunk is stored",
    ),
    (
        "invalid_blake3",
        400,
        "the declared blake3 is not 64 hex digits",
    ),
    (
        "blake3_mismatch",
        400,
        "the stored file's BLAKE3 differs from the declared one",
    ),
    (
        "invalid_sha256",
        400,
        "the declared sha256 is not 64 hex digits",
    ),
    (
        "sha256_mismatch",
        400,
        "the stored file's SHA-256 differs from the declared one",
    ),
    (
        "too_many_chunks",
        400,
        "more chunks offered at once than accepted",
    ),
    ("missing_length", 400, "tus: no Upload-Length"),
    ("missing_offset", 400, "tus: no Upload-Offset"),
    (
        "invalid_metadata",
        400,
        "tus: Upload-Metadata cannot be parsed",
    ),
    (
        "invalid_checksum",
        400,
        "tus: Upload-Checksum cannot be parsed or names an unsupported algorithm",
    ),
    (
        "checksum_body_too_large",
        400,
        "tus: a PATCH with Upload-Checksum is longer than one chunk",
    ),
    ("size_unknown", 400, "tus: the upload's length is not known"),
    (
        "tus_extension_unsupported",
        400,
        "tus: a request needs an extension this server does not offer",
    ),
    (
        "invalid_expiry",
        400,
        "a link's expires_in is not a duration up to 30 days",
    ),
    (
        "invalid_range",
        400,
        "a link's range is not bytes=a-b with a <= b",
    ),
    (
        "unauthorized",
        401,
        "no API key, or one that is unknown, wrong, revoked or expired (one answer for all)",
    ),
    ("forbidden", 403, "the endpoint is for admin accounts"),
    (
        "link_invalid",
        403,
        "a presigned link's signature does not match (tampered, or the secret was rotated)",
    ),
    ("link_expired", 403, "a presigned link is past its expiry"),
    ("not_found", 404, "no such file"),
    ("no_route", 404, "no such endpoint"),
    ("no_scrub", 404, "this server has not run a scrub yet"),
    (
        "method_not_allowed",
        405,
        "the endpoint does not accept this method",
    ),
    (
        "upload_closed",
        409,
        "the upload was already committed, aborted or expired",
    ),
    (
        "length_required",
        411,
        "an HTTP/1.0 upload without Content-Length",
    ),
    (
        "unsupported_transfer_encoding",
        501,
        "the body is in a transfer coding other than chunked",
    ),
    (
        "precondition_failed",
        412,
        "If-Match names another version, or the file changed after If-Unmodified-Since",
    ),
    (
        "range_not_satisfiable",
        416,
        "the range lies outside the file (Content-Range: bytes */SIZE)",
    ),
    (
        "chunk_damaged",
        500,
        "stored data failed verification and was not served",
    ),
    (
        "internal",
        500,
        "a bug or an unexpected failure; details are in the server log only",
    ),
    (
        "blob_store_unavailable",
        503,
        "the blob store cannot be reached",
    ),
    (
        "metadata_store_unavailable",
        503,
        "the metadata store cannot be reached",
    ),
    (
        "busy",
        503,
        "another operation holds this content (GC); retry",
    ),
    (
        "backend_timeout",
        503,
        "a backend did not answer the readiness probe in time",
    ),
    (
        "offset_mismatch",
        409,
        "tus: Upload-Offset is not the upload's offset",
    ),
    (
        "tus_version_unsupported",
        412,
        "tus: Tus-Resumable is missing or not 1.0.0",
    ),
    ("body_too_large", 413, "a JSON request body is too large"),
    (
        "too_many_auth_failures",
        429,
        "too many failed authentications from this address (with Retry-After)",
    ),
    (
        "too_many_uploads",
        429,
        "the account has max_uploads_per_account uploads in progress on this node",
    ),
    (
        "headers_too_large",
        431,
        "the request headers total more than 32 KiB",
    ),
    (
        "storage_full",
        507,
        "the server's disk (blob store or database) is full or at a quota; the write was not completed, no file became visible, and a resumable upload keeps what it had stored",
    ),
    (
        "quota_exceeded",
        507,
        "the upload does not fit the account's quota; nothing of it is visible or charged",
    ),
    ("too_large", 413, "tus: Upload-Length is over Tus-Max-Size"),
    (
        "invalid_content_type",
        415,
        "tus: a PATCH body is not application/offset+octet-stream",
    ),
    (
        "checksum_mismatch",
        460,
        "tus: the PATCH body does not match Upload-Checksum; nothing was stored",
    ),
];

#[cfg(test)]
mod tests {
    use super::ERROR_CODES;

    /// The README's error table and the document's code list are the same set, so neither can
    /// gain a code the other does not describe.
    #[test]
    fn readme_lists_every_error_code() {
        let readme = include_str!("../../../README.md");
        let section = readme
            .split("### Errors")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("README.md has an `### Errors` section");
        let mut in_readme: Vec<(&str, u16)> = Vec::new();
        for row in section.lines().filter(|l| l.starts_with("| ")) {
            let mut cells = row.split('|').map(str::trim).filter(|c| !c.is_empty());
            let (Some(status), Some(codes)) = (cells.next(), cells.next()) else {
                continue;
            };
            let Ok(status) = status.parse::<u16>() else {
                continue;
            };
            // Codes are the backquoted words; anything in parentheses is commentary.
            for (i, part) in codes.split('`').enumerate() {
                if i % 2 == 1
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                {
                    in_readme.push((part, status));
                }
            }
        }
        let mut in_table: Vec<(&str, u16)> = ERROR_CODES.iter().map(|(c, s, _)| (*c, *s)).collect();
        in_readme.sort();
        in_table.sort();
        assert_eq!(in_readme, in_table);
    }
}
