//! The pipeline of chunkvault: chunking, hashing, verification, upload sessions, streaming
//! reads, garbage collection, scrub, and repair and drain of replicated locations. It knows
//! only the [`BlobStore`] and [`MetaStore`] traits (and the location-aware API of
//! [`ReplicatedBlobStore`] for repair), so every front end and every backend pair share it.

mod auth;
mod download;
mod error;
mod gc;
mod locations;
mod metered;
mod repair;
mod scrub;
mod session;
mod stats;
mod upload;

use std::sync::Arc;
use std::time::Duration;

use chunkvault_blob::{BlobStore, ReplicatedBlobStore};
use chunkvault_meta::{FileRecord, FileStart, MetaStore};
use chunkvault_types::{ChunkEntry, FileId};

pub use auth::{
    AuthFailure, KEY_PREFIX, Link, LinkFailure, NewKey, Principal, UploadSlot, create_account,
    create_key, generate_key, hash_secret, parse_token, rotate_link_secret,
};
pub use error::{CoreError, Result};
pub use gc::{GcOptions, GcReport};
pub use locations::MetaLocationIndex;
pub use metered::{MeteredBlobs, MeteredMeta};
pub use repair::{RepairReport, RestoredChunk, UnrestoredChunk};
pub use scrub::{ScrubFinding, ScrubOptions, ScrubReport};
pub use session::{Appended, BodyChecksum, ChecksumAlgorithm, MAX_OFFERS, PutChunk, Session};
pub use stats::Stats;
pub use upload::{MAX_NAME_BYTES, MAX_TYPE_BYTES, Received, UploadMeta};

/// Tunables of the pipeline.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// Size of every chunk but a file's last.
    pub chunk_size: usize,
    /// An upload still open this long after it started is expired and its chunks collected.
    pub upload_ttl: Duration,
    /// Chunk writes one upload keeps in flight. With the chunk being filled, the one being
    /// hashed and the one queued, an upload holds at most `puts_in_flight + 3` chunks.
    pub puts_in_flight: usize,
    /// Chunks a download reads and verifies ahead of the one being sent. Four keep a remote
    /// store busy (two reached 0.67x of one direct GET against Azurite, four 0.89x) for
    /// `(read_ahead + 1) * chunk_size` of memory per download.
    pub read_ahead: usize,
    /// Uploads one account may have in progress at once on this node (whole-file uploads,
    /// chunk PUTs and tus requests count while their body streams).
    pub max_uploads_per_account: usize,
    /// A file uploaded whole (`POST /upload`) of at most this many bytes is kept in the
    /// metadata store instead of as a chunk and a blob (see [`MetaStore::create_inline_file`]);
    /// 0 keeps every file in chunks. Files larger than one chunk never are.
    pub inline_max: usize,
}

impl Default for VaultConfig {
    fn default() -> Self {
        Self {
            chunk_size: 4 << 20,
            upload_ttl: Duration::from_secs(24 * 3600),
            puts_in_flight: 4,
            read_ahead: 4,
            max_uploads_per_account: 16,
            inline_max: Self::DEFAULT_INLINE_MAX,
        }
    }
}

impl VaultConfig {
    /// The smallest and largest chunk sizes accepted (1 KiB to 64 MiB).
    pub const CHUNK_SIZE_RANGE: std::ops::RangeInclusive<usize> = 1024..=(64 << 20);
    /// 16 KiB: four database pages. A 4 KiB file kept inline is about twice as fast to upload
    /// as one kept in a chunk (ARCHITECTURE.md, "Small files kept inline").
    pub const DEFAULT_INLINE_MAX: usize = 16 << 10;
    /// The largest `inline_max` accepted: a row in the metadata store, not a place for big
    /// files.
    pub const INLINE_MAX_LIMIT: usize = 1 << 20;
}

/// The service: files cut into content-addressed chunks in a blob store, described in a
/// metadata store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Vault {
    blobs: Arc<dyn BlobStore>,
    meta: Arc<dyn MetaStore>,
    config: Arc<VaultConfig>,
    stats: Arc<Stats>,
    last_scrub: Arc<std::sync::Mutex<Option<ScrubReport>>>,
    upload_locks: Arc<session::UploadLocks>,
    upload_slots: Arc<auth::UploadSlots>,
    /// When this node last recorded each key's use (see `Vault::authenticate`).
    key_uses: Arc<std::sync::Mutex<std::collections::HashMap<String, time::OffsetDateTime>>>,
    /// The blob store seen as locations, when it is a [`ReplicatedBlobStore`].
    replicas: Option<ReplicatedBlobStore>,
}

impl Vault {
    pub fn new(blobs: Arc<dyn BlobStore>, meta: Arc<dyn MetaStore>, config: VaultConfig) -> Self {
        assert!(
            VaultConfig::CHUNK_SIZE_RANGE.contains(&config.chunk_size),
            "chunk size is validated by the configuration loader"
        );
        // Metered here, so every front end reports store latency and errors the same way.
        Self {
            blobs: Arc::new(MeteredBlobs::new(blobs)),
            meta: Arc::new(MeteredMeta::new(meta)),
            config: Arc::new(config),
            stats: Arc::default(),
            last_scrub: Arc::default(),
            upload_locks: Arc::default(),
            upload_slots: Arc::default(),
            key_uses: Arc::default(),
            replicas: None,
        }
    }

    pub fn config(&self) -> &VaultConfig {
        &self.config
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.blobs
    }

    pub fn meta(&self) -> &Arc<dyn MetaStore> {
        &self.meta
    }

    /// A committed file the principal may see; another account's is `NotFound`, exactly like
    /// a missing one.
    pub async fn file(&self, who: &Principal, id: FileId) -> Result<FileRecord> {
        self.meta
            .file(id)
            .await?
            .filter(|f| who.may_see(f.owner))
            .ok_or(CoreError::NotFound)
    }

    /// A file the caller may see, with the first entries of its manifest and an inline
    /// file's content: what a download needs before it answers, in one metadata read. Hand
    /// them to [`Vault::read_from`].
    pub async fn file_for_download(&self, who: &Principal, id: FileId) -> Result<FileStart> {
        self.meta
            .file_with_manifest(id, download::MANIFEST_PAGE as u32)
            .await?
            .filter(|start| who.may_see(start.file.owner))
            .ok_or(CoreError::NotFound)
    }

    /// The whole manifest of a committed file. Its size grows with the file: for the API's
    /// file detail, not for streaming.
    /// An inline file's one entry is its content's, computed from the content once it is
    /// verified.
    pub async fn manifest(&self, who: &Principal, id: FileId) -> Result<Vec<ChunkEntry>> {
        let file = self.file(who, id).await?;
        if file.inline {
            let data = self.inline_content(&file).await?;
            return Ok(vec![ChunkEntry {
                index: 0,
                offset: 0,
                length: data.len() as u64,
                hash: chunkvault_types::ChunkId::of(&data),
            }]);
        }
        let mut all = Vec::new();
        loop {
            let page = self.meta.manifest(id, all.len() as u64, 10_000).await?;
            if page.is_empty() {
                return Ok(all);
            }
            all.extend(page);
        }
    }

    /// Committed files the principal may see, newest first.
    pub async fn list(
        &self,
        who: &Principal,
        before: Option<FileId>,
        limit: u32,
    ) -> Result<Vec<FileRecord>> {
        Ok(self.meta.list_files(who.scope(), before, limit).await?)
    }

    /// Deletes a committed file: invisible at once; its chunks are collected by GC; its size
    /// is credited back to its owner's quota.
    pub async fn delete(&self, who: &Principal, id: FileId) -> Result<()> {
        // The owner of a file never changes, so checking first is as good as checking inside.
        self.file(who, id).await?;
        if self.meta.delete_file(id).await? {
            Ok(())
        } else {
            Err(CoreError::NotFound)
        }
    }

    /// Whether both stores answer.
    pub async fn ready(&self) -> Result<()> {
        self.meta.check().await?;
        self.blobs.check().await?;
        Ok(())
    }
}
