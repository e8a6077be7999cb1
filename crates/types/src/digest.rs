//! The whole-file digest a committed file carries, and the hasher that computes it.
//!
//! Files are digested with BLAKE3: `b3sum` prints the same hex. BLAKE3 runs at several GB/s
//! per core where SHA-256 (with SHA-NI) is bound to 1.4-2 GB/s, and an upload already hashes
//! every chunk with BLAKE3 for its id, so a SHA-256 of the whole file was most of an upload's
//! CPU. Files committed before that change keep the SHA-256 they were stored with
//! (`sha256sum`); [`FileDigest`] names which one a file has, and every check uses the
//! algorithm the file's digest was made with.

use std::fmt;

use sha2::Digest as _;

/// A file's digest: the algorithm and its lowercase hex value.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum FileDigest {
    /// BLAKE3 (32 bytes): every file stored by this version.
    Blake3(String),
    /// SHA-256: files stored by earlier versions.
    Sha256(String),
}

impl FileDigest {
    /// The BLAKE3 digest of `data`.
    pub fn blake3_of(data: &[u8]) -> Self {
        Self::Blake3(blake3::hash(data).to_hex().to_string())
    }

    /// From a file's stored columns: BLAKE3 when it has one, else SHA-256; `None` when it has
    /// neither (an uncommitted upload).
    pub fn from_parts(blake3: Option<String>, sha256: Option<String>) -> Option<Self> {
        blake3.map(Self::Blake3).or(sha256.map(Self::Sha256))
    }

    /// `"blake3"` or `"sha256"`, as the API's field is named.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Self::Blake3(_) => "blake3",
            Self::Sha256(_) => "sha256",
        }
    }

    /// The digest in lowercase hex.
    pub fn hex(&self) -> &str {
        match self {
            Self::Blake3(h) | Self::Sha256(h) => h,
        }
    }

    pub fn blake3(&self) -> Option<&str> {
        match self {
            Self::Blake3(h) => Some(h),
            Self::Sha256(_) => None,
        }
    }

    pub fn sha256(&self) -> Option<&str> {
        match self {
            Self::Sha256(h) => Some(h),
            Self::Blake3(_) => None,
        }
    }

    /// True when `data` hashes, with this digest's algorithm, to this digest. Every read of a
    /// small file kept inline checks it: one hash, no hasher or string on the heap for BLAKE3.
    pub fn matches(&self, data: &[u8]) -> bool {
        match self {
            Self::Blake3(h) => blake3::hash(data).to_hex().eq_ignore_ascii_case(h),
            Self::Sha256(h) => hex::encode(sha2::Sha256::digest(data)).eq_ignore_ascii_case(h),
        }
    }
}

impl fmt::Display for FileDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.algorithm(), self.hex())
    }
}

impl fmt::Debug for FileDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileDigest({self})")
    }
}

/// Hashes a file given in pieces, in order.
#[derive(Clone)]
pub enum FileHasher {
    Blake3(Box<blake3::Hasher>),
    Sha256(sha2::Sha256),
}

impl Default for FileHasher {
    fn default() -> Self {
        Self::Blake3(Box::default())
    }
}

impl FileHasher {
    /// A BLAKE3 hasher: what files are digested with now.
    pub fn new() -> Self {
        Self::default()
    }

    /// A hasher of the algorithm `digest` was made with, to check a file against it.
    pub fn like(digest: &FileDigest) -> Self {
        match digest {
            FileDigest::Blake3(_) => Self::new(),
            FileDigest::Sha256(_) => Self::Sha256(sha2::Sha256::new()),
        }
    }

    pub fn update(&mut self, piece: &[u8]) {
        match self {
            Self::Blake3(h) => {
                h.update(piece);
            }
            Self::Sha256(h) => h.update(piece),
        }
    }

    pub fn finish(self) -> FileDigest {
        match self {
            Self::Blake3(h) => FileDigest::Blake3(h.finalize().to_hex().to_string()),
            Self::Sha256(h) => FileDigest::Sha256(hex::encode(h.finalize())),
        }
    }
}

impl fmt::Debug for FileHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileHasher")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blake3_is_what_b3sum_prints() {
        // b3sum of "abc\n" and of the empty input (published BLAKE3 test values).
        assert_eq!(
            FileDigest::blake3_of(b"").hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        let mut h = FileHasher::new();
        h.update(b"ab");
        h.update(b"c\n");
        assert_eq!(h.finish(), FileDigest::blake3_of(b"abc\n"));
        let d = FileDigest::blake3_of(b"abc");
        assert!(d.matches(b"abc"));
        assert!(!d.matches(b"abd"));
        assert!(FileDigest::Blake3(d.hex().to_ascii_uppercase()).matches(b"abc"));
        assert!(!FileDigest::Sha256(d.hex().into()).matches(b"abc"));
    }

    #[test]
    fn a_sha256_digest_is_checked_with_sha256() {
        // sha256sum of "abc".
        let d = FileDigest::Sha256(
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into(),
        );
        assert!(d.matches(b"abc"));
        assert!(!d.matches(b"abd"));
        assert!(!FileDigest::Blake3(d.hex().into()).matches(b"abc"));
        assert_eq!(FileHasher::like(&d).finish().algorithm(), "sha256");
    }

    #[test]
    fn blake3_wins_over_sha256_and_neither_is_none() {
        let b = Some("b".repeat(64));
        let s = Some("s".repeat(64));
        assert_eq!(
            FileDigest::from_parts(b.clone(), s.clone()),
            b.clone().map(FileDigest::Blake3)
        );
        assert_eq!(
            FileDigest::from_parts(None, s.clone()),
            s.map(FileDigest::Sha256)
        );
        assert_eq!(FileDigest::from_parts(None, None), None);
        assert_eq!(
            FileDigest::Blake3("ab".into()).to_string(),
            "blake3 ab",
            "names its algorithm"
        );
    }
}
