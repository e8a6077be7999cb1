//! The metadata store seam.
//!
//! [`MetaStore`] speaks in domain terms (open an upload, record its chunks, commit it, list
//! files, claim unreferenced chunks for GC); no SQL leaks out of this crate. [`SqliteMeta`] and
//! [`PostgresMeta`] implement it from one SQL body (see `sql.rs`); on SQLite the calls every
//! upload and download makes run on rusqlite instead (`writer.rs`, `reads.rs`), without a
//! thread hand-off per statement. [`conformance`] is the suite both must pass.
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
mod reads;
mod recent;
mod schema;
mod sql;
mod sqlite;
pub mod testing;
mod writer;

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use chunkvault_types::{ChunkEntry, ChunkId, FileDigest, FileId};
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
    /// The database's disk is full (SQLite's `SQLITE_FULL`, PostgreSQL's `disk_full`): the
    /// transaction was rolled back, and writes fail until space is freed.
    #[error("the metadata store's disk is full")]
    StorageFull { source: BoxError },
    /// Committing would take the owner's stored bytes over its quota; nothing was committed.
    #[error("the account's quota of {quota} bytes would be exceeded ({used} used, {size} more)")]
    QuotaExceeded { quota: u64, used: u64, size: u64 },
    /// A unique name or id is already taken (account names, key ids).
    #[error("{what} already exists")]
    AlreadyExists { what: String },
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
            // SQLite's SQLITE_FULL (13) and PostgreSQL's disk_full (53100).
            E::Database(ref d) if matches!(d.code().as_deref(), Some("13" | "53100")) => {
                Self::StorageFull {
                    source: Box::new(e),
                }
            }
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
    /// The account the upload (and the file it becomes) belongs to; `None` when
    /// authentication is off.
    pub owner: Option<AccountId>,
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
    pub digest: FileDigest,
    pub committed_at: OffsetDateTime,
}

/// What a download reads first ([`MetaStore::file_with_manifest`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStart {
    pub file: FileRecord,
    /// The first manifest entries, in index order; empty for a file without chunks.
    pub entries: Vec<ChunkEntry>,
    /// An inline file's content ([`FileRecord::inline`]), as stored: the caller verifies it
    /// against the file's digest. `None` for every other file.
    pub inline: Option<bytes::Bytes>,
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
    /// The whole-file digest: BLAKE3, or SHA-256 for files committed by earlier versions.
    pub digest: FileDigest,
    pub created_at: OffsetDateTime,
    pub committed_at: OffsetDateTime,
    /// The account it belongs to; `None` for files stored without authentication.
    pub owner: Option<AccountId>,
    /// Its content is kept in the metadata store itself ([`MetaStore::create_inline_file`]):
    /// no chunk row, no manifest entry and no blob; [`MetaStore::inline_data`] reads it.
    pub inline: bool,
}

impl FileRecord {
    /// How many entries its manifest has: `chunk_count`, or none for an inline file.
    pub fn manifest_len(&self) -> u64 {
        if self.inline { 0 } else { self.chunk_count }
    }
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
    pub owner: Option<AccountId>,
}

/// An account's id (a UUIDv7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(pub uuid::Uuid);

impl AccountId {
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }
}

impl Default for AccountId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for AccountId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Self::User),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// An account: who owns files and API keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: AccountId,
    pub name: String,
    pub role: Role,
    /// Most bytes of committed files the account may hold; `None`: no limit.
    pub quota_bytes: Option<u64>,
    /// Bytes of the account's committed files (exact: charged at commit, credited at delete).
    pub bytes_used: u64,
    pub created_at: OffsetDateTime,
    pub disabled: bool,
}

/// An API key as stored: the hash of its secret, never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// The public part of the key (`cvk_<id>_...`), shown in listings and logs.
    pub id: String,
    pub account: AccountId,
    pub name: String,
    /// SHA-256 of the secret part.
    pub secret_hash: Vec<u8>,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
    pub last_used_at: Option<OffsetDateTime>,
}

/// The secret presigned links are signed with, and its generation (bumped by every rotation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSecret {
    pub generation: u64,
    pub secret: Vec<u8>,
}

/// One chunk row, for scrub and GC walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRecord {
    pub hash: ChunkId,
    pub size: u64,
    /// True when its blob must exist: a committed upload wrote it, or a committed file
    /// references it (a chunk a read recorded lost, [`MetaStore::chunk_lost`], until an upload
    /// writes it again). False while only open uploads reference it.
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

    /// Opens `upload` and records its first `chunks`, in one transaction: what
    /// [`MetaStore::create_upload`] then [`MetaStore::add_chunks`] do, for a caller that opens
    /// an upload once its first chunk is in hand. On [`MetaError::ChunkBusy`] nothing is
    /// recorded, not even the upload.
    async fn create_upload_with_chunks(
        &self,
        upload: &NewUpload,
        chunks: &[PendingChunk],
    ) -> Result<Vec<ChunkState>>;

    /// Makes an open upload a visible file, atomically: checks that the recorded chunks are
    /// exactly indices `0..n` laid end to end at the upload's chunk size and add up to
    /// `commit.size`, marks its chunks live, records name, type, size and digest, and charges
    /// the size to the owner's `bytes_used`. [`MetaError::QuotaExceeded`] (nothing changed)
    /// when that would exceed the owner's quota. The caller must have written every
    /// `MustWrite` blob first.
    async fn commit_upload(&self, upload: FileId, commit: &CommitFile) -> Result<FileRecord>;

    /// Opens `upload`, records `chunks` and commits it, in one transaction: what
    /// [`MetaStore::create_upload_with_chunks`] then [`MetaStore::commit_upload`] do, all or
    /// nothing, for a file whose every chunk is already in hand (a small file). Returns the
    /// file and, per chunk, what [`MetaStore::add_chunks`] would have said: `Stored` when the
    /// chunk was live before. Errors as those two; on any error nothing is recorded.
    async fn create_file(
        &self,
        upload: &NewUpload,
        chunks: &[PendingChunk],
        commit: &CommitFile,
    ) -> Result<(FileRecord, Vec<ChunkState>)>;

    /// Records a committed file whose content, `data` (not empty), is kept in the metadata
    /// store itself, in one transaction: no chunk, no manifest entry, no blob, so nothing for
    /// GC to collect; deleting the file deletes its content. For small files, whose chunk
    /// row, reference and blob cost more than their bytes. `commit.size` must be
    /// `data.len()` and the file counts one chunk (`chunk_count` 1, as the API reports it).
    /// Charges the owner as [`MetaStore::commit_upload`] does ([`MetaError::QuotaExceeded`],
    /// nothing recorded).
    async fn create_inline_file(
        &self,
        upload: &NewUpload,
        commit: &CommitFile,
        data: bytes::Bytes,
    ) -> Result<FileRecord>;

    /// The content of a committed inline file ([`FileRecord::inline`]); `None` for an unknown,
    /// uncommitted or deleted file and for one stored in chunks. Stored as it came: the caller
    /// verifies it against the file's digest before serving it.
    async fn inline_data(&self, id: FileId) -> Result<Option<bytes::Bytes>>;

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

    /// A committed file with the first `limit` entries of its manifest and, for an inline
    /// file, its content, read from one snapshot (what a download reads first):
    /// [`MetaStore::file`], [`MetaStore::manifest`] from index 0 and [`MetaStore::inline_data`],
    /// in one read where the store can. `None` for an unknown or uncommitted file.
    async fn file_with_manifest(&self, id: FileId, limit: u32) -> Result<Option<FileStart>>;

    /// Committed files, newest first, strictly older than `before` when given; only those of
    /// `owner` when given.
    async fn list_files(
        &self,
        owner: Option<AccountId>,
        before: Option<FileId>,
        limit: u32,
    ) -> Result<Vec<FileRecord>>;

    /// Removes a committed file and its chunk references, and credits its size back to its
    /// owner's `bytes_used`; false when there was none.
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

    /// Claims for deletion those of `ids` that nothing references, however recently they were
    /// touched (state becomes deleting): the chunks an upload held when it was aborted, collected
    /// at once instead of after GC's grace period. Same protocol as
    /// [`MetaStore::gc_claim_unreferenced`]: an upload that meets a claimed row waits and
    /// writes the blob again. The caller deletes their blobs, then calls
    /// [`MetaStore::gc_forget`].
    async fn gc_claim_chunks(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>>;

    /// Gives back claims whose blob could not be deleted (the store failed): their rows leave
    /// the deleting state for `pending`, touched at `now`, so uploads stop waiting on them,
    /// any upload that references one writes its blob again (a partly deleted blob is
    /// restored), and GC collects them after its grace period if nothing does. Only for rows
    /// claimed by [`MetaStore::gc_claim_chunks`] under the GC lease.
    async fn gc_unclaim(&self, ids: &[ChunkId], now: OffsetDateTime) -> Result<()>;

    /// Records that a read found `id`'s blob missing or not matching its hash: a `live` row
    /// becomes `pending`, touched at `now`, so the next upload that references the chunk gets
    /// [`ChunkState::MustWrite`] and writes the blob again (a put replaces a damaged blob), and
    /// that upload's commit makes it live again. References are untouched, so GC still keeps
    /// the row while any file or upload references it. Rows in other states, and unknown
    /// hashes, are left as they are.
    async fn chunk_lost(&self, id: &ChunkId, now: OffsetDateTime) -> Result<()>;

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

    /// Of `hashes`, those that files or open uploads of `owner` reference (each once, in any
    /// order). Dedup tells a client that content is present only for these, so no account
    /// learns what another stores.
    async fn chunks_held_by(&self, owner: AccountId, hashes: &[ChunkId]) -> Result<Vec<ChunkId>>;

    /// Creates an account; [`MetaError::AlreadyExists`] when the name is taken.
    async fn create_account(&self, account: &Account) -> Result<()>;

    async fn account(&self, id: AccountId) -> Result<Option<Account>>;

    async fn account_by_name(&self, name: &str) -> Result<Option<Account>>;

    /// Every account, oldest first.
    async fn list_accounts(&self) -> Result<Vec<Account>>;

    /// Sets (or with `None` removes) an account's quota; false for an unknown account.
    /// Files already stored stay, even over a lowered quota; new commits are refused.
    async fn set_quota(&self, id: AccountId, quota_bytes: Option<u64>) -> Result<bool>;

    /// Disables (every key of the account is refused) or enables an account; false for an
    /// unknown account.
    async fn set_account_disabled(&self, id: AccountId, disabled: bool) -> Result<bool>;

    /// Stores a new API key; [`MetaError::AlreadyExists`] when the id is taken.
    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<()>;

    /// A key by its public id, in any state (revoked and expired included).
    async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>>;

    /// A key by its public id with its account, in one read: what authenticating a request
    /// needs. `None` for an unknown key; the account is `None` when the key's account is gone.
    async fn api_key_with_account(
        &self,
        id: &str,
    ) -> Result<Option<(ApiKeyRecord, Option<Account>)>>;

    /// The keys of one account, or of all; oldest first.
    async fn list_api_keys(&self, account: Option<AccountId>) -> Result<Vec<ApiKeyRecord>>;

    /// Revokes a key at `at` (idempotent: the first revocation time stays); false for an
    /// unknown key.
    async fn revoke_api_key(&self, id: &str, at: OffsetDateTime) -> Result<bool>;

    /// Makes a key expire at `at` (earlier or later than set before); false for an unknown key.
    async fn set_api_key_expiry(&self, id: &str, at: Option<OffsetDateTime>) -> Result<bool>;

    /// Records that a key was used at `at`.
    async fn touch_api_key(&self, id: &str, at: OffsetDateTime) -> Result<()>;

    /// The link-signing secret; when there is none yet, `fresh` becomes it (generation 1).
    /// Several nodes calling this at once all get the same secret.
    async fn link_secret(&self, fresh: &[u8], now: OffsetDateTime) -> Result<LinkSecret>;

    /// Replaces the link-signing secret with `fresh` and bumps its generation, which
    /// invalidates every link signed before.
    async fn rotate_link_secret(&self, fresh: &[u8], now: OffsetDateTime) -> Result<LinkSecret>;

    /// Checks that the database answers. Cheap enough for a readiness probe.
    async fn check(&self) -> Result<()>;

    /// Whether the schema matches this binary.
    async fn schema_status(&self) -> Result<SchemaStatus>;

    /// Applies pending migrations.
    async fn migrate(&self) -> Result<()>;

    fn describe(&self) -> String;
}

/// A stored chunk hash back as a [`ChunkId`].
pub(crate) fn chunk_id(bytes: Vec<u8>) -> Result<ChunkId> {
    let arr: [u8; 32] = bytes.try_into().map_err(|_| MetaError::Other {
        source: "a chunk hash in the database is not 32 bytes".into(),
    })?;
    Ok(ChunkId::from_bytes(arr))
}

/// A count or offset as the databases' signed 64-bit integer.
pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| MetaError::InvalidManifest {
        message: format!("{what} {v} is out of range"),
    })
}

/// A chunk reference's index, offset and length as stored, with its hash.
pub(crate) fn chunk_row(c: &PendingChunk) -> Result<(i64, i64, i64, ChunkId)> {
    Ok((
        to_i64(c.index, "chunk index")?,
        to_i64(c.offset, "chunk offset")?,
        to_i64(c.length, "chunk length")?,
        c.hash,
    ))
}

/// The manifest of a file recorded whole ([`MetaStore::create_file`]): one reference per index
/// (a later entry for an index wins), checked as `commit_upload` checks a recorded one:
/// indices `0..n` laid end to end at `chunk_size`, adding up to `size`.
pub(crate) fn whole_manifest(
    chunks: &[PendingChunk],
    chunk_size: u64,
    size: u64,
) -> Result<Vec<PendingChunk>> {
    if chunk_size == 0 {
        return Err(MetaError::InvalidManifest {
            message: "the chunk size must be positive".into(),
        });
    }
    let mut refs: Vec<PendingChunk> = chunks.iter().rev().copied().collect();
    refs.sort_by_key(|c| c.index);
    refs.dedup_by_key(|c| c.index);
    let n = chunkvault_types::chunk_count(size, chunk_size);
    let total: i128 = refs.iter().map(|c| i128::from(c.length)).sum();
    let misplaced = refs
        .iter()
        .filter(|c| {
            c.index >= n
                || Some(c.offset) != c.index.checked_mul(chunk_size)
                || c.length < 1
                || c.length > chunk_size
                || (c.index + 1 < n && c.length != chunk_size)
        })
        .count();
    check_layout(
        Layout {
            chunks: n.into(),
            chunk_size: chunk_size.into(),
            size: size.into(),
        },
        "given",
        [refs.len() as i128, total, misplaced as i128],
    )?;
    Ok(refs)
}

/// What a committed file's manifest must be: `chunks` indices `0..n` laid end to end at
/// `chunk_size`, adding up to `size`.
pub(crate) struct Layout {
    pub chunks: i128,
    pub chunk_size: i128,
    pub size: i128,
}

/// The check every commit makes of the chunks it was `given` or has `recorded`:
/// `[count, total bytes, misplaced]` against `expected`.
pub(crate) fn check_layout(expected: Layout, source: &str, found: [i128; 3]) -> Result<()> {
    let Layout {
        chunks: n,
        chunk_size,
        size,
    } = expected;
    let [count, total, misplaced] = found;
    if count != n || total != size || misplaced != 0 {
        return Err(MetaError::InvalidManifest {
            message: format!(
                "expected {n} chunks of {chunk_size} bytes totalling {size}; {source} {count} totalling {total}, {misplaced} misplaced"
            ),
        });
    }
    Ok(())
}

/// Each chunk's hash and length once, in hash order: the order every statement that writes
/// chunk rows follows, so concurrent uploads cannot deadlock on them.
pub(crate) fn unique_by_hash(chunks: &[PendingChunk]) -> Vec<(ChunkId, u64)> {
    let mut unique: Vec<(ChunkId, u64)> = chunks.iter().map(|c| (c.hash, c.length)).collect();
    unique.sort_by_key(|c| c.0);
    unique.dedup_by_key(|c| c.0);
    unique
}

/// Each id once, in hash order: the order every statement that locks chunk rows takes them in.
pub(crate) fn sorted_unique(ids: &[ChunkId]) -> Vec<ChunkId> {
    let mut sorted = ids.to_vec();
    sorted.sort();
    sorted.dedup();
    sorted
}

/// What to tell the caller per chunk, given which hashes were live before its write.
pub(crate) fn chunk_states(
    chunks: &[PendingChunk],
    live: &std::collections::HashMap<ChunkId, bool>,
) -> Vec<ChunkState> {
    chunks
        .iter()
        .map(|c| {
            if live.get(&c.hash) == Some(&true) {
                ChunkState::Stored
            } else {
                ChunkState::MustWrite
            }
        })
        .collect()
}

pub(crate) fn micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1000) as i64
}

pub(crate) fn from_micros(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}
