//! Counters the pipeline keeps; the metrics endpoint reads them.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Uploads this process opened; each ends committed, aborted, or (after a crash or a lost
    /// abort) expired by GC, so `started - committed - aborted` are open here now.
    pub uploads_started: AtomicU64,
    pub uploads_committed: AtomicU64,
    pub uploads_aborted: AtomicU64,
    /// Abandoned uploads GC expired (from any process: the metadata store is shared).
    pub uploads_expired: AtomicU64,
    pub chunks_written: AtomicU64,
    pub chunks_deduplicated: AtomicU64,
    pub chunks_verified: AtomicU64,
    pub chunks_corrupt: AtomicU64,
    pub chunks_missing: AtomicU64,
    /// A gauge, not a counter: with several locations, the chunks the last full repair pass
    /// left below their placement policy, or the last scrub found below it (whichever ran
    /// last).
    pub chunks_below_policy: AtomicU64,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set(gauge: &AtomicU64, n: u64) {
        gauge.store(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
