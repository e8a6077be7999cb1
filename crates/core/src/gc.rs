//! Garbage collection: expire abandoned uploads, delete blobs nothing references, find blobs
//! the metadata does not know (orphans) and metadata whose blob is gone (missing).
//!
//! Safety rests on the chunk-row protocol of the metadata store (see chunkvault_meta): a blob
//! is deleted only after its row was claimed (state `deleting`) in a transaction that found no
//! reference, and an upload meeting a claimed row waits, then writes the blob again. A lease in
//! the metadata store keeps GC to one node at a time.

use std::collections::HashMap;
use std::time::Duration;

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
