//! Repair and drain over a [`ReplicatedBlobStore`]: bring every chunk the metadata knows back
//! to its placement policy from a healthy copy, or move every copy off one location.
//!
//! Where copies live is recorded in the metadata ([`crate::MetaLocationIndex`]); placement
//! (rendezvous hashing over location names) says where they should be, and repair reads every
//! placed copy, re-creates what is missing or damaged and records what it found and wrote.

use std::sync::Arc;

use chunkvault_blob::{BlobError, ReplicatedBlobStore};
use chunkvault_meta::MetaStore;
use chunkvault_types::{ChunkId, FileId};
use futures::TryStreamExt;
use serde::Serialize;

use crate::{CoreError, Result, Vault, VaultConfig};

/// What a repair or drain did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairReport {
    pub chunks_checked: u64,
    /// Copies re-created: (chunk, locations written).
    pub restored: Vec<RestoredChunk>,
    /// Chunks still below policy after the attempt.
    pub unrestored: Vec<UnrestoredChunk>,
}

impl RepairReport {
    /// Every chunk checked meets its policy.
    pub fn is_complete(&self) -> bool {
        self.unrestored.is_empty()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoredChunk {
    pub chunk: ChunkId,
    pub locations: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnrestoredChunk {
    pub chunk: ChunkId,
    /// Locations that still lack a good copy.
    pub locations: Vec<String>,
    /// No healthy copy exists anywhere.
    pub lost: bool,
    /// Files that reference it.
    pub files: Vec<FileId>,
}

impl Vault {
    /// A vault over several blob locations: `replicas` records where every copy lives in
    /// `meta` (see [`crate::MetaLocationIndex`]) and is both the vault's blob store and its
    /// location-aware handle (repair, drain, policy-aware scrub). The way to build one; a
    /// single-location deployment uses [`Vault::new`] and records no locations.
    pub fn replicated(
        replicas: ReplicatedBlobStore,
        meta: Arc<dyn MetaStore>,
        config: VaultConfig,
    ) -> Self {
        let index = crate::MetaLocationIndex::new(Arc::new(crate::MeteredMeta::new(meta.clone())));
        let replicas = replicas.with_index(Arc::new(index));
        Self::new(Arc::new(replicas.clone()), meta, config).with_replicas(replicas)
    }

    /// Adds the location-aware handle of the blob store this vault was built with (the same
    /// store, seen through its own API), which enables repair, drain and policy-aware scrub.
    pub fn with_replicas(mut self, replicas: ReplicatedBlobStore) -> Self {
        self.replicas = Some(replicas);
        self
    }

    /// The replicated store, when the deployment has several locations.
    pub fn replicas(&self) -> Option<&ReplicatedBlobStore> {
        self.replicas.as_ref()
    }

    fn require_replicas(&self) -> Result<&ReplicatedBlobStore> {
        self.replicas.as_ref().ok_or_else(|| CoreError::Invalid {
            code: "not_replicated",
            message: "this deployment has a single blob location: nothing to repair or drain"
                .into(),
        })
    }

    async fn repair_one(
        &self,
        replicas: &ReplicatedBlobStore,
        id: &ChunkId,
        exclude: Option<&str>,
        report: &mut RepairReport,
    ) -> Result<()> {
        report.chunks_checked += 1;
        let outcome = replicas
            .repair_chunk(id, exclude)
            .await
            .map_err(|e| match e {
                BlobError::Config { message } => CoreError::Invalid {
                    code: "policy_not_met",
                    message,
                },
                e => e.into(),
            })?;
        if !outcome.restored.is_empty() {
            tracing::info!(chunk = %id, locations = ?outcome.restored, "chunk copies restored");
            report.restored.push(RestoredChunk {
                chunk: *id,
                locations: outcome.restored.clone(),
            });
        }
        if !outcome.complete() {
            let files = self.meta.files_with_chunk(id, 100).await?;
            tracing::error!(chunk = %id, lost = outcome.lost, locations = ?outcome.failed, files = ?files, "chunk still below its placement policy");
            report.unrestored.push(UnrestoredChunk {
                chunk: *id,
                locations: outcome.failed,
                lost: outcome.lost,
                files,
            });
        }
        Ok(())
    }

    /// Checks every chunk a committed upload wrote and re-creates missing or corrupt copies
    /// from a healthy one. Reads every placed copy in full.
    pub async fn repair(&self) -> Result<RepairReport> {
        let replicas = self.require_replicas()?;
        let mut report = RepairReport::default();
        let mut after = None;
        loop {
            let page = self.meta.chunks(after, 500).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.hash);
            for c in page.into_iter().filter(|c| c.live) {
                self.repair_one(replicas, &c.hash, None, &mut report)
                    .await?;
            }
        }
        crate::Stats::set(
            &self.stats.chunks_below_policy,
            report.unrestored.len() as u64,
        );
        Ok(report)
    }

    /// Repairs the chunks the read and write paths queued (copies skipped or not written),
    /// and those the metadata records with a missing or corrupt copy (so the queue survives a
    /// restart). Chunks the metadata no longer references are left to GC.
    pub async fn repair_queued(&self) -> Result<RepairReport> {
        let replicas = self.require_replicas()?;
        let mut report = RepairReport::default();
        let mut queued = replicas.take_repair_queue();
        let mut after = None;
        let recorded = loop {
            match self.meta.chunks_with_bad_copies(after, 1000).await {
                Ok(page) if page.is_empty() => break Ok(()),
                Ok(page) => {
                    after = page.last().copied();
                    queued.extend(page);
                }
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = recorded {
            for id in &queued {
                replicas.requeue(*id);
            }
            return Err(e.into());
        }
        queued.sort();
        queued.dedup();
        for (n, id) in queued.iter().enumerate() {
            // A chunk of a failed upload, or one GC just deleted: not ours to bring back.
            let referenced = match self.meta.files_with_chunk(id, 1).await {
                Ok(files) => !files.is_empty(),
                Err(e) => {
                    for id in &queued[n..] {
                        replicas.requeue(*id);
                    }
                    return Err(e.into());
                }
            };
            if !referenced {
                continue;
            }
            if let Err(e) = self.repair_one(replicas, id, None, &mut report).await {
                // Put the rest back for the next round.
                for id in &queued[n..] {
                    replicas.requeue(*id);
                }
                return Err(e);
            }
        }
        for c in &report.unrestored {
            replicas.requeue(c.chunk);
        }
        Ok(report)
    }

    /// Moves every copy on location `name` onto the placement that excludes it, deleting it
    /// there once the others hold it. Afterwards the location can be removed from the
    /// configuration (mark it `draining = true` until then, so new puts avoid it).
    pub async fn drain(&self, name: &str) -> Result<RepairReport> {
        let replicas = self.require_replicas()?;
        let ids: Vec<ChunkId> = replicas
            .list_location(name)
            .map_err(|e| match e {
                BlobError::Config { message } => CoreError::Invalid {
                    code: "unknown_location",
                    message,
                },
                e => e.into(),
            })?
            .map_ok(|m| m.id)
            .try_collect()
            .await?;
        let mut report = RepairReport::default();
        for id in ids {
            self.repair_one(replicas, &id, Some(name), &mut report)
                .await?;
        }
        Ok(report)
    }
}
