//! Garbage collection: expire abandoned uploads, delete blobs nothing references, find blobs
//! the metadata does not know (orphans) and metadata whose blob is gone (missing).
//!
//! Safety rests on the chunk-row protocol of the metadata store (see chunkvault_meta): a blob
//! is deleted only after its row was claimed (state `deleting`) in a transaction that found no
//! reference, and an upload meeting a claimed row waits, then writes the blob again. A lease in
//! the metadata store keeps GC to one node at a time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chunkvault_blob::BlobStore;
use chunkvault_meta::{MetaError, MetaStore};
use chunkvault_types::{ChunkId, FileId};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use time::OffsetDateTime;

use crate::{Result, Stats, Vault};

const LEASE: &str = "gc";
const BATCH: u32 = 500;
const DELETES_IN_FLIGHT: usize = 8;

#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Chunks unreferenced for less than this, and orphan blobs younger than this, are kept.
    pub grace: Duration,
    /// Who runs this GC, for the lease (host and process).
    pub holder: String,
    /// The lease lasts this long unless renewed; it is renewed after every batch.
    pub lease_ttl: Duration,
}

/// What one GC run did and found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Another node held the GC lease: nothing was done.
    pub skipped_lease_held: bool,
    pub expired_uploads: Vec<FileId>,
    /// Blobs deleted because nothing references them any more.
    pub deleted_unreferenced: Vec<ChunkId>,
    /// Blobs deleted because the metadata did not know them (written by a crashed upload).
    pub deleted_orphans: Vec<ChunkId>,
    /// Debris of interrupted writes removed (a local directory's staging files).
    pub swept_incomplete: u64,
    /// Chunks committed files reference whose blob is not in the store, with those files.
    pub missing: Vec<MissingChunk>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MissingChunk {
    pub chunk: ChunkId,
    pub files: Vec<FileId>,
}

impl Vault {
    /// Runs one garbage collection. Idempotent; safe beside uploads and other GC runs.
    pub async fn gc(&self, opts: &GcOptions) -> Result<GcReport> {
        let mut report = GcReport::default();
        let now = OffsetDateTime::now_utc();
        if !self
            .meta
            .try_lease(LEASE, &opts.holder, opts.lease_ttl, now)
            .await?
        {
            report.skipped_lease_held = true;
            return Ok(report);
        }
        let result = self.gc_leased(opts, &mut report).await;
        if let Err(e) = self.meta.release_lease(LEASE, &opts.holder).await {
            tracing::warn!(error = %e, "could not release the GC lease; it expires by itself");
        }
        record_gc(&report, result.is_ok());
        result.map(|()| report)
    }
}

/// GC's progress and findings as metrics. A failed run still counts what it deleted before it
/// failed; the missing-chunk gauge only changes after a complete run, since a partial one did
/// not look at every chunk.
fn record_gc(report: &GcReport, ok: bool) {
    metrics::counter!("chunkvault_gc_runs_total", "result" => if ok { "ok" } else { "error" })
        .increment(1);
    metrics::counter!("chunkvault_gc_blobs_deleted_total", "reason" => "unreferenced")
        .increment(report.deleted_unreferenced.len() as u64);
    metrics::counter!("chunkvault_gc_blobs_deleted_total", "reason" => "orphan")
        .increment(report.deleted_orphans.len() as u64);
    metrics::counter!("chunkvault_gc_incomplete_writes_swept_total")
        .increment(report.swept_incomplete);
    if ok {
        metrics::gauge!("chunkvault_gc_missing_chunks").set(report.missing.len() as f64);
        metrics::gauge!("chunkvault_gc_last_success_timestamp_seconds")
            .set(OffsetDateTime::now_utc().unix_timestamp() as f64);
    }
}

impl Vault {
    async fn gc_leased(&self, opts: &GcOptions, report: &mut GcReport) -> Result<()> {
        loop {
            let expired = self.meta.expire_uploads(OffsetDateTime::now_utc()).await?;
            if expired.is_empty() {
                break;
            }
            Stats::add(&self.stats.uploads_expired, expired.len() as u64);
            report.expired_uploads.extend(expired);
        }

        // After expiry, which touches the chunks it dereferences: with a zero grace they are
        // collected in this same run.
        let cutoff = OffsetDateTime::now_utc() - opts.grace;
        loop {
            let claimed = self.meta.gc_claim_unreferenced(cutoff, BATCH).await?;
            if claimed.is_empty() {
                break;
            }
            self.renew_lease(opts).await?;
            self.delete_blobs(&claimed).await?;
            self.meta.gc_forget(&claimed).await?;
            report.deleted_unreferenced.extend(claimed);
        }

        // Orphans and missing blobs need the store's listing. Its size grows with the number
        // of chunks (about 50 bytes each), not with their bytes.
        let listed: HashMap<ChunkId, OffsetDateTime> = self
            .blobs
            .list()
            .map_ok(|m| (m.id, m.last_modified))
            .try_collect()
            .await?;
        let old_enough: Vec<ChunkId> = listed
            .iter()
            .filter(|(_, t)| **t < cutoff)
            .map(|(id, _)| *id)
            .collect();
        for batch in old_enough.chunks(BATCH as usize) {
            let claimed = self
                .meta
                .gc_claim_orphans(batch, OffsetDateTime::now_utc())
                .await?;
            if claimed.is_empty() {
                continue;
            }
            self.renew_lease(opts).await?;
            self.delete_blobs(&claimed).await?;
            self.meta.gc_forget(&claimed).await?;
            report.deleted_orphans.extend(claimed);
        }

        report.swept_incomplete = self.blobs.sweep_incomplete(cutoff).await?;

        let mut after = None;
        loop {
            let page = self.meta.chunks(after, BATCH).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.hash);
            for c in page
                .iter()
                .filter(|c| c.live && !listed.contains_key(&c.hash))
            {
                // Listed before this chunk was committed? Ask the store again before reporting.
                if self.blobs.head(&c.hash).await?.is_none() {
                    let files = self.meta.files_with_chunk(&c.hash, 100).await?;
                    tracing::error!(chunk = %c.hash, files = ?files, "referenced chunk is missing from the blob store");
                    report.missing.push(MissingChunk {
                        chunk: c.hash,
                        files,
                    });
                }
            }
        }
        Ok(())
    }

    async fn renew_lease(&self, opts: &GcOptions) -> Result<()> {
        if self
            .meta
            .try_lease(
                LEASE,
                &opts.holder,
                opts.lease_ttl,
                OffsetDateTime::now_utc(),
            )
            .await?
        {
            Ok(())
        } else {
            // Our lease lapsed and another node took it: stop before deleting anything more.
            Err(crate::CoreError::Busy)
        }
    }

    async fn delete_blobs(&self, ids: &[ChunkId]) -> Result<()> {
        // Owned futures: a closure returning futures that borrow `self` makes the GC future
        // not provably Send, and the server spawns it.
        let blobs = self.blobs.clone();
        futures::stream::iter(ids.to_vec())
            .map(move |id| {
                let blobs = blobs.clone();
                async move { blobs.delete(&id).await }
            })
            .buffer_unordered(DELETES_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }
}

/// Page size for reading an aborted upload's references.
const RELEASE_PAGE: u32 = 1000;

/// How long an aborted upload's collection may hold the GC lease (it releases it when done).
const RELEASE_LEASE_TTL: Duration = Duration::from_secs(120);

/// How long an aborted upload's collection waits for a GC run to release the lease before it
/// leaves the chunks to GC.
const RELEASE_LEASE_WAIT: Duration = Duration::from_secs(5);

/// One aborted upload's collection at a time in this process; across processes the GC lease
/// orders them.
static RELEASING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Aborts an open upload, then collects in the background the chunks that only it held,
/// instead of leaving them for GC's grace period: a failed upload does not keep its space.
/// The references are read before the abort drops them; if they cannot be read, the upload is
/// still aborted and GC collects its chunks. Only the abort's own failure is an error; see
/// [`release`] for the collection.
pub(crate) async fn abort_and_collect(
    meta: &Arc<dyn MetaStore>,
    blobs: &Arc<dyn BlobStore>,
    id: FileId,
) -> std::result::Result<(), MetaError> {
    let held = held_chunks(meta.as_ref(), id).await.unwrap_or_else(|e| {
        tracing::debug!(upload = %id, error = %e, "could not read an aborted upload's chunks; GC will collect them");
        Vec::new()
    });
    meta.abort_upload(id).await?;
    if !held.is_empty() {
        tokio::spawn(release(meta.clone(), blobs.clone(), id, held));
    }
    Ok(())
}

/// Every chunk an open upload references.
async fn held_chunks(
    meta: &dyn MetaStore,
    id: FileId,
) -> std::result::Result<Vec<ChunkId>, MetaError> {
    let mut held = Vec::new();
    let mut from = 0;
    loop {
        // A session's chunks may have gaps: page on indices, not on counts.
        let page = meta.upload_chunks(id, from, RELEASE_PAGE).await?;
        let Some(last) = page.last() else { break };
        from = last.index + 1;
        let full = page.len() == RELEASE_PAGE as usize;
        held.extend(page.into_iter().map(|c| c.hash));
        if !full {
            break;
        }
    }
    Ok(held)
}

/// Collects the chunks of an aborted upload that nothing else references, under the GC lease
/// (rule 5 in ARCHITECTURE.md: GC finishes rows it finds `deleting`, which must not be rows
/// another collector is still working on). Each is claimed as GC claims (an upload that meets
/// a claimed row waits and writes the blob again), its blob deleted and its row forgotten. When
/// a GC run holds the lease for longer than [`RELEASE_LEASE_WAIT`], or anything fails, the
/// chunks are left to GC, which collects them after its grace period.
async fn release(
    meta: Arc<dyn MetaStore>,
    blobs: Arc<dyn BlobStore>,
    id: FileId,
    held: Vec<ChunkId>,
) {
    let deadline = tokio::time::Instant::now() + RELEASE_LEASE_WAIT;
    let _one = RELEASING.lock().await;
    let holder = format!("abort {id}");
    loop {
        match meta
            .try_lease(LEASE, &holder, RELEASE_LEASE_TTL, OffsetDateTime::now_utc())
            .await
        {
            Ok(true) => break,
            Ok(false) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(false) => {
                tracing::debug!(upload = %id, "GC holds its lease; the aborted upload's chunks are left to it");
                return;
            }
            Err(e) => {
                tracing::warn!(upload = %id, error = %e, "could not collect an aborted upload's chunks; GC will");
                return;
            }
        }
    }
    let collected = async {
        let claimed = meta.gc_claim_chunks(&held).await?;
        let (mut deleted, mut kept) = (Vec::new(), Vec::new());
        for chunk in claimed {
            match blobs.delete(&chunk).await {
                Ok(()) => deleted.push(chunk),
                Err(e) => {
                    tracing::debug!(chunk = %chunk, error = %e, "could not delete an aborted upload's chunk");
                    kept.push(chunk);
                }
            }
        }
        meta.gc_forget(&deleted).await?;
        // A store that failed now (often why the upload failed) must not leave rows claimed
        // until the next GC run: uploads of the same content would wait on them.
        if !kept.is_empty() {
            meta.gc_unclaim(&kept, OffsetDateTime::now_utc()).await?;
        }
        Ok::<_, crate::CoreError>(deleted.len())
    };
    match collected.await {
        Ok(n) => {
            metrics::counter!("chunkvault_gc_blobs_deleted_total", "reason" => "aborted")
                .increment(n as u64);
        }
        Err(e) => {
            tracing::warn!(upload = %id, error = %e, "could not collect an aborted upload's chunks; GC will");
        }
    }
    if let Err(e) = meta.release_lease(LEASE, &holder).await {
        tracing::warn!(error = %e, "could not release the GC lease; it expires by itself");
    }
}
