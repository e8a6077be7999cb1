use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The address of a chunk: the BLAKE3 hash of its content.
///
/// BLAKE3 was chosen over SHA-256 for chunk addresses because it hashes ~2.5x faster on this
/// hardware (see ARCHITECTURE.md, "Hashing"), and chunk hashing sits on both the upload and the
/// download path. The whole-file digest users check with `b3sum` is BLAKE3 too
/// ([`FileDigest`](crate::FileDigest)).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId([u8; 32]);

impl ChunkId {
    pub const LEN: usize = 32;

    /// Hashes `data` and returns its address.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// True when `data` hashes to this id.
    pub fn matches(&self, data: &[u8]) -> bool {
        // blake3::Hash compares in constant time; not needed for secrecy here, but free.
        blake3::Hash::from_bytes(self.0) == blake3::hash(data)
    }
}

/// Hashes a chunk given in pieces: [`ChunkHasher::finish`] is the [`ChunkId`] that
/// [`ChunkId::of`] gives for the pieces joined, so a reader can hash what it reads as it reads.
#[derive(Default, Clone)]
pub struct ChunkHasher(blake3::Hasher);

impl ChunkHasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, piece: &[u8]) {
        self.0.update(piece);
    }

    pub fn finish(&self) -> ChunkId {
        ChunkId(*self.0.finalize().as_bytes())
    }
}

impl fmt::Debug for ChunkHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChunkHasher")
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", self.to_hex())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("a chunk id is 64 lowercase hexadecimal characters")]
    BadChunkId,
    #[error("a file id is a UUID (for example 0192f4c8-6a1e-7cc2-9a55-3c1f0e1d2b3a)")]
    BadFileId,
}

impl FromStr for ChunkId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if s.len() != 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(IdError::BadChunkId);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| IdError::BadChunkId)?;
        Ok(Self(out))
    }
}

impl Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The id of a file, and of the upload that creates it (they are the same id: an upload is a
/// file that is not committed yet). UUIDv7, so ids sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FileId(uuid::Uuid);

impl FileId {
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    pub fn from_uuid(u: uuid::Uuid) -> Self {
        Self(u)
    }

    pub fn as_uuid(&self) -> &uuid::Uuid {
        &self.0
    }
}

impl Default for FileId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.as_hyphenated().fmt(f)
    }
}

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileId({})", self.0.as_hyphenated())
    }
}

impl FromStr for FileId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        // Only the hyphenated form: one spelling per id keeps ETags, logs and caches consistent.
        if s.len() != 36 {
            return Err(IdError::BadFileId);
        }
        uuid::Uuid::try_parse(s)
            .map(Self)
            .map_err(|_| IdError::BadFileId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_id_round_trips_through_hex() {
        let id = ChunkId::of(b"hello");
        assert_eq!(id.to_hex(), blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(id.to_hex().parse::<ChunkId>().unwrap(), id);
        assert!(id.matches(b"hello"));
        assert!(!id.matches(b"hellp"));
    }

    #[test]
    fn hashing_in_pieces_gives_the_whole_chunk_id() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        for piece in [1, 1000, 1024, 65_536, 262_144, data.len()] {
            let mut h = ChunkHasher::new();
            data.chunks(piece).for_each(|p| h.update(p));
            assert_eq!(h.finish(), ChunkId::of(&data), "pieces of {piece}");
        }
        assert_eq!(ChunkHasher::new().finish(), ChunkId::of(b""));
    }

    #[test]
    fn chunk_id_rejects_bad_hex() {
        for bad in [
            "",
            "zz",
            &"A".repeat(64),
            &"0".repeat(63),
            &"0".repeat(65),
            &"g".repeat(64),
        ] {
            assert_eq!(bad.parse::<ChunkId>(), Err(IdError::BadChunkId), "{bad:?}");
        }
    }

    #[test]
    fn file_id_parses_only_hyphenated_uuids() {
        let id = FileId::new();
        assert_eq!(id.to_string().parse::<FileId>().unwrap(), id);
        let simple = id.as_uuid().simple().to_string();
        assert!(simple.parse::<FileId>().is_err());
        for bad in [
            "",
            "not-a-uuid",
            "../../etc/passwd",
            "0192f4c8-6a1e-7cc2-9a55-3c1f0e1d2b3z",
        ] {
            assert!(bad.parse::<FileId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn file_ids_sort_by_creation() {
        let a = FileId::new();
        let b = FileId::new();
        assert!(a < b);
    }
}
