//! The metadata store seam.
//!
//! [`MetaStore`] speaks in domain terms (open an upload, record its chunks, commit it, list
//! files, claim unreferenced chunks for GC); no SQL leaks out of this crate. [`SqliteMeta`] and
//! [`PostgresMeta`] implement it from one SQL body (see `sql.rs`); [`conformance`] is the suite
//! both must pass.
//!
//! # How uploads, dedup and GC stay consistent
//! Every chunk has one row in `chunks` with a state: `pending` (referenced, blob perhaps not
//! written yet), `live` (written by an upload that committed) or `deleting` (claimed by GC).
//! An upload records a reference to each chunk *before* writing its blob ([`MetaStore::add_chunks`]),
//! in the same transaction that upserts the chunk row. GC only claims rows that no reference
//! points at, and only deletes blobs whose rows it claimed. An upload that meets a `deleting`
//! row gets [`MetaError::ChunkBusy`] and retries after GC removed the row, then writes the blob
//! itself. So a blob is never deleted while anything references it, and dedup never trusts a
//! blob that is about to go. See ARCHITECTURE.md for the full argument.

pub mod conformance;
mod postgres;
mod schema;
mod sql;
mod sqlite;
pub mod testing;

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use chunkvault_types::{ChunkEntry, ChunkId, FileId};
use time::OffsetDateTime;

pub use postgres::{PostgresMeta, PostgresOptions};
pub use schema::SchemaStatus;
pub use sqlite::{SqliteMeta, SqliteOptions};

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
pub type Result<T, E = MetaError> = std::result::Result<T, E>;

/// Errors of a [`MetaStore`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    /// The upload or file does not exist (or is not in a state the call works on, where the
    /// method says so).
    #[error("not found")]
    NotFound,
    /// The upload exists but is no longer open (committed, aborted or expired).
    #[error("the upload is {state}, not open")]
    NotOpen { state: String },
    /// The commit does not match the recorded chunks (missing, extra or misplaced chunks).
    #[error("invalid manifest: {message}")]
    InvalidManifest { message: String },
    /// A chunk is being deleted by GC right now; retry shortly and write the blob again.
    #[error("chunk {id} is being garbage-collected; retry")]
    ChunkBusy { id: ChunkId },
    /// The database cannot be reached (pool timeout, connection refused, I/O).
    #[error("the metadata store is unavailable")]
    Unavailable { source: BoxError },
    /// The schema is missing, older or newer than this binary.
    #[error("{message}")]
    Schema { message: String },
    #[error("metadata store error")]
    Other { source: BoxError },
}

impl MetaError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

impl From<sqlx::Error> for MetaError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match e {
            E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::WorkerCrashed => {
                Self::Unavailable {
                    source: Box::new(e),
                }
            }
            E::Database(ref d) if d.message().contains("database is locked") => Self::Unavailable {
                source: Box::new(e),
            },
            other => Self::Other {
                source: Box::new(other),
            },
        }
    }
}

/// A new upload: a file that is not visible until committed.
#[derive(Debug, Clone)]
pub struct NewUpload {
    pub id: FileId,
    pub name: String,
    pub content_type: String,
    pub chunk_size: u64,
    pub created_at: OffsetDateTime,
    /// After this, an upload still open is expired and its chunks become collectable.
    pub expires_at: OffsetDateTime,
    /// The total size the client announced, when it did (resumable uploads).
    pub declared_size: Option<u64>,
}

/// A chunk an upload is about to store (or has stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingChunk {
    pub index: u64,
    pub offset: u64,
    pub length: u64,
    pub hash: ChunkId,
}

/// What the caller of [`MetaStore::add_chunks`] must do with a chunk's blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkState {
    /// A committed upload already stored this chunk: skip the write (dedup).
    Stored,
    /// The blob may not exist yet: write it before committing.
    MustWrite,
}

/// What a commit asserts about the finished upload.
#[derive(Debug, Clone)]
pub struct CommitFile {
    pub name: String,
    pub content_type: String,
    pub size: u64,
    pub sha256: String,
    pub committed_at: OffsetDateTime,
}

/// A committed, visible file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    pub id: FileId,
    pub name: String,
    pub content_type: String,
    pub size: u64,
    pub chunk_size: u64,
    pub chunk_count: u64,
    pub sha256: String,
    pub created_at: OffsetDateTime,
    pub committed_at: OffsetDateTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadState {
    Open,
    Committed,
    Aborted,
    Expired,
}

impl UploadState {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Committed => "committed",
            Self::Aborted => "aborted",
            Self::Expired => "expired",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "open" => Self::Open,
            "committed" => Self::Committed,
            "aborted" => Self::Aborted,
            "expired" => Self::Expired,
            _ => return None,
        })
    }
}

/// An upload in any state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    pub id: FileId,
    pub state: UploadState,
    pub name: String,
    pub content_type: String,
    pub chunk_size: u64,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// Chunks recorded so far.
    pub chunks_recorded: u64,
    /// The total size announced when the upload was opened.
    pub declared_size: Option<u64>,
}

/// One chunk row, for scrub and GC walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRecord {
    pub hash: ChunkId,
    pub size: u64,
    /// True once a committed upload wrote it; false while only open uploads reference it.
    pub live: bool,
}

/// What was last seen of one copy (or erasure-coded shard) of a chunk on one blob location.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CopyStatus {
    /// Written, or read back intact.
    Ok,
    /// Not there when it was looked for.
    Missing,
    /// There, with the wrong content.
    Corrupt,
}

impl CopyStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Missing => "missing",
            Self::Corrupt => "corrupt",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ok" => Self::Ok,
            "missing" => Self::Missing,
            "corrupt" => Self::Corrupt,
            _ => return None,
        })
    }
}

/// Where one copy (or shard) of a chunk lives, in a deployment with several blob locations.
/// A location holds at most one object per chunk, so `(hash, location)` identifies a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkCopy {
    pub hash: ChunkId,
    /// The configured name of the location.
    pub location: String,
    /// `None` for a whole copy; the shard index under erasure coding.
    pub shard: Option<u32>,
    pub state: CopyStatus,
    /// When the copy was written or last checked.
    pub verified_at: OffsetDateTime,
}

/// The metadata store.
///
/// Contract, for every implementation: each method is one transaction (atomic); none leaves a
/// partial effect on error. "Visible" means committed: [`MetaStore::file`],
/// [`MetaStore::manifest`] and [`MetaStore::list_files`] never show an upload that is not.
#[async_trait]
pub trait MetaStore: Send + Sync + Debug + 'static {
    /// Opens an upload (state open). Fails if the id exists.
    async fn create_upload(&self, upload: &NewUpload) -> Result<()>;

    /// Records pending references from an open upload to `chunks` (idempotent per index: a
    /// chunk re-sent at the same index replaces the reference), and tells for each whether its
    /// blob must be written. [`MetaError::NotFound`] for an unknown upload,
    /// [`MetaError::NotOpen`] for one no longer open, [`MetaError::ChunkBusy`] (nothing
    /// recorded) when GC is deleting one of the chunks.
    async fn add_chunks(&self, upload: FileId, chunks: &[PendingChunk]) -> Result<Vec<ChunkState>>;

    /// Makes an open upload a visible file, atomically: checks that the recorded chunks are
    /// exactly indices `0..n` laid end to end at the upload's chunk size and add up to
    /// `commit.size`, marks its chunks live, and records name, type, size and digest.
    /// The caller must have written every `MustWrite` blob first.
    async fn commit_upload(&self, upload: FileId, commit: &CommitFile) -> Result<FileRecord>;

    /// Ends an open upload without a file: drops its references. Idempotent; `NotFound` for an
    /// unknown id, `NotOpen` for a committed one.
    async fn abort_upload(&self, upload: FileId) -> Result<()>;

    /// An upload in any state.
    async fn upload(&self, id: FileId) -> Result<Option<UploadRecord>>;

    /// Up to `limit` chunk references of an upload in any state (the pending references of an
    /// open one), from `from_index` on, in index order. A reference is recorded *before* its
    /// blob is written, so a caller that needs "stored" must check the blob too. Empty for an
    /// unknown upload.
    async fn upload_chunks(
        &self,
        id: FileId,
        from_index: u64,
        limit: u32,
    ) -> Result<Vec<ChunkEntry>>;

    /// A committed file.
    async fn file(&self, id: FileId) -> Result<Option<FileRecord>>;

    /// Up to `limit` manifest entries of a committed file, from `from_index` on, in order.
    /// Empty for an unknown or uncommitted file.
    async fn manifest(&self, id: FileId, from_index: u64, limit: u32) -> Result<Vec<ChunkEntry>>;

    /// Committed files, newest first, strictly older than `before` when given.
    async fn list_files(&self, before: Option<FileId>, limit: u32) -> Result<Vec<FileRecord>>;

    /// Removes a committed file and its chunk references; false when there was none.
    async fn delete_file(&self, id: FileId) -> Result<bool>;

    /// Expires open uploads whose expiry is before `now`, dropping their references.
    async fn expire_uploads(&self, now: OffsetDateTime) -> Result<Vec<FileId>>;

    /// Claims for deletion up to `limit` chunks that nothing references and that were last
    /// touched before `touched_before` (state becomes deleting), plus rows a crashed GC left in
    /// the deleting state. The caller deletes their blobs, then calls [`MetaStore::gc_forget`].
    async fn gc_claim_unreferenced(
        &self,
        touched_before: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<ChunkId>>;

    /// For blobs found in the store: claims those that have no chunk row (orphans) by adding a
    /// deleting row, so no upload can start referencing them while their blob is deleted.
    /// Returns the claimed ones.
    async fn gc_claim_orphans(&self, ids: &[ChunkId], now: OffsetDateTime) -> Result<Vec<ChunkId>>;

    /// Removes chunk rows in the deleting state, once their blobs are gone.
    async fn gc_forget(&self, ids: &[ChunkId]) -> Result<()>;

    /// Chunk rows that are not being deleted, in hash order, strictly after `after`.
    async fn chunks(&self, after: Option<ChunkId>, limit: u32) -> Result<Vec<ChunkRecord>>;

    /// Files (committed or open uploads) that reference a chunk.
    async fn files_with_chunk(&self, id: &ChunkId, limit: u32) -> Result<Vec<FileId>>;

    /// Records (inserts or replaces, per chunk and location) where copies of chunks live and
    /// what was last seen of them. Records for chunks that have no row, or whose row GC is
    /// deleting, are skipped: copies of a chunk being collected are not worth indexing.
    /// Idempotent; one statement per batch of records, not one per record. A chunk's records
    /// are removed with its row (GC).
    async fn record_copies(&self, copies: &[ChunkCopy]) -> Result<()>;

    /// The recorded copies of one chunk, in location-name order; empty when none are recorded
    /// (a single-location deployment, or a chunk written before copies were recorded).
    async fn chunk_copies(&self, id: &ChunkId) -> Result<Vec<ChunkCopy>>;

    /// Removes the records of `ids` on `location` (the copies a drain moved off it).
    /// Idempotent.
    async fn forget_copies(&self, location: &str, ids: &[ChunkId]) -> Result<()>;

    /// Live chunks with at least one copy recorded missing or corrupt, in hash order, strictly
    /// after `after`: the repair queue that survives a restart.
    async fn chunks_with_bad_copies(
        &self,
        after: Option<ChunkId>,
        limit: u32,
    ) -> Result<Vec<ChunkId>>;

    /// Takes or renews the named lease for `holder`; false when another holder has it unexpired.
    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<bool>;

    /// Gives the lease up if `holder` has it.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<()>;

    /// Checks that the database answers. Cheap enough for a readiness probe.
    async fn check(&self) -> Result<()>;

    /// Whether the schema matches this binary.
    async fn schema_status(&self) -> Result<SchemaStatus>;

    /// Applies pending migrations.
    async fn migrate(&self) -> Result<()>;

    fn describe(&self) -> String;
}

pub(crate) fn micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1000) as i64
}

pub(crate) fn from_micros(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}
