//! Scrub: read every committed chunk back at a bounded rate and check it against its hash,
//! and every inline file's content against the file's digest.

use std::time::{Duration, Instant};

use bytes::Bytes;
use chunkvault_blob::{BlobError, CopyState};
use chunkvault_types::{ChunkId, FileId};
use serde::Serialize;
use time::OffsetDateTime;

use crate::{Result, Stats, Vault};

#[derive(Debug, Clone, Default)]
pub struct ScrubOptions {
    /// Upper bound on the bytes read per second; `None` reads as fast as the store allows.
    pub bytes_per_second: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScrubReport {
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub finished_at: OffsetDateTime,
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    pub findings: Vec<ScrubFinding>,
}

impl ScrubReport {
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScrubFinding {
    /// BLAKE3 of the chunk, lowercase hex; for an inline file, of its content as found.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub chunk: ChunkId,
    /// `missing` or `corrupt`; with several locations also `below_policy` (some placed copies
    /// missing, corrupt or unreachable, at least one healthy) and `unreachable` (no healthy
    /// copy, some locations did not answer).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub problem: &'static str,
    /// Files (and open uploads) that reference the chunk.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub files: Vec<FileId>,
    /// With several locations: `[location, state]` for each placed copy, state being
    /// `healthy`, `missing`, `corrupt` or `unreachable`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Vec<String>>))]
    pub copies: Vec<(String, CopyState)>,
}

/// Waits until `checked` bytes since `clock` started are within the scrub's rate.
async fn pace(opts: &ScrubOptions, clock: Instant, checked: u64) {
    if let Some(rate) = opts.bytes_per_second.filter(|r| *r > 0) {
        let due = Duration::from_secs_f64(checked as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(clock.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
}

impl Vault {
    /// Checks every chunk a committed upload wrote. Findings are logged and reported; the
    /// report is kept as [`Vault::last_scrub`].
    pub async fn scrub(&self, opts: &ScrubOptions) -> Result<ScrubReport> {
        let started_at = OffsetDateTime::now_utc();
        let clock = Instant::now();
        let mut report = ScrubReport {
            started_at,
            finished_at: started_at,
            chunks_checked: 0,
            bytes_checked: 0,
            findings: Vec::new(),
        };
        let mut after = None;
        loop {
            let page = self.meta.chunks(after, 500).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.hash);
            for c in page.into_iter().filter(|c| c.live) {
                let mut copies = Vec::new();
                let problem = if let Some(replicas) = &self.replicas {
                    // Every placed copy is read and verified, so a chunk below its policy is
                    // reported even though reads still succeed.
                    let health = replicas.inspect(&c.hash).await;
                    let healthy = health.healthy();
                    // A shard holds 1/data of the chunk; a copy all of it.
                    let per = replicas.erasure_coding().map_or(1, |(d, _)| d as u64);
                    let checked = c.size * healthy as u64 / per;
                    report.bytes_checked += checked;
                    metrics::counter!("chunkvault_scrub_bytes_checked_total").increment(checked);
                    let has = |s| health.copies.iter().any(|(_, x)| *x == s);
                    let problem = if healthy == health.copies.len() {
                        Stats::add(&self.stats.chunks_verified, 1);
                        None
                    } else if healthy > 0 {
                        Some("below_policy")
                    } else if has(CopyState::Corrupt) {
                        Stats::add(&self.stats.chunks_corrupt, 1);
                        Some("corrupt")
                    } else if has(CopyState::Unreachable) {
                        Some("unreachable")
                    } else {
                        Stats::add(&self.stats.chunks_missing, 1);
                        Some("missing")
                    };
                    if problem.is_some() {
                        copies = health.copies;
                    }
                    problem
                } else {
                    match self.blobs.get_checked(&c.hash).await {
                        Ok((data, ok)) => {
                            report.bytes_checked += data.len() as u64;
                            metrics::counter!("chunkvault_scrub_bytes_checked_total")
                                .increment(data.len() as u64);
                            if ok {
                                Stats::add(&self.stats.chunks_verified, 1);
                                None
                            } else {
                                Stats::add(&self.stats.chunks_corrupt, 1);
                                Some("corrupt")
                            }
                        }
                        Err(BlobError::NotFound { .. }) => {
                            Stats::add(&self.stats.chunks_missing, 1);
                            Some("missing")
                        }
                        Err(e) => return Err(e.into()),
                    }
                };
                report.chunks_checked += 1;
                // Progress while it runs, not only at the end: a scrub of a large store takes
                // hours at a bounded rate.
                metrics::counter!("chunkvault_scrub_chunks_checked_total").increment(1);
                if let Some(problem) = problem {
                    if matches!(problem, "corrupt" | "missing") {
                        // No good copy anywhere: the next upload of this content rewrites it.
                        crate::download::chunk_lost(&*self.meta, &c.hash).await;
                    }
                    let files = self.meta.files_with_chunk(&c.hash, 100).await?;
                    tracing::error!(chunk = %c.hash, problem, files = ?files, "scrub found a damaged chunk");
                    metrics::counter!("chunkvault_scrub_findings_total", "problem" => problem)
                        .increment(1);
                    report.findings.push(ScrubFinding {
                        chunk: c.hash,
                        problem,
                        files,
                        copies,
                    });
                }
                pace(opts, clock, report.bytes_checked).await;
            }
        }
        self.scrub_inline(opts, clock, &mut report).await?;
        report.finished_at = OffsetDateTime::now_utc();
        if self.replicas.is_some() {
            Stats::set(
                &self.stats.chunks_below_policy,
                report.findings.len() as u64,
            );
        }
        metrics::gauge!("chunkvault_scrub_last_finished_timestamp_seconds")
            .set(report.finished_at.unix_timestamp() as f64);
        metrics::gauge!("chunkvault_scrub_last_findings").set(report.findings.len() as f64);
        *self.last_scrub.lock().unwrap_or_else(|p| p.into_inner()) = Some(report.clone());
        Ok(report)
    }

    /// Checks the content of every inline file against the file's SHA-256. A finding names the
    /// BLAKE3 of the content as found (`corrupt`), or of nothing (`missing`), and the file.
    async fn scrub_inline(
        &self,
        opts: &ScrubOptions,
        clock: Instant,
        report: &mut ScrubReport,
    ) -> Result<()> {
        let mut before = None;
        loop {
            let page = self.meta.list_files(None, before, 500).await?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            before = Some(last.id);
            for file in page.iter().filter(|f| f.inline) {
                let (problem, found) = match self.meta.inline_data(file.id).await? {
                    // Deleted since the page was read.
                    None if self.meta.file(file.id).await?.is_none() => continue,
                    None => (Some("missing"), Bytes::new()),
                    Some(data) => {
                        report.bytes_checked += data.len() as u64;
                        metrics::counter!("chunkvault_scrub_bytes_checked_total")
                            .increment(data.len() as u64);
                        let ok = data.len() as u64 == file.size && file.digest.matches(&data);
                        (if ok { None } else { Some("corrupt") }, data)
                    }
                };
                report.chunks_checked += 1;
                metrics::counter!("chunkvault_scrub_chunks_checked_total").increment(1);
                match problem {
                    None => Stats::add(&self.stats.chunks_verified, 1),
                    Some(problem) => {
                        let counter = if problem == "corrupt" {
                            &self.stats.chunks_corrupt
                        } else {
                            &self.stats.chunks_missing
                        };
                        Stats::add(counter, 1);
                        tracing::error!(file = %file.id, problem, "scrub found damaged inline content");
                        metrics::counter!("chunkvault_scrub_findings_total", "problem" => problem)
                            .increment(1);
                        report.findings.push(ScrubFinding {
                            chunk: ChunkId::of(&found),
                            problem,
                            files: vec![file.id],
                            copies: Vec::new(),
                        });
                    }
                }
                pace(opts, clock, report.bytes_checked).await;
            }
        }
    }

    /// The report of the last scrub this process ran.
    pub fn last_scrub(&self) -> Option<ScrubReport> {
        self.last_scrub
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
