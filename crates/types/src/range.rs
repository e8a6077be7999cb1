//! Byte ranges: parsing the HTTP `Range` header and mapping a range of a file onto its chunks.

/// A non-empty, inclusive-exclusive byte range `[start, end)` within a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The `Content-Range` header value for this range of a file of `size` bytes.
    pub fn content_range(&self, size: u64) -> String {
        format!("bytes {}-{}/{}", self.start, self.end - 1, size)
    }
}

/// What a `Range` request header asks for, once resolved against the file's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: serve the whole file with 200. This covers a missing header, a header
    /// in a unit other than bytes, a syntactically invalid header and a multi-range request
    /// (RFC 9110 lets a server ignore Range; we do not serve multipart/byteranges).
    Full,
    /// One satisfiable range: serve it with 206.
    Partial(ByteRange),
    /// A well-formed range that selects no byte of the file: answer 416.
    Unsatisfiable,
}

/// Resolves a `Range` header value (RFC 9110 section 14.1.2) against a file of `size` bytes.
pub fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(header) = header else {
        return RangeRequest::Full;
    };
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if first.is_empty() {
        // Suffix range: the last N bytes.
        if !digits(last) {
            return RangeRequest::Full;
        }
        let Ok(n) = last.parse::<u64>() else {
            // More digits than u64 holds: asks for more than the whole file.
            return if size == 0 {
                RangeRequest::Unsatisfiable
            } else {
                full_as_partial(size)
            };
        };
        if n == 0 || size == 0 {
            return RangeRequest::Unsatisfiable;
        }
        return RangeRequest::Partial(ByteRange {
            start: size.saturating_sub(n),
            end: size,
        });
    }
    if !digits(first) || !(last.is_empty() || digits(last)) {
        return RangeRequest::Full;
    }
    let Ok(start) = first.parse::<u64>() else {
        return RangeRequest::Unsatisfiable;
    };
    if start >= size {
        return RangeRequest::Unsatisfiable;
    }
    let end = if last.is_empty() {
        size
    } else {
        match last.parse::<u64>() {
            Ok(l) if l < start => return RangeRequest::Full,
            Ok(l) => l.saturating_add(1).min(size),
            Err(_) => size,
        }
    };
    RangeRequest::Partial(ByteRange { start, end })
}

fn full_as_partial(size: u64) -> RangeRequest {
    RangeRequest::Partial(ByteRange {
        start: 0,
        end: size,
    })
}

/// The part of one chunk that a byte range covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSlice {
    pub index: u64,
    /// Offset of the first wanted byte inside the chunk.
    pub skip: usize,
    /// How many bytes of the chunk are wanted.
    pub take: usize,
}

/// The chunks a range of a file covers, first to last, for files cut in fixed-size chunks (every
/// chunk is `chunk_size` bytes but the last). Lazily computed, so a huge range costs nothing.
pub fn chunk_slices(range: ByteRange, chunk_size: u64) -> impl Iterator<Item = ChunkSlice> {
    assert!(chunk_size > 0, "chunk size must be positive");
    let first = range.start / chunk_size;
    let last = if range.is_empty() {
        first
    } else {
        (range.end - 1) / chunk_size + 1
    };
    (first..last).map(move |index| {
        let chunk_start = index * chunk_size;
        let from = range.start.max(chunk_start);
        let to = range.end.min(chunk_start + chunk_size);
        ChunkSlice {
            index,
            skip: (from - chunk_start) as usize,
            take: (to - from) as usize,
        }
    })
}

/// Number of chunks a file of `size` bytes is cut into.
pub fn chunk_count(size: u64, chunk_size: u64) -> u64 {
    size.div_ceil(chunk_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(start: u64, end: u64) -> RangeRequest {
        RangeRequest::Partial(ByteRange { start, end })
    }

    #[test]
    fn parses_the_forms_of_rfc_9110() {
        assert_eq!(parse_range(None, 100), RangeRequest::Full);
        assert_eq!(parse_range(Some("bytes=0-0"), 100), p(0, 1));
        assert_eq!(parse_range(Some("bytes=10-19"), 100), p(10, 20));
        assert_eq!(parse_range(Some("bytes=90-"), 100), p(90, 100));
        assert_eq!(parse_range(Some("bytes=90-1000"), 100), p(90, 100));
        assert_eq!(parse_range(Some("bytes=-10"), 100), p(90, 100));
        assert_eq!(parse_range(Some("bytes=-1000"), 100), p(0, 100));
        assert_eq!(parse_range(Some(" bytes= 5 - 6 "), 100), p(5, 7));
        assert_eq!(
            parse_range(Some("bytes=0-99999999999999999999999"), 100),
            p(0, 100)
        );
    }

    #[test]
    fn unsatisfiable_ranges() {
        assert_eq!(
            parse_range(Some("bytes=100-"), 100),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=100-200"), 100),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=-0"), 100),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=0-"), 0),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=-5"), 0),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=99999999999999999999999-"), 100),
            RangeRequest::Unsatisfiable
        );
    }

    #[test]
    fn ignores_what_it_does_not_serve() {
        for h in [
            "items=0-1",
            "bytes=0-1,5-6",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=",
            "bytes=-",
            "bytes=1",
            "bytes=+1-2",
        ] {
            assert_eq!(parse_range(Some(h), 100), RangeRequest::Full, "{h}");
        }
    }

    #[test]
    fn content_range_is_inclusive() {
        assert_eq!(
            ByteRange { start: 0, end: 1 }.content_range(10),
            "bytes 0-0/10"
        );
    }

    #[test]
    fn slices_cross_chunk_boundaries() {
        let s: Vec<_> = chunk_slices(ByteRange { start: 3, end: 12 }, 4).collect();
        assert_eq!(
            s,
            vec![
                ChunkSlice {
                    index: 0,
                    skip: 3,
                    take: 1
                },
                ChunkSlice {
                    index: 1,
                    skip: 0,
                    take: 4
                },
                ChunkSlice {
                    index: 2,
                    skip: 0,
                    take: 4
                },
            ]
        );
        let s: Vec<_> = chunk_slices(ByteRange { start: 4, end: 5 }, 4).collect();
        assert_eq!(
            s,
            vec![ChunkSlice {
                index: 1,
                skip: 0,
                take: 1
            }]
        );
        assert_eq!(chunk_slices(ByteRange { start: 0, end: 0 }, 4).count(), 0);
    }

    #[test]
    fn slices_cover_every_byte_exactly_once() {
        for chunk in [1u64, 3, 7, 64] {
            for size in 0..40u64 {
                for start in 0..size {
                    for end in start + 1..=size {
                        let r = ByteRange { start, end };
                        let total: usize = chunk_slices(r, chunk).map(|s| s.take).sum();
                        assert_eq!(total as u64, r.len());
                        let mut pos = start;
                        for s in chunk_slices(r, chunk) {
                            assert_eq!(s.index * chunk + s.skip as u64, pos);
                            assert!(s.skip + s.take <= chunk as usize);
                            pos += s.take as u64;
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn counts_chunks() {
        assert_eq!(chunk_count(0, 4), 0);
        assert_eq!(chunk_count(1, 4), 1);
        assert_eq!(chunk_count(4, 4), 1);
        assert_eq!(chunk_count(5, 4), 2);
    }
}
