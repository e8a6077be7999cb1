//! Recently written and read small files, kept in memory in front of SQLite's point reads.
//!
//! A small file's download reads its row and its one manifest entry: in SQLite that is a read
//! transaction (two `fcntl` calls on the WAL index), a statement and its rows, a fifth of the
//! download's CPU time. Committed files never change; they are only deleted. So the record
//! and the whole manifest of a file with at most [`MAX_CHUNKS`] chunks are kept here when
//! the file is created whole and when a read finds it, for [`TTL`], at most [`CAPACITY`]
//! files, the oldest dropped first. The content of an inline file is kept beside its record,
//! up to [`DATA_BUDGET`] bytes in all: written content pushes the oldest content out (its
//! record stays); content read from the database is kept only where it fits ([`Admit`]).
//!
//! Deleting a file through this store forgets it, and a read that began before the deletion
//! cannot put it back (the generation check in [`RecentFiles::insert`]): after a deletion
//! returns, this process never serves the file again. A deletion by another process on the
//! same database file is seen within [`TTL`]. The chunks of a deleted file stay for the GC
//! grace period, and every chunk is verified on reading, so a stale entry can only serve the
//! deleted file's own bytes. PostgreSQL, where several nodes share the database, has no such
//! cache.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chunkvault_types::{ChunkEntry, FileId};

use crate::FileRecord;

/// Most files kept (a few hundred bytes each).
pub(crate) const CAPACITY: usize = 8192;
/// Files with more chunks are not kept: their downloads are not dominated by the lookup.
pub(crate) const MAX_CHUNKS: u64 = 8;
/// How long a file is kept: bounds how long a deletion by another process goes unseen.
pub(crate) const TTL: Duration = Duration::from_secs(60);
/// Most bytes of inline files' content kept (see [`RecentFiles::attach`]); the oldest
/// content goes first past it. Small: 16 MiB (4,096 files of 4 KiB) added 27 MiB to the
/// server's resident memory after a burst of small uploads, for a download that costs
/// 45 instead of 27 µs of CPU when its content is read from the database.
pub(crate) const DATA_BUDGET: usize = 4 << 20;
/// Larger content is not kept.
pub(crate) const MAX_DATA: usize = 64 << 10;

/// How content comes to be kept (see [`RecentFiles::attach`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Just written: kept, pushing the oldest content out past the budget. A file is most
    /// likely read soon after it is written.
    Written,
    /// Read from the database: kept only if it fits beside what is kept. Under a plain
    /// oldest-out rule a read of more small files than the budget holds (a listing fetched
    /// in order, a backup, a sync) pushed out each file just before it was read again, and
    /// kept nothing that was ever read from here; kept content now stays until it expires
    /// or newer writes push it out.
    Read,
}

#[derive(Debug, Default)]
pub(crate) struct RecentFiles {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    files: HashMap<FileId, Kept>,
    /// Ids in the order they were kept, with when: the oldest go first. May name ids already
    /// forgotten or kept again since (their time then differs).
    order: VecDeque<(FileId, Instant)>,
    /// Counts deletions: a read that began before one must not keep what it found.
    generation: u64,
    /// Bytes of content kept, at most [`DATA_BUDGET`] between calls.
    data_bytes: usize,
    /// Files whose content was kept, in that order, as `order`.
    data_order: VecDeque<(FileId, Instant)>,
}

impl Inner {
    fn remove(&mut self, id: &FileId) {
        if let Some(kept) = self.files.remove(id) {
            self.data_bytes -= kept.data.as_ref().map_or(0, Bytes::len);
        }
    }

    /// Drops the content of files kept [`TTL`] or longer at `now`, oldest first: it is no
    /// longer served, and would hold room that a read could use ([`Admit::Read`]).
    fn drop_expired_data(&mut self, now: Instant) {
        while let Some(&(old, when)) = self.data_order.front() {
            if now.saturating_duration_since(when) < TTL {
                break;
            }
            self.data_order.pop_front();
            if let Some(kept) = self.files.get_mut(&old).filter(|k| k.at == when)
                && let Some(data) = kept.data.take()
            {
                self.data_bytes -= data.len();
            }
        }
    }

    /// Drops the oldest files until the limits hold, and the content of the oldest files
    /// that have some until it fits its budget (their records stay).
    fn evict(&mut self) {
        while self.files.len() > CAPACITY || self.order.len() > 2 * CAPACITY {
            let Some((old, when)) = self.order.pop_front() else {
                break;
            };
            if self.files.get(&old).is_some_and(|k| k.at == when) {
                self.remove(&old);
            }
        }
        while self.data_bytes > DATA_BUDGET || self.data_order.len() > 2 * CAPACITY {
            let Some((old, when)) = self.data_order.pop_front() else {
                break;
            };
            if let Some(kept) = self.files.get_mut(&old).filter(|k| k.at == when)
                && let Some(data) = kept.data.take()
            {
                self.data_bytes -= data.len();
            }
        }
    }
}

#[derive(Debug)]
struct Kept {
    at: Instant,
    file: FileRecord,
    entries: Vec<ChunkEntry>,
    /// An inline file's content, once written or read.
    data: Option<Bytes>,
}

impl RecentFiles {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every change below leaves the maps consistent at each step.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Taken before a read or a write whose result may be kept: see [`RecentFiles::insert`].
    pub(crate) fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// The file and its whole manifest, if kept and not older than [`TTL`].
    pub(crate) fn get(&self, id: FileId) -> Option<(FileRecord, Vec<ChunkEntry>)> {
        let mut inner = self.lock();
        let kept = inner.files.get(&id)?;
        if kept.at.elapsed() < TTL {
            return Some((kept.file.clone(), kept.entries.clone()));
        }
        inner.remove(&id);
        None
    }

    /// An inline file's content, if kept and not older than [`TTL`].
    pub(crate) fn data(&self, id: FileId) -> Option<Bytes> {
        let inner = self.lock();
        let kept = inner.files.get(&id)?;
        (kept.at.elapsed() < TTL).then(|| kept.data.clone())?
    }

    /// Keeps an inline file's content beside its record, if that is kept, under the same
    /// generation rule as [`RecentFiles::insert`] and as `admit` says. `data` must own its
    /// memory: a slice of a larger buffer (a request body's) would keep all of that buffer
    /// here.
    pub(crate) fn attach(&self, generation: u64, id: FileId, data: &Bytes, admit: Admit) {
        if data.len() > MAX_DATA {
            return;
        }
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if admit == Admit::Read {
            inner.drop_expired_data(Instant::now());
        }
        let room = DATA_BUDGET.saturating_sub(inner.data_bytes);
        let Some(kept) = inner.files.get_mut(&id).filter(|k| k.file.inline) else {
            return;
        };
        let held = kept.data.as_ref().map_or(0, Bytes::len);
        if admit == Admit::Read && data.len() > room + held {
            return;
        }
        let before = kept.data.replace(data.clone()).map_or(0, |d| d.len());
        let at = kept.at;
        inner.data_bytes = inner.data_bytes - before + data.len();
        if before == 0 {
            inner.data_order.push_back((id, at));
        }
        inner.evict();
    }

    /// Keeps a committed file found or written under `generation`, if no deletion came since,
    /// it is small and `entries` is its whole manifest.
    pub(crate) fn insert(&self, generation: u64, file: &FileRecord, entries: &[ChunkEntry]) {
        if file.chunk_count > MAX_CHUNKS || entries.len() as u64 != file.manifest_len() {
            return;
        }
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        let at = Instant::now();
        inner.remove(&file.id);
        inner.files.insert(
            file.id,
            Kept {
                at,
                file: file.clone(),
                entries: entries.to_vec(),
                data: None,
            },
        );
        inner.order.push_back((file.id, at));
        inner.evict();
    }

    /// Forgets every file, and stops reads that began before from keeping theirs.
    pub(crate) fn clear(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.files.clear();
        inner.order.clear();
        inner.data_order.clear();
        inner.data_bytes = 0;
    }

    /// Forgets a file that is being or has been deleted, and stops reads that began before
    /// from keeping it.
    pub(crate) fn forget(&self, id: FileId) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.remove(&id);
    }
}

/// Forgets a file when dropped: held across a deletion, it runs on every way out, after the
/// transaction has ended.
pub(crate) struct ForgetOnDrop<'a>(pub(crate) &'a RecentFiles, pub(crate) FileId);

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.forget(self.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chunkvault_types::ChunkId;
    use time::OffsetDateTime;

    fn file(chunks: u64) -> (FileRecord, Vec<ChunkEntry>) {
        let record = FileRecord {
            id: FileId::new(),
            name: "a".into(),
            content_type: "text/plain".into(),
            size: chunks * 10,
            chunk_size: 10,
            chunk_count: chunks,
            digest: chunkvault_types::FileDigest::Blake3("0".repeat(64)),
            created_at: OffsetDateTime::UNIX_EPOCH,
            committed_at: OffsetDateTime::UNIX_EPOCH,
            owner: None,
            inline: false,
        };
        let entries = (0..chunks)
            .map(|i| ChunkEntry {
                index: i,
                offset: i * 10,
                length: 10,
                hash: ChunkId::of(&i.to_le_bytes()),
            })
            .collect();
        (record, entries)
    }

    #[test]
    fn keeps_small_whole_files_only() {
        let recent = RecentFiles::default();
        let (f, e) = file(1);
        recent.insert(recent.generation(), &f, &e);
        assert_eq!(recent.get(f.id).map(|(r, e)| (r.id, e)), Some((f.id, e)));

        let (big, entries) = file(MAX_CHUNKS + 1);
        recent.insert(recent.generation(), &big, &entries);
        assert!(recent.get(big.id).is_none());

        let (partial, entries) = file(3);
        recent.insert(recent.generation(), &partial, &entries[..2]);
        assert!(recent.get(partial.id).is_none());
    }

    #[test]
    fn a_read_from_before_a_deletion_is_not_kept() {
        let recent = RecentFiles::default();
        let (f, e) = file(1);
        let before = recent.generation();
        recent.forget(f.id);
        recent.insert(before, &f, &e);
        assert!(recent.get(f.id).is_none());
        recent.insert(recent.generation(), &f, &e);
        assert!(recent.get(f.id).is_some());
        drop(ForgetOnDrop(&recent, f.id));
        assert!(recent.get(f.id).is_none());
    }

    #[test]
    fn the_oldest_go_first_beyond_capacity() {
        let recent = RecentFiles::default();
        let files: Vec<_> = (0..CAPACITY + 10).map(|_| file(1)).collect();
        for (f, e) in &files {
            recent.insert(recent.generation(), f, e);
        }
        assert!(recent.get(files[9].0.id).is_none());
        assert!(recent.get(files[10].0.id).is_some());
        assert!(recent.get(files[CAPACITY + 9].0.id).is_some());
        // Forgotten and kept again many times: the order queue stays bounded.
        let (f, e) = &files[CAPACITY + 9];
        for _ in 0..3 * CAPACITY {
            recent.forget(f.id);
            recent.insert(recent.generation(), f, e);
        }
        let inner = recent.lock();
        assert!(inner.order.len() <= 2 * CAPACITY);
        assert!(inner.files.len() <= CAPACITY);
    }

    fn inline_file() -> FileRecord {
        let (mut f, _) = file(1);
        f.inline = true;
        f
    }

    fn counted(recent: &RecentFiles) -> usize {
        let inner = recent.lock();
        let held = inner
            .files
            .values()
            .filter_map(|k| k.data.as_ref())
            .map(Bytes::len)
            .sum::<usize>();
        assert_eq!(inner.data_bytes, held, "the count matches what is held");
        held
    }

    #[test]
    fn inline_content_stays_within_its_budget_and_records_stay() {
        let recent = RecentFiles::default();
        let n = DATA_BUDGET / 4096 + 10;
        let files: Vec<FileRecord> = (0..n).map(|_| inline_file()).collect();
        for f in &files {
            let g = recent.generation();
            recent.insert(g, f, &[]);
            recent.attach(g, f.id, &Bytes::from(vec![7u8; 4096]), Admit::Written);
        }
        assert!(counted(&recent) <= DATA_BUDGET);
        assert!(
            recent.data(files[0].id).is_none(),
            "the oldest content went"
        );
        assert!(recent.get(files[0].id).is_some(), "its record stayed");
        assert_eq!(recent.data(files[n - 1].id).unwrap().len(), 4096);
        // Larger content than a kept file may hold is not kept.
        let big = inline_file();
        let g = recent.generation();
        recent.insert(g, &big, &[]);
        recent.attach(
            g,
            big.id,
            &Bytes::from(vec![1u8; MAX_DATA + 1]),
            Admit::Written,
        );
        assert!(recent.data(big.id).is_none());
    }

    #[test]
    fn content_read_is_kept_only_where_it_fits_and_never_pushes_kept_content_out() {
        let recent = RecentFiles::default();
        let n = DATA_BUDGET / 4096;
        let keep = |admit| {
            let f = inline_file();
            let g = recent.generation();
            recent.insert(g, &f, &[]);
            recent.attach(g, f.id, &Bytes::from(vec![7u8; 4096]), admit);
            f
        };
        // Read into free room: kept, up to the budget.
        let read: Vec<FileRecord> = (0..n).map(|_| keep(Admit::Read)).collect();
        assert_eq!(counted(&recent), n * 4096);
        assert!(read.iter().all(|f| recent.data(f.id).is_some()));
        // Past the budget, a read keeps nothing and takes nothing away...
        let late = keep(Admit::Read);
        assert!(recent.data(late.id).is_none());
        assert!(recent.data(read[0].id).is_some());
        assert_eq!(counted(&recent), n * 4096);
        // ...and the same content again takes no more room.
        let g = recent.generation();
        recent.attach(g, read[0].id, &Bytes::from(vec![8u8; 4096]), Admit::Read);
        assert_eq!(recent.data(read[0].id).unwrap()[0], 8);
        assert_eq!(counted(&recent), n * 4096);
        // A write pushes the oldest out.
        let written = keep(Admit::Written);
        assert_eq!(recent.data(written.id).unwrap().len(), 4096);
        assert!(recent.data(read[0].id).is_none());
        assert!(counted(&recent) <= DATA_BUDGET);
        // Content past its TTL holds no room: once it has expired, reads are kept again.
        recent
            .lock()
            .drop_expired_data(Instant::now() + TTL + Duration::from_secs(1));
        assert_eq!(counted(&recent), 0);
        let after = keep(Admit::Read);
        assert_eq!(recent.data(after.id).unwrap().len(), 4096);
    }

    #[test]
    fn content_is_kept_only_for_a_kept_inline_file_and_only_until_a_deletion() {
        let recent = RecentFiles::default();
        let f = inline_file();
        let g = recent.generation();
        recent.insert(g, &f, &[]);
        // A deletion since the read began: what it found is not kept.
        recent.forget(FileId::new());
        recent.attach(g, f.id, &Bytes::from_static(b"x"), Admit::Written);
        assert!(recent.data(f.id).is_none());
        // A file stored in chunks, or one not kept, gets no content.
        let (c, e) = file(1);
        let g = recent.generation();
        recent.insert(g, &c, &e);
        recent.attach(g, c.id, &Bytes::from_static(b"x"), Admit::Written);
        recent.attach(g, FileId::new(), &Bytes::from_static(b"x"), Admit::Written);
        assert!(recent.data(c.id).is_none());
        assert_eq!(counted(&recent), 0);
        // Kept, then gone with its file, and with everything on clear.
        recent.attach(g, f.id, &Bytes::from_static(b"abc"), Admit::Written);
        assert_eq!(recent.data(f.id).unwrap(), "abc");
        assert_eq!(counted(&recent), 3);
        recent.forget(f.id);
        assert!(recent.data(f.id).is_none());
        assert_eq!(counted(&recent), 0);
        let g = recent.generation();
        recent.insert(g, &f, &[]);
        recent.attach(g, f.id, &Bytes::from_static(b"abc"), Admit::Written);
        recent.clear();
        assert!(recent.get(f.id).is_none() && recent.data(f.id).is_none());
        assert_eq!(counted(&recent), 0);
        // Kept again under the generation before the clear: refused.
        recent.insert(g, &f, &[]);
        assert!(recent.get(f.id).is_none());
    }
}
