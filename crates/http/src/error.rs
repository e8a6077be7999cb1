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
