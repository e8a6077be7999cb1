//! The files API and health endpoints.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chunkvault_types::{FileDetail, FileList};

use crate::error::file_id;
use crate::extract::{FileIdPath, StrictQuery};
use crate::upload::file_info;
use crate::{ApiError, AppState};

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

pub(crate) async fn list(
    State(s): State<AppState>,
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
    let files = s.vault.list(after, limit).await?;
    let next = (files.len() == limit as usize)
        .then(|| files.last().map(|f| f.id.to_string()))
        .flatten();
    Ok(Json(FileList {
        files: files.into_iter().map(file_info).collect(),
        next,
    }))
}

pub(crate) async fn detail(
    State(s): State<AppState>,
    FileIdPath(id): FileIdPath,
) -> Result<Json<FileDetail>, ApiError> {
    let file = s.vault.file(id).await?;
    let manifest = s.vault.manifest(id).await?;
    Ok(Json(FileDetail {
        file: file_info(file),
        manifest,
    }))
}

pub(crate) async fn delete(
    State(s): State<AppState>,
    FileIdPath(id): FileIdPath,
) -> Result<StatusCode, ApiError> {
    s.vault.delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

pub(crate) async fn readyz(State(s): State<AppState>) -> Response {
    let vault = s.vault.clone();
    // A hung backend must not hang the probe.
    match tokio::time::timeout(std::time::Duration::from_secs(3), vault.ready()).await {
        Ok(Ok(())) => Json(serde_json::json!({"status": "ready"})).into_response(),
        Ok(Err(e)) => ApiError::from(e).into_response(),
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "backend_timeout",
            "a backend did not answer in time",
        )
        .into_response(),
    }
}

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
