//! The upload-session API (`/uploads`): open a session, send chunks by index in any order
//! and in parallel, offer chunk hashes first to skip what the server has, ask what is stored,
//! commit, abort. Thin: every rule lives in `core/session.rs`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chunkvault_core::{Session, UploadMeta};
use chunkvault_types::{
    ChunkId, ChunkOffers, ChunkStored, ErrorBody, FileId, FileInfo, OfferResult, SessionCommit,
    SessionCreate, SessionInfo,
};
use serde::de::DeserializeOwned;

use crate::auth::Caller;
use crate::error::file_id;
use crate::extract::FileIdPath;
use crate::upload::file_info;
use crate::{ApiError, AppState};

/// The header carrying a chunk's BLAKE3 hash (hex), checked by the server when present.
pub(crate) const CHUNK_HASH_HEADER: &str = "chunk-hash";

type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

pub(crate) fn json_body<T: DeserializeOwned + Default>(
    body: Body,
    required: bool,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the JSON body could not be read: {}", e.body_text()),
        )
    })?;
    if body.is_empty() && !required {
        return Ok(T::default());
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid JSON body: {e}")))
}

pub(crate) fn session_info(s: &Session) -> SessionInfo {
    let u = &s.upload;
    SessionInfo {
        id: u.id,
        state: u.state.as_str().into(),
        name: u.name.clone(),
        content_type: u.content_type.clone(),
        size: u.declared_size,
        chunk_size: u.chunk_size,
        stored: s.stored.iter().map(|c| c.index).collect(),
        stored_bytes: s.stored_bytes(),
        created_at: u.created_at,
        expires_at: u.expires_at,
    }
}

#[utoipa::path(
    post,
    path = "/uploads",
    tag = "sessions",
    operation_id = "create_session",
    summary = "Open an upload session (chunks then arrive in any order, in parallel)",
    request_body(content = SessionCreate, content_type = "application/json"),
    responses(
        (status = 201, description = "The session; `Location: /uploads/{id}`", body = SessionInfo,
            headers(("Location" = String, description = "The session's URL"))),
        (status = 400, description = "`invalid_json`, `missing_name`, `name_too_long`, `invalid_name`, `invalid_type`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 503, description = "`metadata_store_unavailable`, `blob_store_unavailable`, `busy`, `backend_timeout`", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds"))),
        (status = 507, description = "`quota_exceeded`: the declared size is over the account's remaining quota", body = ErrorBody),
    )
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    Caller(who): Caller,
    body: Body,
) -> Result<Response, ApiError> {
    let req: SessionCreate = json_body(body, true)?;
    let upload = state
        .vault
        .create_session(
            &who,
            UploadMeta {
                name: req.name,
                content_type: req.content_type,
                expected_size: req.size,
            },
        )
        .await?;
    let info = session_info(&Session {
        upload,
        stored: Vec::new(),
    });
    let location = format!("/uploads/{}", info.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(info),
    )
        .into_response())
}

#[utoipa::path(
    get,
    path = "/uploads/{id}",
    tag = "sessions",
    operation_id = "session_status",
    summary = "A session and the chunk indices it truly stores",
    params(("id" = String, Path, format = Uuid, description = "The upload id")),
    responses(
        (status = 200, description = "The session", body = SessionInfo),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 503, description = "`metadata_store_unavailable`, `blob_store_unavailable`, `busy`, `backend_timeout`", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds"))),
    )
)]
pub(crate) async fn status(
    State(state): State<AppState>,
    Caller(who): Caller,
    FileIdPath(id): FileIdPath,
) -> Result<Json<SessionInfo>, ApiError> {
    let s = state.vault.session(&who, id).await?;
    Ok(Json(session_info(&s)))
}

#[utoipa::path(
    post,
    path = "/uploads/{id}/chunks",
    tag = "sessions",
    operation_id = "offer_chunks",
    summary = "Offer chunks by hash: those the server stores are recorded without a transfer",
    params(("id" = String, Path, format = Uuid, description = "The upload id")),
    request_body(content = ChunkOffers, content_type = "application/json"),
    responses(
        (status = 200, description = "Which offered indices must still be sent", body = OfferResult),
        (status = 400, description = "`invalid_id`, `invalid_json`, `invalid_index`, `chunk_size_mismatch`, `too_many_chunks`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`upload_closed`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 503, description = "`metadata_store_unavailable`, `blob_store_unavailable`, `busy`, `backend_timeout`", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds"))),
    )
)]
pub(crate) async fn offer(
    State(state): State<AppState>,
    Caller(who): Caller,
    FileIdPath(id): FileIdPath,
    body: Body,
) -> Result<Json<OfferResult>, ApiError> {
    let req: ChunkOffers = json_body(body, true)?;
    let (missing, present) = state.vault.offer_chunks(&who, id, &req.chunks).await?;
    Ok(Json(OfferResult { missing, present }))
}

/// `{id}` and `{index}` of `/uploads/{id}/chunks/{index}`.
fn chunk_path(raw: (String, String)) -> Result<(FileId, u64), ApiError> {
    let id = file_id(&raw.0)?;
    let index = raw
        .1
        .parse::<u64>()
        .ok()
        .filter(|_| raw.1.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            ApiError::bad_request("invalid_index", "the chunk index must be a whole number")
        })?;
    Ok((id, index))
}

fn chunk_hash(headers: &HeaderMap) -> Result<Option<ChunkId>, ApiError> {
    match headers.get(CHUNK_HASH_HEADER) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<ChunkId>().ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_header",
                    "Chunk-Hash must be a BLAKE3 hash in 64 hex digits",
                )
            }),
    }
}

#[utoipa::path(
    put,
    path = "/uploads/{id}/chunks/{index}",
    tag = "sessions",
    operation_id = "put_chunk",
    summary = "Store chunk `index` of a session (the body is the chunk's bytes)",
    params(
        ("id" = String, Path, format = Uuid, description = "The upload id"),
        ("index" = u64, Path, description = "The chunk's index, from 0"),
        ("Chunk-Hash" = Option<String>, Header, description = "BLAKE3 of the body, 64 hex digits; checked when given"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "The chunk is stored", body = ChunkStored),
        (status = 400, description = "`invalid_id`, `invalid_index`, `invalid_header`, `chunk_size_mismatch`, `chunk_hash_mismatch`, `upload_interrupted`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`upload_closed`", body = ErrorBody),
        (status = 429, description = "`too_many_uploads`: the account has `max_uploads_per_account` uploads in progress on this node", body = ErrorBody),
        (status = 503, description = "`metadata_store_unavailable`, `blob_store_unavailable`, `busy`, `backend_timeout`", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds"))),
        (status = 507, description = "`storage_full`: the server's disk is full; the chunk was not stored and may be sent again", body = ErrorBody),
    )
)]
pub(crate) async fn put_chunk(
    State(state): State<AppState>,
    Caller(who): Caller,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    req: Request,
) -> Result<Json<ChunkStored>, ApiError> {
    let (parts, body) = req.into_parts();
    let mut body = body.into_data_stream();
    let result = put_chunk_inner(&state, &who, path, &parts.headers, &mut body).await;
    if result.is_err() {
        crate::tus::drain(&mut body).await;
    }
    result
}

async fn put_chunk_inner(
    state: &AppState,
    who: &chunkvault_core::Principal,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    headers: &HeaderMap,
    body: &mut axum::body::BodyDataStream,
) -> Result<Json<ChunkStored>, ApiError> {
    let Path(raw) =
        path.map_err(|_| ApiError::bad_request("invalid_id", "the path is not valid"))?;
    let (id, index) = chunk_path(raw)?;
    let claimed = chunk_hash(headers)?;
    let _slot = state.vault.upload_slot(who)?;
    let put = state
        .vault
        .put_session_chunk(who, id, index, body, claimed)
        .await?;
    Ok(Json(ChunkStored {
        index: put.index,
        length: put.length,
        hash: put.hash,
        written: put.written,
    }))
}

#[utoipa::path(
    post,
    path = "/uploads/{id}/commit",
    tag = "sessions",
    operation_id = "commit_session",
    summary = "Make the session's file visible; the server computes its digest (BLAKE3) from the stored chunks and compares any the client declares",
    params(("id" = String, Path, format = Uuid, description = "The upload id")),
    request_body(content = Option<SessionCommit>, content_type = "application/json"),
    responses(
        (status = 201, description = "The committed file", body = FileInfo),
        (status = 400, description = "`invalid_id`, `invalid_json`, `incomplete_upload`, `invalid_blake3`, `blake3_mismatch`, `invalid_sha256`, `sha256_mismatch`, `size_mismatch`, `invalid_manifest`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`upload_closed`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 500, description = "`chunk_damaged`", body = ErrorBody),
        (status = 503, description = "`metadata_store_unavailable`, `blob_store_unavailable`, `busy`, `backend_timeout`", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds"))),
        (status = 507, description = "`quota_exceeded`: the file would take the account over its quota; the upload is aborted and nothing is charged", body = ErrorBody),
    )
)]
pub(crate) async fn commit(
    State(state): State<AppState>,
    Caller(who): Caller,
    FileIdPath(id): FileIdPath,
    body: Body,
) -> Result<Response, ApiError> {
    let req: SessionCommit = json_body(body, false)?;
    let record = state.vault.commit_session(&who, id, &req).await?;
    let info = file_info(record);
    let location = format!("/files/{}", info.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(info),
    )
        .into_response())
}

#[utoipa::path(
    delete,
    path = "/uploads/{id}",
    tag = "sessions",
    operation_id = "abort_session",
    summary = "Abort a session: nothing becomes visible; its chunks become collectable",
    params(("id" = String, Path, format = Uuid, description = "The upload id")),
    responses(
        (status = 204, description = "Aborted"),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`upload_closed`", body = ErrorBody),
        (status = 503, description = "`metadata_store_unavailable`, `blob_store_unavailable`, `busy`, `backend_timeout`", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds"))),
    )
)]
pub(crate) async fn abort(
    State(state): State<AppState>,
    Caller(who): Caller,
    FileIdPath(id): FileIdPath,
) -> Result<StatusCode, ApiError> {
    state.vault.abort_session(&who, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
