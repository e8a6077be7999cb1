//! The files API and health endpoints.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chunkvault_core::ScrubReport;
use chunkvault_types::{ErrorBody, FileDetail, FileList, LinkCreate, LinkInfo};
use serde::Serialize;

use crate::auth::Caller;
use crate::error::file_id;
use crate::extract::{FileIdPath, StrictQuery};
use crate::upload::file_info;
use crate::{ApiError, AppState};

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

/// `GET /files`.
#[utoipa::path(
    get,
    path = "/files",
    tag = "files",
    operation_id = "list_files",
    summary = "List committed files, newest first",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size, default 100"),
        ("after" = Option<String>, Query, format = Uuid, description = "The `next` of the previous page"),
    ),
    responses(
        (status = 200, description = "One page", body = FileList),
        (status = 400, description = "`invalid_limit`, `invalid_id`, `invalid_query`", body = ErrorBody),
        (status = 503, description = "`metadata_store_unavailable`", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds"))),
    )
)]
pub(crate) async fn list(
    State(s): State<AppState>,
    Caller(who): Caller,
    StrictQuery(q): StrictQuery,
) -> Result<Json<FileList>, ApiError> {
    let limit = match q.get("limit") {
        None => DEFAULT_PAGE,
        Some(l) => match l.parse::<u32>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_limit",
                    format!("limit is a number from 1 to {MAX_PAGE}"),
                ));
            }
        },
    };
    let after = q.get("after").map(|a| file_id(a)).transpose()?;
    let files = s.vault.list(&who, after, limit).await?;
    let next = (files.len() == limit as usize)
        .then(|| files.last().map(|f| f.id.to_string()))
        .flatten();
    Ok(Json(FileList {
        files: files.into_iter().map(file_info).collect(),
        next,
    }))
}

/// `GET /files/{id}`.
#[utoipa::path(
    get,
    path = "/files/{id}",
    tag = "files",
    operation_id = "file_detail",
    summary = "A file and its ordered manifest",
    params(("id" = String, Path, format = Uuid, description = "The file id")),
    responses(
        (status = 200, description = "The file and its chunks", body = FileDetail),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 503, description = "`metadata_store_unavailable`", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds"))),
    )
)]
pub(crate) async fn detail(
    State(s): State<AppState>,
    Caller(who): Caller,
    FileIdPath(id): FileIdPath,
) -> Result<Json<FileDetail>, ApiError> {
    let file = s.vault.file(&who, id).await?;
    let manifest = s.vault.manifest(&who, id).await?;
    Ok(Json(FileDetail {
        file: file_info(file),
        manifest,
    }))
}

/// `DELETE /files/{id}`.
#[utoipa::path(
    delete,
    path = "/files/{id}",
    tag = "files",
    operation_id = "delete_file",
    summary = "Delete a file",
    description = "The file is invisible at once; its chunks are reclaimed by GC.",
    params(("id" = String, Path, format = Uuid, description = "The file id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 503, description = "`metadata_store_unavailable`", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds"))),
    )
)]
pub(crate) async fn delete(
    State(s): State<AppState>,
    Caller(who): Caller,
    FileIdPath(id): FileIdPath,
) -> Result<StatusCode, ApiError> {
    s.vault.delete(&who, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Longest validity of a presigned link.
const MAX_LINK_LIFETIME: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// `POST /files/{id}/links`.
#[utoipa::path(
    post,
    path = "/files/{id}/links",
    tag = "files",
    operation_id = "create_link",
    summary = "A presigned download link to one of your files",
    description = "Anyone holding the link may download the file (or the given range) without a \
key until it expires. Links are signed with a server secret (HMAC-SHA256) covering the file id, \
the expiry, the range and the secret's generation; `chunkvault admin rotate-link-secret` \
revokes every link at once.",
    params(("id" = String, Path, format = Uuid, description = "The file id")),
    request_body(content = LinkCreate, content_type = "application/json"),
    responses(
        (status = 201, description = "The link", body = LinkInfo),
        (status = 400, description = "`invalid_id`, `invalid_json`, `invalid_expiry`, `invalid_range`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 503, description = "`metadata_store_unavailable`", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds"))),
    )
)]
pub(crate) async fn create_link(
    State(s): State<AppState>,
    Caller(who): Caller,
    FileIdPath(id): FileIdPath,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<LinkInfo>), ApiError> {
    let req: LinkCreate = crate::session::json_body(body, true)?;
    let lifetime = humantime::parse_duration(req.expires_in.trim())
        .ok()
        .filter(|d| !d.is_zero() && *d <= MAX_LINK_LIFETIME)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_expiry",
                "expires_in must be a duration such as 1h or 7d, at most 30 days",
            )
        })?;
    let range = match req.range.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(r) => Some(normalise_range(r)?),
    };
    let expires_at = time::OffsetDateTime::now_utc() + lifetime;
    let link = s
        .vault
        .sign_link(&who, id, expires_at.unix_timestamp(), range)
        .await?;
    let mut url = format!("/download/{id}?expires={}", link.expires);
    if let Some(r) = &link.range {
        url.push_str(&format!("&range={r}"));
    }
    url.push_str(&format!("&sig={}", link.sig));
    Ok((
        StatusCode::CREATED,
        Json(LinkInfo {
            url,
            expires_at: time::OffsetDateTime::from_unix_timestamp(link.expires)
                .unwrap_or(expires_at),
        }),
    ))
}

/// A link's range as `a-b` (both ends given, inclusive): the form the signature covers and the
/// query carries without escaping.
fn normalise_range(r: &str) -> Result<String, ApiError> {
    let spec = r.strip_prefix("bytes=").unwrap_or(r);
    let parsed = spec.split_once('-').and_then(|(a, b)| {
        let (a, b) = (a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?);
        (a <= b).then_some((a, b))
    });
    let (a, b) = parsed.ok_or_else(|| {
        ApiError::bad_request(
            "invalid_range",
            "range must be bytes=a-b with a <= b (both ends given)",
        )
    })?;
    Ok(format!("{a}-{b}"))
}

/// The body of `/healthz` and `/readyz` when all is well.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Status {
    /// `ok` (healthz) or `ready` (readyz).
    status: &'static str,
}

/// `GET /healthz`.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    summary = "The process is alive",
    responses((status = 200, description = "`{\"status\":\"ok\"}`", body = Status))
)]
pub(crate) async fn healthz() -> Json<Status> {
    Json(Status { status: "ok" })
}

/// `GET /readyz`.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "readyz",
    summary = "Both stores answer",
    description = "Checks the metadata store and the blob store, bounded to 3 s in all: a hung backend makes the probe fail, not hang.",
    responses(
        (status = 200, description = "`{\"status\":\"ready\"}`", body = Status),
        (status = 503, description = "`metadata_store_unavailable`, `blob_store_unavailable`, `backend_timeout`", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds"))),
    )
)]
pub(crate) async fn readyz(State(s): State<AppState>) -> Response {
    let vault = s.vault.clone();
    // A hung backend must not hang the probe.
    match tokio::time::timeout(std::time::Duration::from_secs(3), vault.ready()).await {
        Ok(Ok(())) => Json(Status { status: "ready" }).into_response(),
        Ok(Err(e)) => ApiError::from(e).into_response(),
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "backend_timeout",
            "a backend did not answer in time",
        )
        .into_response(),
    }
}

/// `GET /scrub`.
#[utoipa::path(
    get,
    path = "/scrub",
    tag = "operations",
    operation_id = "last_scrub",
    summary = "The last scrub this server ran",
    responses(
        (status = 200, description = "Its report", body = ScrubReport),
        (status = 404, description = "`no_scrub`", body = ErrorBody),
    )
)]
pub(crate) async fn last_scrub(State(s): State<AppState>) -> Response {
    match s.vault.last_scrub() {
        Some(r) => Json(r).into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "no_scrub",
            "this server has not run a scrub yet",
        )
        .into_response(),
    }
}
