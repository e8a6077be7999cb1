//! Chunk-sized buffers, reused across uploads and reads.
//!
//! Why this exists: glibc's malloc raises its mmap threshold once a multi-MiB block is freed,
//! and from then on keeps freed chunk buffers in per-thread arenas. Chunks are allocated on one
//! thread and freed on another, so a 1 GiB download with 12 MiB of chunks in flight left the
//! process near 100 MiB of RSS. Pinning the threshold instead makes every chunk fresh page
//! faults (a third of the download rate here). A buffer from [`ChunkBuf`] goes back to a
//! bounded process-wide free list when the last [`Bytes`] that points into it drops, so a
//! steady stream allocates nothing and memory stays at what is in flight plus that reserve.
//!
//! Buffers under [`POOLED_MIN`] are ordinary allocations: small blocks never had the problem.
//!
//! A pooled buffer keeps the bytes it has held (its `Vec` length counts them; [`ChunkBuf`]
//! tracks its data length apart), so [`ChunkBuf::read_pieces`] reads a file into memory that is
//! already initialized: without `unsafe`, a read needs initialized memory, and zeroing a chunk
//! before every read would cost a pass over it.

use std::sync::Mutex;

use bytes::Bytes;

/// Buffers smaller than this are not pooled.
pub const POOLED_MIN: usize = 256 << 10;
/// Free buffers kept per size class.
const KEEP_PER_CLASS: usize = 8;
/// Size classes: powers of two from [`POOLED_MIN`] to 2^(CLASS_SHIFT_MIN + CLASSES - 1).
const CLASS_SHIFT_MIN: u32 = POOLED_MIN.trailing_zeros();
const CLASSES: usize = 12; // 256 KiB .. 512 MiB

static FREE: [Mutex<Vec<Vec<u8>>>; CLASSES] = [const { Mutex::new(Vec::new()) }; CLASSES];

/// The class a buffer of `capacity` bytes belongs to, if pooled.
fn class_of(capacity: usize) -> Option<usize> {
    if capacity < POOLED_MIN || !capacity.is_power_of_two() {
        return None;
    }
    let class = (capacity.trailing_zeros() - CLASS_SHIFT_MIN) as usize;
    (class < CLASSES).then_some(class)
}

fn take(capacity: usize) -> Vec<u8> {
    if capacity < POOLED_MIN {
        return Vec::with_capacity(capacity);
    }
    let rounded = capacity.next_power_of_two();
    if let Some(class) = class_of(rounded) {
        let reused = FREE[class].lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some(buf) = reused {
            return buf;
        }
    }
    // Capacity past what is written is address space only: untouched pages cost no memory.
    Vec::with_capacity(rounded)
}

/// Pooled buffers keep the bytes they ever held (their `Vec` length): memory initialized once
/// is read into again without being zeroed again.
fn give_back(buf: Vec<u8>) {
    if let Some(class) = class_of(buf.capacity()) {
        let mut free = FREE[class].lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < KEEP_PER_CLASS {
            free.push(buf);
        }
    }
}

/// How much [`ChunkBuf::read_pieces`] reads at a time: small enough that a piece is still in
/// the core's cache when it is handed on (hashed), large enough that a chunk is a few dozen
/// system calls.
pub const READ_PIECE: usize = 256 << 10;

/// A growable buffer for one chunk, taken from the pool; [`ChunkBuf::freeze`] turns it into
/// [`Bytes`] that return it to the pool when the last clone drops. Dropped unfrozen, it goes
/// back at once.
#[derive(Debug)]
pub struct ChunkBuf {
    /// The allocation. Its length counts the bytes ever initialized, which may run past the
    /// data: a pooled buffer comes back with what its last user wrote.
    buf: Option<Vec<u8>>,
    /// Bytes of data, from the start of `buf`.
    len: usize,
}

impl ChunkBuf {
    /// An empty buffer that holds at least `capacity` bytes without reallocating.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Some(take(capacity)),
            len: 0,
        }
    }

    fn vec(&mut self) -> &mut Vec<u8> {
        self.buf.as_mut().expect("present until frozen or dropped")
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Empties the buffer, keeping its capacity.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub fn extend_from_slice(&mut self, data: &[u8]) {
        let start = self.len;
        let end = start + data.len();
        let v = self.vec();
        if end <= v.len() {
            v[start..end].copy_from_slice(data);
        } else {
            v.truncate(start);
            v.extend_from_slice(data);
        }
        self.len = end;
    }

    /// Appends what `reader` yields, up to `limit` bytes, [`READ_PIECE`] bytes at a time, and
    /// hands each piece to `each` as soon as it is read, while it is still in the cache (a
    /// reader of a chunk hashes it there instead of reading it all back from memory). Returns
    /// how many bytes were read: fewer than `limit` only where the reader ended.
    pub fn read_pieces(
        &mut self,
        mut reader: impl std::io::Read,
        limit: usize,
        mut each: impl FnMut(&[u8]),
    ) -> std::io::Result<usize> {
        let start = self.len;
        let want = start.saturating_add(limit);
        let v = self.vec();
        if v.len() < want {
            // Zeroes only memory this buffer never held before.
            v.resize(want, 0);
        }
        let mut at = start;
        while at < want {
            let end = want.min(at + READ_PIECE);
            let n = match reader.read(&mut v[at..end]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            each(&v[at..at + n]);
            at += n;
        }
        self.len = at;
        Ok(at - start)
    }

    /// The contents as [`Bytes`]; the buffer returns to the pool when the last clone drops.
    pub fn freeze(mut self) -> Bytes {
        let mut buf = self.buf.take().expect("present until frozen or dropped");
        if class_of(buf.capacity()).is_some() {
            Bytes::from_owner(Returning { buf, len: self.len })
        } else {
            buf.truncate(self.len);
            Bytes::from(buf)
        }
    }
}

impl Drop for ChunkBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            give_back(buf);
        }
    }
}

/// The owner behind frozen pooled [`Bytes`]: the buffer and how much of it is the data.
struct Returning {
    buf: Vec<u8>,
    len: usize,
}

impl AsRef<[u8]> for Returning {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frozen_buffers_come_back_and_keep_their_contents_until_then() {
        // A class of its own (128 MiB) so parallel tests do not share it.
        let cap = 128 << 20;
        let mut a = ChunkBuf::with_capacity(cap);
        a.extend_from_slice(b"hello");
        let ptr = a.buf.as_ref().unwrap().as_ptr();
        let frozen = a.freeze();
        let clone = frozen.clone();
        drop(frozen);
        assert_eq!(&clone[..], b"hello", "alive while a clone is");
        drop(clone);
        let b = ChunkBuf::with_capacity(cap - 1);
        assert_eq!(
            b.buf.as_ref().unwrap().as_ptr(),
            ptr,
            "the same buffer, reused"
        );
        assert!(b.is_empty(), "handed out empty");
    }

    #[test]
    fn small_and_odd_buffers_are_plain_allocations() {
        assert_eq!(class_of(4096), None);
        assert_eq!(class_of(POOLED_MIN), Some(0));
        assert_eq!(class_of(3 << 20), None);
        assert_eq!(class_of(4 << 20), Some(4));
        let mut small = ChunkBuf::with_capacity(10);
        small.extend_from_slice(b"abc");
        assert_eq!(&small.freeze()[..], b"abc");
    }

    #[test]
    fn read_pieces_stops_at_the_limit_and_hands_on_every_byte_once() {
        let mut buf = ChunkBuf::with_capacity(1 << 20);
        let mut seen = Vec::new();
        let n = buf
            .read_pieces(&b"0123456789"[..], 4, |p| seen.extend_from_slice(p))
            .unwrap();
        assert_eq!(n, 4);
        assert_eq!(seen, b"0123");
        assert_eq!(&buf.freeze()[..], b"0123");
    }

    #[test]
    fn read_pieces_reads_in_pieces_and_stops_where_the_reader_ends() {
        let data: Vec<u8> = (0..READ_PIECE * 2 + 7).map(|i| (i % 251) as u8).collect();
        let mut buf = ChunkBuf::with_capacity(data.len() + 100);
        buf.extend_from_slice(b"head");
        let mut pieces = Vec::new();
        let n = buf
            .read_pieces(&data[..], data.len() + 100, |p| pieces.push(p.to_vec()))
            .unwrap();
        assert_eq!(n, data.len(), "short where the reader ended");
        assert!(pieces.iter().all(|p| p.len() <= READ_PIECE));
        assert_eq!(pieces.concat(), data);
        let frozen = buf.freeze();
        assert_eq!(&frozen[..4], b"head");
        assert_eq!(&frozen[4..], &data[..]);
    }

    #[test]
    fn a_reused_buffer_holds_only_what_its_new_user_wrote() {
        // A class of its own (64 MiB) so parallel tests do not share it.
        let cap = 64 << 20;
        let mut a = ChunkBuf::with_capacity(cap);
        a.read_pieces(&vec![7u8; 1 << 20][..], 1 << 20, |_| {})
            .unwrap();
        drop(a.freeze());
        let mut b = ChunkBuf::with_capacity(cap);
        assert!(b.is_empty());
        b.extend_from_slice(b"abc");
        b.read_pieces(&b"de"[..], 10, |_| {}).unwrap();
        assert_eq!(
            &b.freeze()[..],
            b"abcde",
            "nothing of the last user's bytes"
        );
    }
}
