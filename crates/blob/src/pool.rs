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

fn give_back(mut buf: Vec<u8>) {
    if let Some(class) = class_of(buf.capacity()) {
        buf.clear();
        let mut free = FREE[class].lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < KEEP_PER_CLASS {
            free.push(buf);
        }
    }
}

/// A growable buffer for one chunk, taken from the pool; [`ChunkBuf::freeze`] turns it into
/// [`Bytes`] that return it to the pool when the last clone drops. Dropped unfrozen, it goes
/// back at once.
#[derive(Debug)]
pub struct ChunkBuf {
    buf: Option<Vec<u8>>,
}

impl ChunkBuf {
    /// An empty buffer that holds at least `capacity` bytes without reallocating.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Some(take(capacity)),
        }
    }

    fn vec(&mut self) -> &mut Vec<u8> {
        self.buf.as_mut().expect("present until frozen or dropped")
    }

    pub fn len(&self) -> usize {
        self.buf.as_ref().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Empties the buffer, keeping its capacity.
    pub fn clear(&mut self) {
        self.vec().clear();
    }

    pub fn extend_from_slice(&mut self, data: &[u8]) {
        self.vec().extend_from_slice(data);
    }

    /// Appends everything `reader` yields, up to `limit` bytes; returns how many were read.
    /// Reads into the spare capacity without zeroing it first.
    pub fn read_from(&mut self, reader: impl std::io::Read, limit: u64) -> std::io::Result<usize> {
        use std::io::Read as _;
        reader.take(limit).read_to_end(self.vec())
    }

    /// The contents as [`Bytes`]; the buffer returns to the pool when the last clone drops.
    pub fn freeze(mut self) -> Bytes {
        let buf = self.buf.take().expect("present until frozen or dropped");
        if class_of(buf.capacity()).is_some() {
            Bytes::from_owner(Returning(buf))
        } else {
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

/// The owner behind frozen pooled [`Bytes`].
struct Returning(Vec<u8>);

impl AsRef<[u8]> for Returning {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.0));
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
    fn read_from_stops_at_the_limit() {
        let mut buf = ChunkBuf::with_capacity(1 << 20);
        let n = buf.read_from(&b"0123456789"[..], 4).unwrap();
        assert_eq!(n, 4);
        assert_eq!(&buf.freeze()[..], b"0123");
    }
}
