//! Reading a file back: chunks fetched a bounded number ahead, each verified against its hash
//! before any of its bytes leave, in memory that does not grow with the file.

use bytes::Bytes;
use chunkvault_blob::{BlobError, BlobStore};
use chunkvault_meta::{FileRecord, MetaStore};
use chunkvault_types::{ByteRange, ChunkEntry, ChunkId, ChunkSlice, FileId, chunk_slices};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use time::OffsetDateTime;

use crate::{CoreError, Result, Stats, Vault};

/// Manifest entries fetched per metadata query while streaming.
pub(crate) const MANIFEST_PAGE: usize = 256;

impl Vault {
    /// Streams `range` of a committed file. The stream ends in an error, without yielding the
    /// damaged chunk's bytes, when a chunk is missing or does not match its hash: a front end
    /// must then cut the response off so the client sees a failed transfer.
    pub fn read(&self, file: &FileRecord, range: ByteRange) -> BoxStream<'static, Result<Bytes>> {
        self.read_from(file, Vec::new(), None, range)
    }

    /// [`Vault::read`] with what [`Vault::file_for_download`] read already in hand: manifest
    /// pages `first` covers are not read again, and an inline file's content `inline` (still
    /// verified here) is not read again either.
    pub fn read_from(
        &self,
        file: &FileRecord,
        first: Vec<ChunkEntry>,
        inline: Option<Bytes>,
        range: ByteRange,
    ) -> BoxStream<'static, Result<Bytes>> {
        if range.is_empty() {
            return stream::empty().boxed();
        }
        if file.inline {
            let (vault, file) = (self.clone(), file.clone());
            return stream::once(async move {
                let data = match inline {
                    Some(data) => vault.verified_inline(&file, data)?,
                    None => vault.inline_content(&file).await?,
                };
                let end = usize::try_from(range.end)
                    .ok()
                    .filter(|e| *e <= data.len())
                    .ok_or_else(|| {
                        CoreError::Internal(
                            format!("inline file {} is shorter than {range:?}", file.id).into(),
                        )
                    })?;
                let out = data.slice(range.start as usize..end);
                Stats::add(&vault.stats.bytes_out, out.len() as u64);
                Ok(out)
            })
            .boxed();
        }
        let meta = self.meta.clone();
        let lost_meta = self.meta.clone();
        let blobs = self.blobs.clone();
        let stats = self.stats.clone();
        let out_stats = self.stats.clone();
        let id = file.id;
        let slices = chunk_slices(range, file.chunk_size).collect_pages(MANIFEST_PAGE);
        // Page through the manifest lazily, then fetch and verify `read_ahead` chunks at once.
        let mut first = Some(first);
        stream::iter(slices)
            .then(move |page| {
                let meta = meta.clone();
                let known = first.take().unwrap_or_default();
                async move { pair_with_manifest(&*meta, id, page, known).await }
            })
            .map_ok(|pairs| stream::iter(pairs.into_iter().map(Ok::<_, CoreError>)))
            .try_flatten()
            .map_ok(move |(slice, entry)| {
                let (meta, blobs, stats) = (lost_meta.clone(), blobs.clone(), stats.clone());
                async move {
                    fetch_verified(&*meta, &*blobs, &stats, id, entry)
                        .await
                        .map(|data| (slice, data))
                }
            })
            .try_buffered(self.config.read_ahead.max(1))
            .map_ok(move |(slice, data): (ChunkSlice, Bytes)| {
                let out = data.slice(slice.skip..slice.skip + slice.take);
                Stats::add(&out_stats.bytes_out, out.len() as u64);
                out
            })
            .boxed()
    }

    /// The content of an inline file, checked against the file's digest before any of it is
    /// used: [`CoreError::Damaged`] (logged, counted) when it does not match, `NotFound` when
    /// the file was deleted since its record was read.
    pub(crate) async fn inline_content(&self, file: &FileRecord) -> Result<Bytes> {
        let data = self
            .meta
            .inline_data(file.id)
            .await?
            .ok_or(CoreError::NotFound)?;
        self.verified_inline(file, data)
    }

    /// `data`, an inline file's content as the metadata store gave it, once it matches the
    /// file's size and digest: [`CoreError::Damaged`] (logged, counted) when it does not.
    fn verified_inline(&self, file: &FileRecord, data: Bytes) -> Result<Bytes> {
        if data.len() as u64 != file.size || !file.digest.matches(&data) {
            Stats::add(&self.stats.chunks_corrupt, 1);
            tracing::error!(file = %file.id, "inline content does not match the file's digest; not served");
            return Err(CoreError::Damaged {
                file: file.id.to_string(),
                chunk: "inline".into(),
                problem: "corrupt",
            });
        }
        Stats::add(&self.stats.chunks_verified, 1);
        Ok(data)
    }
}

/// Groups an iterator's items into vectors of at most `n`, lazily.
trait CollectPages: Iterator + Sized {
    fn collect_pages(self, n: usize) -> Pages<Self> {
        Pages { inner: self, n }
    }
}

impl<I: Iterator> CollectPages for I {}

struct Pages<I> {
    inner: I,
    n: usize,
}

impl<I: Iterator> Iterator for Pages<I> {
    type Item = Vec<I::Item>;
    fn next(&mut self) -> Option<Self::Item> {
        let page: Vec<_> = self.inner.by_ref().take(self.n).collect();
        (!page.is_empty()).then_some(page)
    }
}

/// Pairs a page of slices with their manifest entries: from `known` (entries from index 0 on)
/// when it covers the page, else read.
async fn pair_with_manifest(
    meta: &dyn MetaStore,
    id: FileId,
    page: Vec<ChunkSlice>,
    known: Vec<ChunkEntry>,
) -> Result<Vec<(ChunkSlice, ChunkEntry)>> {
    let first = page[0].index;
    let covered = usize::try_from(first)
        .ok()
        .and_then(|f| known.get(f..f.checked_add(page.len())?));
    let entries = match covered {
        Some(entries) => entries.to_vec(),
        None => meta.manifest(id, first, page.len() as u32).await?,
    };
    if entries.len() != page.len() {
        // The file was deleted while being read.
        return Err(CoreError::NotFound);
    }
    page.into_iter()
        .zip(entries)
        .map(|(s, e)| {
            if s.index != e.index || (s.skip + s.take) as u64 > e.length {
                Err(CoreError::Internal(
                    format!(
                        "manifest of {id} does not match its chunk layout at {}",
                        s.index
                    )
                    .into(),
                ))
            } else {
                Ok((s, e))
            }
        })
        .collect()
}

/// Reads one chunk and checks it against its hash and length. A chunk found missing or
/// damaged is recorded as lost (see [`chunk_lost`]).
async fn fetch_verified(
    meta: &dyn MetaStore,
    blobs: &dyn BlobStore,
    stats: &Stats,
    file: FileId,
    entry: ChunkEntry,
) -> Result<Bytes> {
    // The store hashes as it reads where it can (a local directory, piece by piece while each
    // piece is in the cache), else hashes after reading.
    let (data, ok) = match blobs.get_checked(&entry.hash).await {
        Ok(read) => read,
        Err(BlobError::NotFound { .. }) => {
            Stats::add(&stats.chunks_missing, 1);
            tracing::error!(file = %file, chunk = %entry.hash, index = entry.index, "chunk missing from the blob store; download cut off");
            chunk_lost(meta, &entry.hash).await;
            return Err(CoreError::Damaged {
                file: file.to_string(),
                chunk: entry.hash.to_hex(),
                problem: "missing",
            });
        }
        Err(e) => return Err(e.into()),
    };
    if !ok || data.len() as u64 != entry.length {
        Stats::add(&stats.chunks_corrupt, 1);
        tracing::error!(file = %file, chunk = %entry.hash, index = entry.index, "chunk does not match its hash; download cut off before its bytes");
        chunk_lost(meta, &entry.hash).await;
        return Err(CoreError::Damaged {
            file: file.to_string(),
            chunk: entry.hash.to_hex(),
            problem: "corrupt",
        });
    }
    Stats::add(&stats.chunks_verified, 1);
    Ok(data)
}

/// Records that a read found `hash`'s blob missing or damaged ([`MetaStore::chunk_lost`]), so
/// the next upload of that content writes the blob again instead of deduplicating against it.
/// Best effort: the read has failed already, and a failure here is only logged.
pub(crate) async fn chunk_lost(meta: &dyn MetaStore, hash: &ChunkId) {
    if let Err(e) = meta.chunk_lost(hash, OffsetDateTime::now_utc()).await {
        tracing::warn!(chunk = %hash, error = %e, "could not record a lost chunk");
    }
}
