//! The metadata store as the replicated blob store's location index: where each copy or shard
//! of a chunk lives is recorded in the `chunk_locations` table (see ARCHITECTURE.md).
//!
//! The blob crate defines the small [`LocationIndex`] trait and cannot see the metadata crate
//! (they sit side by side below core); core, which knows both, joins them here.

use std::sync::Arc;

use async_trait::async_trait;
use chunkvault_blob::{BlobError, CopyState, IndexedCopy, LocationIndex};
use chunkvault_meta::{ChunkCopy, CopyStatus, MetaError, MetaStore};
use chunkvault_types::ChunkId;
use time::OffsetDateTime;

/// [`LocationIndex`] over a [`MetaStore`].
#[derive(Debug, Clone)]
pub struct MetaLocationIndex {
    meta: Arc<dyn MetaStore>,
}

impl MetaLocationIndex {
    pub fn new(meta: Arc<dyn MetaStore>) -> Self {
        Self { meta }
    }
}

fn blob_error(e: MetaError) -> BlobError {
    if e.is_unavailable() {
        BlobError::Unavailable {
            source: Box::new(e),
        }
    } else {
        BlobError::Other {
            source: Box::new(e),
        }
    }
}

#[async_trait]
impl LocationIndex for MetaLocationIndex {
    async fn copies(&self, id: &ChunkId) -> chunkvault_blob::Result<Vec<IndexedCopy>> {
        let copies = self.meta.chunk_copies(id).await.map_err(blob_error)?;
        Ok(copies
            .into_iter()
            .map(|c| IndexedCopy {
                chunk: c.hash,
                location: c.location,
                shard: c.shard.map(|s| s as usize),
                state: match c.state {
                    CopyStatus::Ok => CopyState::Healthy,
                    CopyStatus::Missing => CopyState::Missing,
                    CopyStatus::Corrupt => CopyState::Corrupt,
                },
            })
            .collect())
    }

    async fn record(&self, copies: &[IndexedCopy]) -> chunkvault_blob::Result<()> {
        let now = OffsetDateTime::now_utc();
        let rows: Vec<ChunkCopy> = copies
            .iter()
            .filter_map(|c| {
                let state = match c.state {
                    CopyState::Healthy => CopyStatus::Ok,
                    CopyState::Missing => CopyStatus::Missing,
                    CopyState::Corrupt => CopyStatus::Corrupt,
                    CopyState::Unreachable => return None,
                };
                Some(ChunkCopy {
                    hash: c.chunk,
                    location: c.location.clone(),
                    shard: c.shard.and_then(|s| u32::try_from(s).ok()),
                    state,
                    verified_at: now,
                })
            })
            .collect();
        self.meta.record_copies(&rows).await.map_err(blob_error)
    }

    async fn forget(&self, location: &str, ids: &[ChunkId]) -> chunkvault_blob::Result<()> {
        self.meta
            .forget_copies(location, ids)
            .await
            .map_err(blob_error)
    }
}
