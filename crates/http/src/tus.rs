//! tus 1.0.0 (<https://tus.io/protocols/resumable-upload>) at `/tus`: core, creation,
//! creation-with-upload, termination, checksum and expiration. A tus upload *is* an upload
//! session (`core/session.rs`): PATCH bodies stream into the chunk store like any upload, a
//! body that ends mid-chunk leaves that chunk stored on its own, and the next PATCH continues
//! it. The offset is what the stores hold, so it survives a restart. Reaching Upload-Length
//! commits the file. Errors keep the JSON body of the rest of the API.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use chunkvault_core::{BodyChecksum, ChecksumAlgorithm, CoreError, UploadMeta};
use chunkvault_meta::UploadRecord;

use chunkvault_types::{ErrorBody, SessionCommit};

use crate::auth::Caller;
use crate::extract::FileIdPath;
use crate::{ApiError, AppState};

pub(crate) const VERSION: &str = "1.0.0";
const EXTENSIONS: &str = "creation,creation-with-upload,termination,checksum,expiration";
/// The largest Upload-Length accepted (1 TiB).
pub(crate) const MAX_SIZE: u64 = 1 << 40;
const OFFSET_CONTENT_TYPE: &str = "application/offset+octet-stream";
/// tus's "checksum mismatch" status.
const CHECKSUM_MISMATCH: u16 = 460;

const ALLOW_HEADERS: &str = "Authorization, Content-Type, Location, Tus-Extension, Tus-Max-Size, \
     Tus-Resumable, Tus-Version, Upload-Concat, Upload-Defer-Length, Upload-Length, \
     Upload-Metadata, Upload-Offset, Upload-Checksum, X-HTTP-Method-Override, X-Requested-With";
const EXPOSE_HEADERS: &str = "Location, Tus-Checksum-Algorithm, Tus-Extension, Tus-Max-Size, \
     Tus-Resumable, Tus-Version, Upload-Concat, Upload-Defer-Length, Upload-Expires, \
     Upload-Length, Upload-Metadata, Upload-Offset";

fn set(resp: &mut Response, name: &'static str, value: impl TryInto<HeaderValue>) {
    if let Ok(v) = value.try_into() {
        resp.headers_mut().insert(HeaderName::from_static(name), v);
    }
}

/// Added to every `/tus` response, errors included: Tus-Resumable, and what browsers need to
/// call tus across origins and read its headers.
pub(crate) async fn common_headers(mut resp: Response) -> Response {
    set(&mut resp, "tus-resumable", VERSION);
    set(&mut resp, "access-control-allow-origin", "*");
    set(
        &mut resp,
        "access-control-allow-methods",
        "POST, GET, HEAD, PATCH, DELETE, OPTIONS",
    );
    set(&mut resp, "access-control-allow-headers", ALLOW_HEADERS);
    set(&mut resp, "access-control-expose-headers", EXPOSE_HEADERS);
    set(&mut resp, "access-control-max-age", "86400");
    resp
}

/// `OPTIONS /tus`: discovery (and CORS preflight).
#[utoipa::path(
    options,
    path = "/tus",
    tag = "tus",
    operation_id = "tus_options",
    summary = "tus discovery (and CORS preflight)",
    responses(
        (status = 204, description = "`Tus-Version`, `Tus-Extension`, `Tus-Max-Size`, `Tus-Checksum-Algorithm`"),
    )
)]
pub(crate) async fn options() -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    set(&mut resp, "tus-version", VERSION);
    set(&mut resp, "tus-extension", EXTENSIONS);
    set(&mut resp, "tus-max-size", MAX_SIZE.to_string());
    let algos: Vec<&str> = ChecksumAlgorithm::ALL.iter().map(|a| a.name()).collect();
    set(&mut resp, "tus-checksum-algorithm", algos.join(","));
    resp
}

/// Every request but OPTIONS must say which protocol version it speaks.
/// The refusal when the request does not speak tus 1.0.0.
fn check_version(headers: &HeaderMap) -> Option<Response> {
    match headers.get("tus-resumable").map(|v| v.as_bytes()) {
        Some(v) if v == VERSION.as_bytes() => None,
        _ => {
            let mut resp = ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "tus_version_unsupported",
                format!("Tus-Resumable must be {VERSION}"),
            )
            .into_response();
            set(&mut resp, "tus-version", VERSION);
            Some(resp)
        }
    }
}

fn number(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_header",
                    format!("{name} must be a whole number of bytes"),
                )
            }),
    }
}

/// `Upload-Metadata: key base64,key2 base64`: returns filename and filetype.
fn metadata(headers: &HeaderMap) -> Result<(Option<String>, Option<String>), ApiError> {
    let Some(raw) = headers.get("upload-metadata") else {
        return Ok((None, None));
    };
    let bad = |m: &str| ApiError::bad_request("invalid_metadata", m.to_string());
    let raw = raw
        .to_str()
        .map_err(|_| bad("Upload-Metadata must be ASCII"))?;
    let (mut name, mut ty) = (None, None);
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut parts = pair.splitn(2, ' ');
        let key = parts.next().unwrap_or_default();
        let value = match parts.next().map(str::trim) {
            None | Some("") => String::new(),
            Some(v) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .map_err(|_| bad("Upload-Metadata values must be base64"))?;
                String::from_utf8(bytes).map_err(|_| bad("Upload-Metadata values must be UTF-8"))?
            }
        };
        match key {
            "filename" | "name" => name = Some(value),
            "filetype" | "type" => ty = Some(value),
            _ => {}
        }
    }
    Ok((name, ty))
}

fn checksum(headers: &HeaderMap) -> Result<Option<BodyChecksum>, ApiError> {
    let Some(raw) = headers.get("upload-checksum") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(
            "invalid_checksum",
            "Upload-Checksum must be `ALGORITHM BASE64` with sha1 or sha256",
        )
    };
    let raw = raw.to_str().map_err(|_| bad())?;
    let (algo, digest) = raw.trim().split_once(' ').ok_or_else(bad)?;
    let algorithm = ChecksumAlgorithm::parse(algo).ok_or_else(bad)?;
    let digest = base64::engine::general_purpose::STANDARD
        .decode(digest.trim())
        .map_err(|_| bad())?;
    Ok(Some(BodyChecksum { algorithm, digest }))
}

fn expires(resp: &mut Response, u: &UploadRecord) {
    let t = std::time::SystemTime::UNIX_EPOCH
        + std::time::Duration::from_secs(u.expires_at.unix_timestamp().max(0) as u64);
    set(resp, "upload-expires", httpdate::fmt_http_date(t));
}

fn is_offset_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(OFFSET_CONTENT_TYPE))
}

/// Core errors, with tus's own status for a checksum mismatch.
fn tus_error(e: CoreError) -> Response {
    let e = ApiError::from(e);
    if e.code == "checksum_mismatch" {
        let status = StatusCode::from_u16(CHECKSUM_MISMATCH).unwrap_or(StatusCode::BAD_REQUEST);
        return ApiError::new(status, e.code, e.message).into_response();
    }
    e.into_response()
}

/// `OPTIONS /tus/{id}`: the same discovery answer, for clients that ask the upload's URL.
#[utoipa::path(
    options,
    path = "/tus/{id}",
    tag = "tus",
    operation_id = "tus_upload_options",
    summary = "tus discovery on an upload's URL (and CORS preflight)",
    params(("id" = String, Path, description = "The upload id")),
    responses(
        (status = 204, description = "`Tus-Version`, `Tus-Extension`, `Tus-Max-Size`, `Tus-Checksum-Algorithm`"),
    )
)]
pub(crate) async fn upload_options() -> Response {
    options().await
}

/// `POST /tus`: creation (and creation-with-upload when a body comes along).
#[utoipa::path(
    post,
    path = "/tus",
    tag = "tus",
    operation_id = "tus_create",
    summary = "tus creation, and creation-with-upload when a body comes along",
    params(
        ("Tus-Resumable" = String, Header, description = "`1.0.0`"),
        ("Upload-Length" = Option<u64>, Header, description = "The upload's size"),
        ("Upload-Metadata" = Option<String>, Header, description = "`filename` and `filetype`, base64, comma-separated"),
    ),
    request_body(content = Option<Vec<u8>>, content_type = "application/offset+octet-stream"),
    responses(
        (status = 201, description = "Created; `Location` is the upload's URL, `Upload-Offset` what the body carried",
            headers(("Location" = String), ("Upload-Offset" = u64), ("Upload-Expires" = String))),
        (status = 400, description = "`missing_length`, `invalid_size`, `invalid_metadata`, `missing_name`, `name_too_long`, `invalid_name`, `invalid_type`, `tus_extension_unsupported`, `size_mismatch`, `upload_interrupted`", body = ErrorBody),
        (status = 412, description = "`tus_version_unsupported`: `Tus-Resumable` missing or not `1.0.0` (answer carries `Tus-Version`)", body = ErrorBody),
        (status = 413, description = "`too_large`: over `Tus-Max-Size`", body = ErrorBody),
        (status = 415, description = "`invalid_content_type`", body = ErrorBody),
        (status = 429, description = "`too_many_uploads`", body = ErrorBody),
        (status = 503, description = "`metadata_store_unavailable`, `blob_store_unavailable`, `busy`, `backend_timeout`", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds"))),
        (status = 507, description = "`quota_exceeded`: `Upload-Length` (or the finished file) is over the account's remaining quota", body = ErrorBody),
    )
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    Caller(who): Caller,
    req: Request,
) -> Response {
    if let Some(r) = check_version(req.headers()) {
        return r;
    }
    match create_inner(&state, &who, req).await {
        Ok(r) => r,
        Err(TusError::Api(e)) => e.into_response(),
        Err(TusError::Core(e)) => tus_error(e),
    }
}

enum TusError {
    Api(ApiError),
    Core(CoreError),
}

impl From<ApiError> for TusError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<CoreError> for TusError {
    fn from(e: CoreError) -> Self {
        Self::Core(e)
    }
}

async fn create_inner(
    state: &AppState,
    who: &chunkvault_core::Principal,
    req: Request,
) -> Result<Response, TusError> {
    let headers = req.headers();
    if headers.contains_key("upload-defer-length") || headers.contains_key("upload-concat") {
        return Err(ApiError::bad_request(
            "tus_extension_unsupported",
            "creation-defer-length and concatenation are not supported",
        )
        .into());
    }
    let length = number(headers, "upload-length")
        .map_err(TusError::from)?
        .ok_or_else(|| {
            TusError::from(ApiError::bad_request(
                "missing_length",
                "Upload-Length is required",
            ))
        })?;
    if length > MAX_SIZE {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("Upload-Length is limited to {MAX_SIZE} bytes"),
        )
        .into());
    }
    let (name, ty) = metadata(headers).map_err(TusError::from)?;
    let with_body = is_offset_stream(headers);
    let sum = checksum(headers).map_err(TusError::from)?;
    let vault = &state.vault;
    let _slot = vault.upload_slot(who)?;
    let upload = vault
        .create_session(
            who,
            UploadMeta {
                // A tus client need not name its file.
                name: name
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| "unnamed".into()),
                content_type: ty.unwrap_or_default(),
                expected_size: Some(length),
            },
        )
        .await?;
    let id = upload.id;
    let mut offset = None;
    if length == 0 {
        vault
            .commit_session(who, id, &SessionCommit::default())
            .await?;
        offset = Some(0);
    } else if with_body {
        let body = req.into_body().into_data_stream();
        // The upload exists now: a failed first PATCH still leaves a resource to resume.
        offset = Some(match vault.append_session(who, id, 0, body, sum).await {
            Ok(a) => a.offset,
            Err(CoreError::BodyFailed { .. }) => vault.session_offset(who, id).await?.1,
            Err(e) => return Err(e.into()),
        });
    }
    let mut resp = StatusCode::CREATED.into_response();
    set(&mut resp, "location", format!("/tus/{id}"));
    if let Some(o) = offset {
        set(&mut resp, "upload-offset", o.to_string());
    }
    expires(&mut resp, &upload);
    Ok(resp)
}

/// `HEAD /tus/{id}`: where the upload stands.
#[utoipa::path(
    head,
    path = "/tus/{id}",
    tag = "tus",
    operation_id = "tus_head",
    summary = "Where a tus upload stands (`Upload-Offset`, `Upload-Length`)",
    params(("id" = String, Path, format = Uuid, description = "The upload id (the `Location` of its creation)"), ("Tus-Resumable" = String, Header, description = "`1.0.0`")),
    responses(
        (status = 200, description = "`Upload-Offset`, `Upload-Length`, `Upload-Expires`",
            headers(("Upload-Offset" = u64), ("Upload-Length" = u64))),
        (status = 400, description = "`invalid_id` (no body: HEAD)"),
        (status = 404, description = "No such open upload (no body: HEAD)"),
        (status = 412, description = "`tus_version_unsupported` (no body: HEAD)"),
        (status = 503, description = "A store is unavailable (no body: HEAD)"),
    )
)]
pub(crate) async fn head(
    State(state): State<AppState>,
    Caller(who): Caller,
    FileIdPath(id): FileIdPath,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = check_version(&headers) {
        return r;
    }
    match state.vault.session_offset(&who, id).await {
        Ok((upload, offset)) => {
            let mut resp = StatusCode::OK.into_response();
            set(&mut resp, "upload-offset", offset.to_string());
            if let Some(len) = upload.declared_size {
                set(&mut resp, "upload-length", len.to_string());
            }
            set(&mut resp, "cache-control", "no-store");
            if upload.state == chunkvault_meta::UploadState::Open {
                expires(&mut resp, &upload);
            }
            resp
        }
        // HEAD has no body; a terminated or expired upload is simply gone.
        Err(CoreError::UploadClosed { .. }) | Err(CoreError::NotFound) => {
            let mut resp = StatusCode::NOT_FOUND.into_response();
            set(&mut resp, "cache-control", "no-store");
            resp
        }
        Err(e) => {
            let mut resp = tus_error(e);
            *resp.body_mut() = Body::empty();
            resp
        }
    }
}

/// `PATCH /tus/{id}`: append at Upload-Offset.
#[utoipa::path(
    patch,
    path = "/tus/{id}",
    tag = "tus",
    operation_id = "tus_patch",
    summary = "Append at `Upload-Offset`; the file is committed when the offset reaches `Upload-Length`",
    params(
        ("id" = String, Path, format = Uuid, description = "The upload id (the `Location` of its creation)"), ("Tus-Resumable" = String, Header, description = "`1.0.0`"),
        ("Upload-Offset" = u64, Header, description = "Must equal the upload's offset"),
        ("Upload-Checksum" = Option<String>, Header, description = "`sha1 <base64>` or `sha256 <base64>` of this body"),
    ),
    request_body(content = Vec<u8>, content_type = "application/offset+octet-stream"),
    responses(
        (status = 204, description = "Appended; `Upload-Offset` is the new offset", headers(("Upload-Offset" = u64))),
        (status = 400, description = "`invalid_id`, `missing_offset`, `invalid_checksum`, `checksum_body_too_large`, `size_unknown`, `size_mismatch`, `upload_interrupted`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`offset_mismatch`, `upload_closed`", body = ErrorBody),
        (status = 412, description = "`tus_version_unsupported`: `Tus-Resumable` missing or not `1.0.0` (answer carries `Tus-Version`)", body = ErrorBody),
        (status = 415, description = "`invalid_content_type`", body = ErrorBody),
        (status = 429, description = "`too_many_uploads`", body = ErrorBody),
        (status = 460, description = "`checksum_mismatch`: nothing of the body was stored", body = ErrorBody),
        (status = 500, description = "`chunk_damaged`", body = ErrorBody),
        (status = 503, description = "`metadata_store_unavailable`, `blob_store_unavailable`, `busy`, `backend_timeout`", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds"))),
        (status = 507, description = "`quota_exceeded`: the finished file is over the account's quota; the upload is aborted. `storage_full`: the server's disk is full", body = ErrorBody),
    )
)]
pub(crate) async fn patch(
    State(state): State<AppState>,
    Caller(who): Caller,
    FileIdPath(id): FileIdPath,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let mut body = body.into_data_stream();
    let resp = patch_inner(&state, &who, id, &parts.headers, &mut body).await;
    if !resp.status().is_success() {
        drain(&mut body).await;
    }
    resp
}

/// Reads what is left of a refused body, up to a bound, so the connection stays usable for
/// the client's next request (hyper closes it when a body is left unread).
pub(crate) async fn drain(body: &mut axum::body::BodyDataStream) {
    use futures::StreamExt;
    let mut left: usize = 1 << 20;
    let read = async {
        while let Some(Ok(frame)) = body.next().await {
            left = left.saturating_sub(frame.len());
            if left == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), read).await;
}

async fn patch_inner(
    state: &AppState,
    who: &chunkvault_core::Principal,
    id: chunkvault_types::FileId,
    headers: &HeaderMap,
    body: &mut axum::body::BodyDataStream,
) -> Response {
    if let Some(r) = check_version(headers) {
        return r;
    }
    if !is_offset_stream(headers) {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_content_type",
            format!("PATCH bodies must be {OFFSET_CONTENT_TYPE}"),
        )
        .into_response();
    }
    let offset = match number(headers, "upload-offset") {
        Ok(Some(o)) => o,
        Ok(None) => {
            return ApiError::bad_request("missing_offset", "Upload-Offset is required")
                .into_response();
        }
        Err(e) => return e.into_response(),
    };
    let sum = match checksum(headers) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let vault = &state.vault;
    let _slot = match vault.upload_slot(who) {
        Ok(s) => s,
        Err(e) => return tus_error(e),
    };
    match vault.append_session(who, id, offset, body, sum).await {
        Ok(a) => {
            let mut resp = StatusCode::NO_CONTENT.into_response();
            set(&mut resp, "upload-offset", a.offset.to_string());
            if a.committed.is_none()
                && let Ok(Some(u)) = vault.meta().upload(id).await
            {
                expires(&mut resp, &u);
            }
            resp
        }
        Err(CoreError::UploadClosed { state }) if state == "committed" => ApiError::new(
            StatusCode::CONFLICT,
            "upload_closed",
            "the upload is complete",
        )
        .into_response(),
        Err(CoreError::UploadClosed { .. }) | Err(CoreError::NotFound) => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such upload").into_response()
        }
        Err(e) => tus_error(e),
    }
}

/// `DELETE /tus/{id}`: termination.
#[utoipa::path(
    delete,
    path = "/tus/{id}",
    tag = "tus",
    operation_id = "tus_delete",
    summary = "tus termination: the upload ends without a file",
    params(("id" = String, Path, format = Uuid, description = "The upload id (the `Location` of its creation)"), ("Tus-Resumable" = String, Header, description = "`1.0.0`")),
    responses(
        (status = 204, description = "Terminated"),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`upload_closed`", body = ErrorBody),
        (status = 412, description = "`tus_version_unsupported`: `Tus-Resumable` missing or not `1.0.0` (answer carries `Tus-Version`)", body = ErrorBody),
        (status = 503, description = "`metadata_store_unavailable`, `blob_store_unavailable`, `busy`, `backend_timeout`", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds"))),
    )
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    Caller(who): Caller,
    FileIdPath(id): FileIdPath,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = check_version(&headers) {
        return r;
    }
    match state.vault.abort_session(&who, id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(CoreError::UploadClosed { state }) if state == "committed" => ApiError::new(
            StatusCode::CONFLICT,
            "upload_closed",
            "the upload is complete; delete the file instead",
        )
        .into_response(),
        Err(CoreError::UploadClosed { .. }) | Err(CoreError::NotFound) => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such upload").into_response()
        }
        Err(e) => tus_error(e),
    }
}
