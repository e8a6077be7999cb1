//! JSON shapes of the HTTP API, shared by the server and the client.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{ChunkId, FileDigest, FileId};

/// A committed file as the API describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileInfo {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub id: FileId,
    /// Alias of `id` under the name the original service used.
    // Read back too, not `skip_deserializing`: utoipa leaves skipped fields out of the schema,
    // and the server always sends this one.
    #[serde(rename = "fileID", default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Uuid))]
    pub file_id_compat: Option<FileId>,
    pub name: String,
    #[serde(rename = "type")]
    pub content_type: String,
    pub size: u64,
    /// Number of chunks.
    pub chunks: u64,
    pub chunk_size: u64,
    /// BLAKE3 of the whole file, lowercase hex: what `b3sum` prints. Every file stored by
    /// this version has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// SHA-256 of the whole file, lowercase hex (what `sha256sum` prints): only files stored
    /// by versions before BLAKE3 became the file digest have it instead of `blake3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: OffsetDateTime,
    /// True when the file is kept in the metadata store instead of as chunk blobs (a small
    /// file, see the server's `inline_max`); its one manifest entry then names no blob.
    #[serde(default)]
    pub inline: bool,
}

impl FileInfo {
    /// The file's digest, whichever algorithm it was stored with.
    pub fn digest(&self) -> Option<FileDigest> {
        FileDigest::from_parts(self.blake3.clone(), self.sha256.clone())
    }

    /// The strong ETag of the file's content: its digest in quotes.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.digest().as_ref().map_or("", FileDigest::hex))
    }
}

/// One entry of a file's manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChunkEntry {
    pub index: u64,
    pub offset: u64,
    pub length: u64,
    /// BLAKE3 of the chunk, lowercase hex.
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[0-9a-f]{64}$"))]
    pub hash: ChunkId,
}

/// `GET /files/{id}`: the file and its ordered manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileDetail {
    #[serde(flatten)]
    pub file: FileInfo,
    pub manifest: Vec<ChunkEntry>,
}

/// `GET /files`: one page, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileList {
    pub files: Vec<FileInfo>,
    /// Pass as `?after=` to get the next page; absent on the last page.
    pub next: Option<String>,
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable, machine-readable: clients match on this, never on the message.
    pub code: String,
    pub message: String,
}

/// `POST /uploads`: open an upload session.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionCreate {
    pub name: String,
    #[serde(rename = "type", default)]
    pub content_type: String,
    /// The whole file's size, when known: chunk lengths are then checked as they arrive.
    #[serde(default)]
    pub size: Option<u64>,
}

/// An upload session: what the server has truly stored (recorded *and* written).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionInfo {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub id: FileId,
    /// `open`, `committed`, `aborted` or `expired`.
    pub state: String,
    pub name: String,
    #[serde(rename = "type")]
    pub content_type: String,
    pub size: Option<u64>,
    pub chunk_size: u64,
    /// Indices whose chunk is stored, ascending.
    pub stored: Vec<u64>,
    /// Bytes in the stored chunks.
    pub stored_bytes: u64,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub expires_at: OffsetDateTime,
}

/// One chunk a client has, offered before sending it (`POST /uploads/{id}/chunks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChunkOffer {
    pub index: u64,
    pub length: u64,
    /// BLAKE3 of the chunk, hex.
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[0-9a-f]{64}$"))]
    pub hash: ChunkId,
}

/// `POST /uploads/{id}/chunks` request body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChunkOffers {
    pub chunks: Vec<ChunkOffer>,
}

/// `POST /uploads/{id}/chunks` answer: offers the server already stores were recorded; the
/// `missing` indices must be sent with `PUT /uploads/{id}/chunks/{index}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OfferResult {
    pub missing: Vec<u64>,
    pub present: Vec<u64>,
}

/// `PUT /uploads/{id}/chunks/{index}` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChunkStored {
    pub index: u64,
    pub length: u64,
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[0-9a-f]{64}$"))]
    pub hash: ChunkId,
    /// False when the server already had the chunk's content (the write was skipped).
    pub written: bool,
}

/// `POST /uploads/{id}/commit` body (optional): the digests the client expects, either or
/// both. The file's digest is BLAKE3 either way; a declared SHA-256 is computed only to be
/// compared.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionCommit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// `POST /files/{id}/links`: ask for a presigned download link.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LinkCreate {
    /// How long the link stays valid, e.g. `"1h"`, `"30m"`, `"7d"` (at most 30 days).
    pub expires_in: String,
    /// Limit the link to one byte range, `bytes=a-b` (a `Range` header value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
}

/// A presigned download link: anyone holding `url` may download the file (or its range)
/// without a key until `expires_at`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LinkInfo {
    /// Path and query on this server: `/download/{id}?expires=...&sig=...`.
    pub url: String,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub expires_at: OffsetDateTime,
}
