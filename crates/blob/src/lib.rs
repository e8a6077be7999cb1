//! The chunk blob store seam.
//!
//! [`BlobStore`] is the one trait every chunk store implements: the [`ObjectStoreBlobs`]
//! adapter over the `object_store` crate (local directory, memory, Azure Blob, S3, GCS), and
//! wrappers that implement the same trait over other stores ([`FaultyBlobStore`] for tests,
//! [`ReplicatedBlobStore`] for several locations with a placement policy).
//! [`conformance`] is the suite every implementation must pass.

mod adapter;
#[cfg(feature = "azure")]
mod azure;
pub mod conformance;
mod erasure;
mod error;
mod faulty;
mod key;
mod pool;
mod replicated;

use std::fmt::Debug;

use async_trait::async_trait;
use bytes::Bytes;
use chunkvault_types::ChunkId;
use futures::stream::BoxStream;
use time::OffsetDateTime;

pub use adapter::{BlobConfig, ObjectStoreBlobs, RetryOptions};
#[cfg(feature = "azure")]
pub use azure::AzureConfig;
pub use error::{BlobError, Result};
pub use faulty::{Fault, FaultyBlobStore, Hook};
pub use key::{CHUNK_PREFIX, chunk_key, parse_chunk_key};
pub use pool::{ChunkBuf, POOLED_MIN};
pub use replicated::{
    ChunkHealth, CopyState, HEDGE_AFTER, IndexedCopy, Location, LocationIndex, Policy,
    RepairOutcome, ReplicaStats, ReplicatedBlobStore, placement,
};

/// Blobs up to this size are hashed on the calling task: a thread hand-off would cost more.
const HASH_ON_TASK_MAX: usize = 64 << 10;

/// Whether `data` hashes to `id`; hashed on a blocking thread unless small.
pub(crate) async fn matches_off_task(id: ChunkId, data: Bytes) -> Result<bool> {
    if data.len() <= HASH_ON_TASK_MAX {
        return Ok(id.matches(&data));
    }
    tokio::task::spawn_blocking(move || id.matches(&data))
        .await
        .map_err(|e| BlobError::Other {
            source: Box::new(e),
        })
}

/// What a store knows about one stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    pub id: ChunkId,
    pub size: u64,
    /// When the blob was last written. GC uses it for its grace period: a blob written moments
    /// ago may belong to an upload that has not recorded its reference yet.
    pub last_modified: OffsetDateTime,
}

/// A store of chunk blobs addressed by their content hash.
///
/// Contract, for every implementation:
/// - `put` is idempotent: the key is the hash of the content, so writing the same id twice
///   stores the same bytes. When `put` returns `Ok` the blob is readable by `get` from any node
///   sharing the store. A failed `put` may or may not have stored the blob.
/// - Blobs are never partially visible: `get` returns all of a blob or an error, never a prefix.
/// - Missing blobs are [`BlobError::NotFound`]; a missing container, bucket or directory is
///   [`BlobError::ContainerMissing`], never `NotFound`, so a wiped location is not mistaken for
///   one missing chunk.
/// - `get` does not verify content: callers check `ChunkId::matches` on what they read, or
///   read with `get_checked`, which says whether the bytes match their id. A store may hash
///   while it reads there (a local directory does, piece by piece, while each piece is still
///   in the CPU's cache), so nothing is read twice.
/// - `delete` is idempotent: deleting a missing blob is `Ok`.
#[async_trait]
pub trait BlobStore: Send + Sync + Debug + 'static {
    /// Stores `data` under `id`.
    async fn put(&self, id: &ChunkId, data: Bytes) -> Result<()>;

    /// Reads the whole blob.
    async fn get(&self, id: &ChunkId) -> Result<Bytes>;

    /// Reads the whole blob, as `get` does, and checks it against `id`: `(data, true)` when
    /// `data` hashes to `id`, `(data, false)` when it does not (a damaged blob). Errors as
    /// `get`. A wrapper around another store forwards it, or the inner store's hashing while
    /// reading is lost (the default reads, then hashes).
    async fn get_checked(&self, id: &ChunkId) -> Result<(Bytes, bool)> {
        let data = self.get(id).await?;
        let ok = matches_off_task(*id, data.clone()).await?;
        Ok((data, ok))
    }

    /// The blob's metadata, or `None` when it is not stored.
    async fn head(&self, id: &ChunkId) -> Result<Option<BlobMeta>>;

    /// Removes the blob; `Ok` if it was not there.
    async fn delete(&self, id: &ChunkId) -> Result<()>;

    /// Every chunk blob in the store, in no particular order. Objects under the chunk prefix
    /// whose names are not chunk ids are skipped.
    fn list(&self) -> BoxStream<'_, Result<BlobMeta>>;

    /// Checks that the store is reachable, the credentials work and the container exists.
    /// Cheap enough for a readiness probe.
    async fn check(&self) -> Result<()>;

    /// Removes the debris of writes a crash interrupted (a local directory's staging files)
    /// last modified before `older_than`; returns how many were removed. Stores whose writes are
    /// atomic on the server side (Azure, S3, GCS, memory) leave none and return 0.
    async fn sweep_incomplete(&self, older_than: OffsetDateTime) -> Result<u64> {
        let _ = older_than;
        Ok(0)
    }

    /// A short description for logs and start-up messages, without secrets.
    fn describe(&self) -> String;

    /// Whether a `put` also records the chunk's copies in the metadata store (a replicated
    /// store with a location index does), which needs the chunk to be recorded there first.
    /// Core then records every chunk before writing its blob. Stores that only write the blob
    /// (the default) also let core write a small file's blob first and record the whole file
    /// in one transaction.
    fn records_copies(&self) -> bool {
        false
    }
}
