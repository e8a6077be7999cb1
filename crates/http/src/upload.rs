//! `POST /upload`, compatible with the original service: either a multipart form with fields
//! `fileName`, `fileType`, `fileSize` and the file part, or a raw body with the same three as
//! request headers (or query parameters). The body streams through core; nothing is buffered
//! whole.

use axum::Json;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chunkvault_core::{UploadMeta, Vault};
use chunkvault_meta::FileRecord;
use chunkvault_types::{ErrorBody, FileInfo};
use futures::TryStreamExt;

use crate::auth::Caller;
use crate::extract::StrictQuery;
use crate::{ApiError, AppState};

/// Text fields of a form are small; a longer one is refused rather than buffered.
const MAX_FIELD_BYTES: usize = 8 * 1024;

/// The multipart form, for the OpenAPI document only: the handler reads the parts itself, in
/// order and streaming, which no derived extractor does.
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
#[schema(as = UploadForm)]
struct UploadForm {
    /// The file's name (up to 1024 bytes; no control characters, no bidirectional override,
    /// embedding or isolate characters); defaults to the file part's filename.
    #[schema(rename = "fileName")]
    file_name: Option<String>,
    /// Media type; defaults to the file part's Content-Type.
    #[schema(rename = "fileType")]
    file_type: Option<String>,
    /// Size in bytes; a file part of another length is refused (`size_mismatch`).
    #[schema(rename = "fileSize")]
    file_size: Option<String>,
    /// The file's bytes; exactly one file part.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// `POST|PUT /upload`.
#[utoipa::path(
    method(post, put),
    path = "/upload",
    tag = "files",
    operation_id = "upload",
    summary = "Upload a file",
    description = "Either a `multipart/form-data` form (fields `fileName`, `fileType`, \
`fileSize` and one file part), or a raw body of any other Content-Type with the metadata as \
`fileName`/`fileType`/`fileSize` headers or query parameters (headers win). The body is \
streamed, chunked and stored; the file is visible only once all of it is stored. `PUT` is \
accepted because `curl -T` sends it.",
    params(
        ("fileName" = Option<String>, Header, description = "Raw body: the file's name (UTF-8)"),
        ("fileType" = Option<String>, Header, description = "Raw body: the media type"),
        ("fileSize" = Option<String>, Header, description = "Raw body: the size in bytes; a body of another length is refused"),
        ("fileName" = Option<String>, Query, description = "Raw body: the file's name, when not in a header"),
        ("fileType" = Option<String>, Query, description = "Raw body: the media type, when not in a header"),
        ("fileSize" = Option<String>, Query, description = "Raw body: the size in bytes, when not in a header"),
    ),
    request_body(
        description = "The file, as a form or as the raw body",
        content(
            (UploadForm = "multipart/form-data"),
            (crate::openapi::Binary = "application/octet-stream"),
        ),
    ),
    responses(
        (status = 201, description = "Stored and committed", body = FileInfo,
            headers(("Location" = String, description = "`/files/{id}`"))),
        (status = 400, description = "Refused: `missing_name`, `name_too_long`, `invalid_name`, \
`invalid_type`, `invalid_size`, `size_mismatch`, `invalid_multipart`, `missing_file`, \
`multiple_files`, `field_too_large`, `invalid_field`, `invalid_header`, `invalid_query`, \
`invalid_manifest`, `upload_interrupted`", body = ErrorBody),
        (status = 409, description = "`upload_closed`: the upload expired or was aborted while it ran", body = ErrorBody),
        (status = 411, description = "`length_required`: an HTTP/1.0 request without Content-Length", body = ErrorBody),
        (status = 429, description = "`too_many_uploads`: the account has `max_uploads_per_account` uploads in progress on this node", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
        (status = 503, description = "`blob_store_unavailable`, `metadata_store_unavailable`, `busy`", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds"))),
        (status = 501, description = "`unsupported_transfer_encoding`: a transfer coding other than chunked", body = ErrorBody),
        (status = 507, description = "`quota_exceeded`: the file does not fit the account's quota; `storage_full`: the server's disk is full. Nothing of the file is visible or charged", body = ErrorBody),
    )
)]
pub(crate) async fn upload(
    State(state): State<AppState>,
    Caller(who): Caller,
    StrictQuery(mut query): StrictQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let is_multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        });
    // An HTTP/1.0 body without Content-Length runs until the client closes, which hyper does
    // not read: it would store a file of 0 bytes for a request that had data. (In HTTP/1.1
    // neither header means an empty body, which clients send for empty files.)
    if req.version() <= axum::http::Version::HTTP_10
        && !req.headers().contains_key(header::CONTENT_LENGTH)
        && !req.headers().contains_key(header::TRANSFER_ENCODING)
    {
        return Err(ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "an HTTP/1.0 upload needs Content-Length (or use HTTP/1.1)",
        ));
    }
    let _slot = state.vault.upload_slot(&who)?;
    let record = if is_multipart {
        // The form parser stops at the closing boundary; what follows is read here, to the
        // body's end, before the file is committed (see `read_epilogue`).
        let (parts, body) = req.into_parts();
        let rest = Rest::new(body);
        let req = Request::from_parts(parts, axum::body::Body::new(rest.clone()));
        let form = Multipart::from_request(req, &state)
            .await
            .map_err(|e| ApiError::bad_request("invalid_multipart", e.body_text()))?;
        upload_form(&state.vault, &who, form, rest).await?
    } else {
        upload_raw(&state.vault, &who, &mut query, req).await?
    };
    let info = file_info(record);
    let location = format!("/files/{}", info.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(info),
    )
        .into_response())
}

pub(crate) fn file_info(f: FileRecord) -> FileInfo {
    FileInfo {
        id: f.id,
        file_id_compat: Some(f.id),
        name: f.name,
        content_type: f.content_type,
        size: f.size,
        chunks: f.chunk_count,
        chunk_size: f.chunk_size,
        blake3: f.digest.blake3().map(str::to_string),
        sha256: f.digest.sha256().map(str::to_string),
        created_at: f.created_at,
        inline: f.inline,
    }
}

fn parse_size(raw: Option<String>) -> Result<Option<u64>, ApiError> {
    match raw {
        None => Ok(None),
        Some(s) => {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ApiError::bad_request(
                    "invalid_size",
                    "fileSize must be a whole number of bytes",
                ));
            }
            s.parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request("invalid_size", "fileSize is too large"))
        }
    }
}

/// A header's value as UTF-8 (names may be any Unicode; HTTP headers carry bytes). Given
/// twice, it is refused: which one counts would be a guess.
fn header_text(headers: &HeaderMap, name: &str) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::bad_request(
            "invalid_header",
            format!("header {name} is given more than once"),
        ));
    }
    match first {
        None => Ok(None),
        Some(v) => std::str::from_utf8(v.as_bytes())
            .map(|s| Some(s.to_string()))
            .map_err(|_| {
                ApiError::bad_request("invalid_header", format!("header {name} is not UTF-8"))
            }),
    }
}

async fn upload_raw(
    vault: &Vault,
    who: &chunkvault_core::Principal,
    query: &mut std::collections::HashMap<String, String>,
    req: Request,
) -> Result<FileRecord, ApiError> {
    let headers = req.headers();
    let mut given = |field: &str| -> Result<Option<String>, ApiError> {
        let header = header_text(headers, field)?;
        let query = query.remove(field);
        match (header, query) {
            (Some(h), Some(q)) if h != q => Err(ApiError::bad_request(
                "invalid_header",
                format!(
                    "{field} is given as a header and as a query parameter, with different values"
                ),
            )),
            (h, q) => Ok(h.or(q)),
        }
    };
    let name = given("fileName")?;
    let content_type = given("fileType")?;
    let size = parse_size(given("fileSize")?)?;
    let meta = UploadMeta {
        name: name.unwrap_or_default(),
        content_type: content_type.unwrap_or_default(),
        expected_size: size,
    }
    .validate()?;
    let body = req.into_body().into_data_stream();
    Ok(vault.upload(who, meta, body).await?)
}

async fn upload_form(
    vault: &Vault,
    who: &chunkvault_core::Principal,
    mut form: Multipart,
    rest: Rest,
) -> Result<FileRecord, ApiError> {
    let mut name = None;
    let mut content_type = None;
    let mut size_text = None;
    let mut received = None;
    let mut part_name = None;
    let mut part_type = None;
    let bad = |e| rest.multipart_error(e);
    while let Some(mut field) = form.next_field().await.map_err(bad)? {
        let field_name = field.name().unwrap_or_default().to_string();
        let is_file = field.file_name().is_some() || field_name == "file";
        match field_name.as_str() {
            "fileName" | "fileType" | "fileSize" if !is_file => {
                let text = small_field(&mut field)
                    .await
                    .map_err(|e| rest.or_interrupted(e))?;
                let slot = match field_name.as_str() {
                    "fileName" => &mut name,
                    "fileType" => &mut content_type,
                    _ => &mut size_text,
                };
                if slot.replace(text).is_some() {
                    return Err(ApiError::bad_request(
                        "invalid_field",
                        format!("the form has {field_name} more than once"),
                    ));
                }
            }
            _ if is_file => {
                if received.is_some() {
                    return Err(ApiError::bad_request(
                        "multiple_files",
                        "one file part per upload",
                    ));
                }
                part_name = field.file_name().map(str::to_string);
                part_type = field.content_type().map(str::to_string);
                // Fields sent before the file are checked now, so a bad name fails before the
                // body is stored; fields sent after it are checked at commit.
                if let Some(n) = &name {
                    UploadMeta {
                        name: n.clone(),
                        content_type: content_type.clone().unwrap_or_default(),
                        expected_size: None,
                    }
                    .validate()?;
                }
                let expected = parse_size(size_text.clone())?;
                let stream = field.map_err(|e| e.body_text());
                received = Some(vault.receive(who, stream, expected).await?);
            }
            _ => {
                // Unknown fields are read and dropped, bounded like the others.
                small_field(&mut field)
                    .await
                    .map_err(|e| rest.or_interrupted(e))?;
            }
        }
    }
    let received = received
        .ok_or_else(|| ApiError::bad_request("missing_file", "the form has no file part"))?;
    drop(form);
    read_epilogue(rest).await?;
    let meta = UploadMeta {
        name: name.or(part_name).unwrap_or_default(),
        content_type: content_type.or(part_type).unwrap_or_default(),
        expected_size: parse_size(size_text)?,
    };
    Ok(vault.commit(received, meta).await?)
}

async fn small_field(field: &mut axum::extract::multipart::Field<'_>) -> Result<String, ApiError> {
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        if buf.len() + chunk.len() > MAX_FIELD_BYTES {
            return Err(ApiError::bad_request(
                "field_too_large",
                format!("form fields are limited to {MAX_FIELD_BYTES} bytes"),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf)
        .map_err(|_| ApiError::bad_request("invalid_field", "form fields must be UTF-8"))
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    ApiError::bad_request("invalid_multipart", e.body_text())
}

/// The request body, shared between the form parser and `read_epilogue`: the parser reads it
/// through this handle and stops at the closing boundary; the handle then still holds the
/// rest. Polled by one task at a time; the lock is never held across an await.
#[derive(Clone)]
struct Rest(std::sync::Arc<RestState>);

struct RestState {
    body: std::sync::Mutex<Option<axum::body::Body>>,
    /// The body itself failed (broke off, or its chunked framing was bad): whatever error the
    /// parser makes of that, the client's request did not arrive whole.
    failed: std::sync::atomic::AtomicBool,
}

impl Rest {
    fn new(body: axum::body::Body) -> Self {
        Self(std::sync::Arc::new(RestState {
            body: std::sync::Mutex::new(Some(body)),
            failed: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    fn failed(&self) -> bool {
        self.0.failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A parser error: `upload_interrupted` when the body failed underneath, else
    /// `invalid_multipart`.
    fn multipart_error(&self, e: axum::extract::multipart::MultipartError) -> ApiError {
        self.or_interrupted(multipart_error(e))
    }

    fn or_interrupted(&self, e: ApiError) -> ApiError {
        if self.failed() {
            interrupted("the request body broke off")
        } else {
            e
        }
    }
}

fn interrupted(why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(
        "upload_interrupted",
        format!("the request body could not be read to its end: {why}"),
    )
}

impl http_body::Body for Rest {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let mut body = self.0.body.lock().unwrap_or_else(|p| p.into_inner());
        let polled = match body.as_mut() {
            Some(b) => std::pin::Pin::new(b).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        };
        if let std::task::Poll::Ready(Some(Err(_))) = &polled {
            self.0
                .failed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }
}

/// Reads a form's body from its closing boundary to its end. A form is stored only once its
/// whole body arrived: the closing boundary alone does not show that, since a client that
/// declared a longer Content-Length and went away, or whose chunked body broke off after the
/// boundary, sent a request that did not complete. Such a body is `upload_interrupted`: the
/// upload is aborted and nothing becomes visible. What follows the boundary (an epilogue,
/// which RFC 2046 says to ignore) is read and dropped, as the parser drops what it had
/// buffered past the boundary.
async fn read_epilogue(rest: Rest) -> Result<(), ApiError> {
    use futures::StreamExt;
    let body = rest.0.body.lock().unwrap_or_else(|p| p.into_inner()).take();
    let Some(body) = body else {
        return Ok(());
    };
    let mut data = body.into_data_stream();
    while let Some(bytes) = data.next().await {
        bytes.map_err(interrupted)?;
    }
    Ok(())
}
