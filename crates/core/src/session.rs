//! Upload sessions: a file sent as separately addressed chunks, in any order, in parallel,
//! resumable, with dedup before transfer. The HTTP session API and tus both sit on this.
//!
//! A session is an open upload in the metadata store. Every chunk PUT is hashed by the server
//! and checked against the layout (every chunk but the last is exactly `chunk_size`). The
//! metadata records a reference *before* the blob is written (the GC safety rule), so
//! "recorded" is not "stored": [`Vault::session`] checks each recorded chunk's blob, and only
//! what is both recorded and written counts. At commit the server reads the chunks back in
//! order, verifies each against its BLAKE3 hash and length, and computes the whole-file
//! digest (BLAKE3) itself; a client-declared digest is only compared. Memory per request is
//! one chunk (a PUT) or `read_ahead` chunks (a commit).

use std::fmt::Display;

use bytes::{Bytes, BytesMut};
use chunkvault_blob::{BlobError, BlobStore, ChunkBuf};
use chunkvault_meta::{
    ChunkState, CommitFile, FileRecord, MetaStore, NewUpload, PendingChunk, UploadRecord,
};
use chunkvault_types::{
    ChunkEntry, ChunkId, ChunkOffer, FileDigest, FileHasher, FileId, SessionCommit,
};
use futures::{Stream, StreamExt, TryStreamExt, stream};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::task::JoinSet;

use crate::upload::join_put;
use crate::{CoreError, Principal, Result, Stats, UploadMeta, Vault};

/// Manifest entries read per metadata query.
const PAGE: u32 = 1000;
/// Blob existence checks in flight while computing a session's status.
const HEADS_IN_FLIGHT: usize = 16;
/// Offers accepted in one batch call.
pub const MAX_OFFERS: usize = 10_000;

/// An upload session and what it has stored.
#[derive(Debug, Clone)]
pub struct Session {
    pub upload: UploadRecord,
    /// Chunks recorded *and* whose blob exists, in index order.
    pub stored: Vec<ChunkEntry>,
}

impl Session {
    pub fn stored_bytes(&self) -> u64 {
        self.stored.iter().map(|c| c.length).sum()
    }

    /// Bytes stored from the start without a gap: the resume offset of a sequential upload.
    pub fn contiguous_bytes(&self) -> u64 {
        let mut end = 0;
        for (i, c) in self.stored.iter().enumerate() {
            if c.index != i as u64 || c.offset != end {
                break;
            }
            end += c.length;
        }
        end
    }
}

/// One chunk stored by [`Vault::put_session_chunk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutChunk {
    pub index: u64,
    pub length: u64,
    pub hash: ChunkId,
    /// False when the content was already stored (dedup).
    pub written: bool,
}

fn invalid(code: &'static str, message: impl Into<String>) -> CoreError {
    CoreError::Invalid {
        code,
        message: message.into(),
    }
}

/// The digests a client declared at commit, each 64 hex digits (400 `invalid_blake3` or
/// `invalid_sha256` otherwise), in lower case.
fn declared_digests(declared: &SessionCommit) -> Result<Vec<FileDigest>> {
    let hex64 = |hex: &str, code: &'static str, algorithm: &str| {
        if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(hex.to_ascii_lowercase())
        } else {
            Err(invalid(code, format!("{algorithm} must be 64 hex digits")))
        }
    };
    let mut out = Vec::new();
    if let Some(h) = &declared.blake3 {
        out.push(FileDigest::Blake3(hex64(h, "invalid_blake3", "blake3")?));
    }
    if let Some(h) = &declared.sha256 {
        out.push(FileDigest::Sha256(hex64(h, "invalid_sha256", "sha256")?));
    }
    Ok(out)
}

/// The length chunk `index` must have in an upload of `total` bytes (when known).
pub(crate) fn expected_length(
    chunk_size: u64,
    total: Option<u64>,
    index: u64,
) -> Result<Option<u64>> {
    let offset = index.checked_mul(chunk_size).ok_or_else(|| {
        invalid(
            "invalid_index",
            format!("chunk index {index} is out of range"),
        )
    })?;
    match total {
        None => Ok(None),
        Some(total) if offset < total => Ok(Some(chunk_size.min(total - offset))),
        Some(total) => Err(invalid(
            "invalid_index",
            format!(
                "chunk index {index} is past the end of a {total}-byte file in {chunk_size}-byte chunks"
            ),
        )),
    }
}

fn check_length(chunk_size: u64, total: Option<u64>, index: u64, length: u64) -> Result<()> {
    let ok = match expected_length(chunk_size, total, index)? {
        Some(expected) => length == expected,
        None => length > 0 && length <= chunk_size,
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "chunk_size_mismatch",
            match expected_length(chunk_size, total, index)? {
                Some(e) => format!("chunk {index} must be {e} bytes, got {length}"),
                None => format!("chunk {index} must be 1 to {chunk_size} bytes, got {length}"),
            },
        ))
    }
}

impl Vault {
    /// Opens an upload session. `meta.expected_size` is the file's total size when known.
    pub async fn create_session(&self, who: &Principal, meta: UploadMeta) -> Result<UploadRecord> {
        let meta = meta.validate()?;
        if let Some(size) = meta.expected_size {
            self.check_quota(who, size).await?;
        }
        let now = OffsetDateTime::now_utc();
        let id = FileId::new();
        self.meta
            .create_upload(&NewUpload {
                id,
                name: meta.name,
                content_type: meta.content_type,
                chunk_size: self.config.chunk_size as u64,
                created_at: now,
                expires_at: now + self.config.upload_ttl,
                declared_size: meta.expected_size,
                owner: who.owner(),
            })
            .await?;
        self.open_upload(who, id).await
    }

    /// An upload of the principal's in any state; another account's is `NotFound`.
    async fn own_upload(&self, who: &Principal, id: FileId) -> Result<UploadRecord> {
        self.meta
            .upload(id)
            .await?
            .filter(|u| who.may_see(u.owner))
            .ok_or(CoreError::NotFound)
    }

    /// An upload that must still be open: `NotFound` or `UploadClosed` otherwise.
    pub async fn open_upload(&self, who: &Principal, id: FileId) -> Result<UploadRecord> {
        let upload = self.own_upload(who, id).await?;
        if upload.state != chunkvault_meta::UploadState::Open {
            return Err(CoreError::UploadClosed {
                state: upload.state.as_str().into(),
            });
        }
        Ok(upload)
    }

    /// A session in any state, with the chunks truly stored (recorded and written).
    pub async fn session(&self, who: &Principal, id: FileId) -> Result<Session> {
        let upload = self.own_upload(who, id).await?;
        let mut stored = Vec::new();
        let mut from = 0;
        loop {
            let page = self.meta.upload_chunks(id, from, PAGE).await?;
            let Some(last) = page.last() else { break };
            from = last.index + 1;
            let blobs = self.blobs.clone();
            let present: Vec<Option<ChunkEntry>> = stream::iter(page)
                .map(|e| {
                    let blobs = blobs.clone();
                    async move { Ok::<_, CoreError>(blobs.head(&e.hash).await?.map(|_| e)) }
                })
                .buffered(HEADS_IN_FLIGHT)
                .try_collect()
                .await?;
            stored.extend(present.into_iter().flatten());
        }
        Ok(Session { upload, stored })
    }

    /// Stores chunk `index` of a session from `body`, which must be exactly the chunk's length
    /// (and match `client_hash` when given). Reads at most one chunk into memory.
    pub async fn put_session_chunk<S, E>(
        &self,
        who: &Principal,
        id: FileId,
        index: u64,
        body: S,
        client_hash: Option<ChunkId>,
    ) -> Result<PutChunk>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin,
        E: Display,
    {
        let _lock = self.upload_locks.shared(id).await;
        let upload = self.open_upload(who, id).await?;
        let cs = upload.chunk_size;
        let expected = expected_length(cs, upload.declared_size, index)?;
        let limit = expected.unwrap_or(cs);
        let mut body = body;
        let mut buf = ChunkBuf::with_capacity(limit as usize);
        while let Some(frame) = body.next().await {
            let frame = frame.map_err(|e| CoreError::BodyFailed {
                message: e.to_string(),
            })?;
            Stats::add(&self.stats.bytes_in, frame.len() as u64);
            if (buf.len() + frame.len()) as u64 > limit {
                return Err(invalid(
                    "chunk_size_mismatch",
                    format!("chunk {index} must be at most {limit} bytes; the body is longer"),
                ));
            }
            buf.extend_from_slice(&frame);
        }
        let data = buf.freeze();
        check_length(cs, upload.declared_size, index, data.len() as u64)?;
        let for_hash = data.clone();
        let hash = tokio::task::spawn_blocking(move || ChunkId::of(&for_hash)).await?;
        if let Some(claimed) = client_hash.filter(|c| *c != hash) {
            return Err(invalid(
                "chunk_hash_mismatch",
                format!("chunk {index} hashes to {hash}, not {claimed}"),
            ));
        }
        // Whether the write was skipped may only be told to an account that already holds the
        // content; to anyone else the chunk reads as written, so dedup reveals nothing about
        // what other accounts store.
        let held_before = match who.scope() {
            Some(me) => !self.meta.chunks_held_by(me, &[hash]).await?.is_empty(),
            None => true,
        };
        let (length, written) = self
            .store_chunk(id, index, index * cs, data, Some(hash))
            .await?;
        Ok(PutChunk {
            index,
            length,
            hash,
            written: written || !held_before,
        })
    }

    /// Records the reference, then writes the blob unless a committed upload already has it.
    /// `hash` is the chunk's, when the caller computed it already. Returns the length and
    /// whether it wrote.
    pub(crate) async fn store_chunk(
        &self,
        id: FileId,
        index: u64,
        offset: u64,
        data: Bytes,
        hash: Option<ChunkId>,
    ) -> Result<(u64, bool)> {
        let length = data.len() as u64;
        let hash = match hash {
            Some(h) => h,
            None => {
                let for_hash = data.clone();
                tokio::task::spawn_blocking(move || ChunkId::of(&for_hash)).await?
            }
        };
        let state = self
            .add_chunk_waiting_for_gc(
                id,
                PendingChunk {
                    index,
                    offset,
                    length,
                    hash,
                },
            )
            .await?;
        let dedup = state == ChunkState::Stored;
        let written =
            crate::upload::store_blob(&*self.blobs, &self.stats, hash, data, dedup).await?;
        Ok((length, written))
    }

    /// Dedup before transfer: records references for the offered chunks whose content the
    /// server already stores, and returns the indices that must still be sent. Each offer is
    /// checked against the layout; the lengths and hashes are verified again at commit, when
    /// the chunks are read back.
    pub async fn offer_chunks(
        &self,
        who: &Principal,
        id: FileId,
        offers: &[ChunkOffer],
    ) -> Result<(Vec<u64>, Vec<u64>)> {
        if offers.len() > MAX_OFFERS {
            return Err(invalid(
                "too_many_chunks",
                format!("at most {MAX_OFFERS} chunks per call"),
            ));
        }
        let _lock = self.upload_locks.shared(id).await;
        let upload = self.open_upload(who, id).await?;
        let cs = upload.chunk_size;
        let mut pending = Vec::with_capacity(offers.len());
        let mut indices = std::collections::HashSet::with_capacity(offers.len());
        for o in offers {
            check_length(cs, upload.declared_size, o.index, o.length)?;
            if !indices.insert(o.index) {
                return Err(invalid(
                    "invalid_index",
                    format!("chunk {} is offered more than once", o.index),
                ));
            }
        }
        // With accounts, only content the same account already references (in a file or an
        // upload of its own) may be reported present; the rest must be sent, even when
        // another account stores it. Nothing is recorded for those, so the session's status
        // does not reveal it either.
        let (offers, mut missing): (Vec<&ChunkOffer>, Vec<u64>) = match who.scope() {
            None => (offers.iter().collect(), Vec::new()),
            Some(me) => {
                let hashes: Vec<ChunkId> = offers.iter().map(|o| o.hash).collect();
                let held: std::collections::HashSet<ChunkId> = self
                    .meta
                    .chunks_held_by(me, &hashes)
                    .await?
                    .into_iter()
                    .collect();
                let (mine, others): (Vec<&ChunkOffer>, Vec<&ChunkOffer>) =
                    offers.iter().partition(|o| held.contains(&o.hash));
                (mine, others.into_iter().map(|o| o.index).collect())
            }
        };
        for o in offers {
            pending.push(PendingChunk {
                index: o.index,
                offset: o.index * cs,
                length: o.length,
                hash: o.hash,
            });
        }
        // The references go in first, so GC cannot take a blob between the check and the
        // commit. One the server turns out not to have is replaced when the client sends it.
        let states = self.add_chunks_waiting_for_gc(id, &pending).await?;
        let blobs = self.blobs.clone();
        let checked: Vec<(u64, bool)> = stream::iter(pending.into_iter().zip(states))
            .map(|(p, state)| {
                let blobs = blobs.clone();
                async move {
                    // Written by an upload not committed yet, or not at all: look. A row a
                    // committed upload stored is looked at too: a blob lost or cut short
                    // behind the metadata's back must be sent again (see `store_blob`).
                    let found = blobs.head(&p.hash).await?;
                    let have = match state {
                        ChunkState::Stored => found.is_some_and(|m| m.size == p.length),
                        ChunkState::MustWrite => found.is_some(),
                    };
                    Ok::<_, CoreError>((p.index, have))
                }
            })
            .buffered(HEADS_IN_FLIGHT)
            .try_collect()
            .await?;
        let mut present = Vec::new();
        for (index, have) in checked {
            if have {
                Stats::add(&self.stats.chunks_deduplicated, 1);
                present.push(index);
            } else {
                missing.push(index);
            }
        }
        if who.scope().is_some() {
            // Refused and checked offers were answered apart: back in index order.
            missing.sort_unstable();
        }
        Ok((missing, present))
    }

    /// Makes a session a visible file: reads every chunk back in order, verifies it, and
    /// computes the file's digest (BLAKE3) here. Digests the client declares in `declared`
    /// must match (400 otherwise); a declared SHA-256 is computed for that comparison only.
    /// Chunk PUTs to the same upload on this node wait for it, so the digest and the manifest
    /// committed are of the same chunks.
    pub async fn commit_session(
        &self,
        who: &Principal,
        id: FileId,
        declared: &SessionCommit,
    ) -> Result<FileRecord> {
        let _lock = self.upload_locks.lock(id).await;
        self.commit_unlocked(who, id, declared).await
    }

    async fn commit_unlocked(
        &self,
        who: &Principal,
        id: FileId,
        declared: &SessionCommit,
    ) -> Result<FileRecord> {
        let declared = declared_digests(declared)?;
        let upload = self.open_upload(who, id).await?;
        let (size, computed) = self.digest_upload(&upload, &declared).await?;
        if let Some(declared) = upload.declared_size.filter(|d| *d != size) {
            return Err(invalid(
                "incomplete_upload",
                format!("the upload has {size} of {declared} bytes"),
            ));
        }
        for want in &declared {
            let got = computed.iter().find(|g| g.algorithm() == want.algorithm());
            if got != Some(want) {
                let code = match want {
                    FileDigest::Blake3(_) => "blake3_mismatch",
                    FileDigest::Sha256(_) => "sha256_mismatch",
                };
                let got = got.map_or("nothing", |g| g.hex());
                return Err(invalid(
                    code,
                    format!("the stored chunks hash to {got}, not {}", want.hex()),
                ));
            }
        }
        let digest = computed[0].clone();
        let committed = self
            .meta
            .commit_upload(
                id,
                &CommitFile {
                    name: upload.name,
                    content_type: upload.content_type,
                    size,
                    digest,
                    committed_at: OffsetDateTime::now_utc(),
                },
            )
            .await;
        let record = match committed {
            Ok(r) => r,
            Err(e @ chunkvault_meta::MetaError::QuotaExceeded { .. }) => {
                // Over quota: the upload ends here, nothing visible and nothing charged.
                if let Err(abort) = crate::gc::abort_and_collect(&self.meta, &self.blobs, id).await
                {
                    tracing::warn!(upload = %id, error = %abort, "could not abort an upload over quota; it will expire");
                }
                Stats::add(&self.stats.uploads_aborted, 1);
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        Stats::add(&self.stats.uploads_committed, 1);
        Ok(record)
    }

    /// Ends a session without a file; its chunks become collectable.
    pub async fn abort_session(&self, who: &Principal, id: FileId) -> Result<()> {
        self.open_upload(who, id).await?;
        crate::gc::abort_and_collect(&self.meta, &self.blobs, id).await?;
        Stats::add(&self.stats.uploads_aborted, 1);
        Ok(())
    }

    /// Reads an open upload's chunks back in order (`read_ahead` at once), checks the layout
    /// and each chunk's hash and length, and returns the size and the digests of the whole:
    /// its BLAKE3 first, then a SHA-256 when `declared` holds one to compare with.
    async fn digest_upload(
        &self,
        upload: &UploadRecord,
        declared: &[FileDigest],
    ) -> Result<(u64, Vec<FileDigest>)> {
        let cs = upload.chunk_size;
        let id = upload.id;
        let mut hashers: Vec<FileHasher> = std::iter::once(FileHasher::new())
            .chain(
                declared
                    .iter()
                    .filter(|d| d.sha256().is_some())
                    .map(FileHasher::like),
            )
            .collect();
        let mut expected_index = 0u64;
        let mut size = 0u64;
        let mut short_seen = false;
        loop {
            let page = self.meta.upload_chunks(id, expected_index, PAGE).await?;
            if page.is_empty() {
                break;
            }
            for e in &page {
                if e.index != expected_index {
                    return Err(invalid(
                        "incomplete_upload",
                        format!("chunk {expected_index} has not been sent"),
                    ));
                }
                if short_seen {
                    return Err(invalid(
                        "chunk_size_mismatch",
                        format!(
                            "chunk {} is shorter than the chunk size but is not the last",
                            e.index - 1
                        ),
                    ));
                }
                short_seen = e.length < cs;
                expected_index += 1;
            }
            let (meta, blobs) = (self.meta.clone(), self.blobs.clone());
            let mut chunks = stream::iter(page)
                .map(|e| {
                    let (meta, blobs) = (meta.clone(), blobs.clone());
                    async move { read_verified(&*meta, &*blobs, e).await.map(|d| (e, d)) }
                })
                .buffered(self.config.read_ahead.max(1));
            while let Some(next) = chunks.next().await {
                let (e, data) = next?;
                size += e.length;
                hashers = tokio::task::spawn_blocking(move || {
                    for h in &mut hashers {
                        h.update(&data);
                    }
                    hashers
                })
                .await?;
            }
        }
        Ok((size, hashers.into_iter().map(FileHasher::finish).collect()))
    }

    /// Stores a stream as consecutive chunks from `index` on, `prefix` first (a partial chunk
    /// stored earlier), keeping `puts_in_flight` writes going; the last chunk may be short.
    /// Returns the bytes of `body` consumed. When the body fails, what was received so far is
    /// still stored (a short chunk at the end), then the error is returned.
    pub(crate) async fn store_stream<S, E>(
        &self,
        id: FileId,
        cs: u64,
        mut index: u64,
        prefix: Bytes,
        body: S,
        limit: u64,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin,
        E: Display,
    {
        let mut body = body;
        let mut buf = ChunkBuf::with_capacity(cs as usize);
        buf.extend_from_slice(&prefix);
        let mut consumed = 0u64;
        let mut puts: JoinSet<Result<(u64, bool)>> = JoinSet::new();
        let mut failure = None;
        loop {
            let frame = match body.next().await {
                None => break,
                Some(Ok(f)) => f,
                Some(Err(e)) => {
                    failure = Some(CoreError::BodyFailed {
                        message: e.to_string(),
                    });
                    break;
                }
            };
            let mut frame = frame;
            consumed += frame.len() as u64;
            Stats::add(&self.stats.bytes_in, frame.len() as u64);
            if consumed > limit {
                failure = Some(invalid(
                    "size_mismatch",
                    "the body runs past the upload's length",
                ));
                break;
            }
            while !frame.is_empty() {
                let take = (cs as usize - buf.len()).min(frame.len());
                buf.extend_from_slice(&frame.split_to(take));
                if buf.len() as u64 == cs {
                    let full = std::mem::replace(&mut buf, ChunkBuf::with_capacity(cs as usize));
                    while puts.len() >= self.config.puts_in_flight.max(1) {
                        join_put(puts.join_next().await.map(|r| r.map(|x| x.map(|_| ()))))?;
                    }
                    let vault = self.clone();
                    let i = index;
                    puts.spawn(async move {
                        vault.store_chunk(id, i, i * cs, full.freeze(), None).await
                    });
                    index += 1;
                }
            }
        }
        if failure
            .as_ref()
            .is_some_and(|f| matches!(f, CoreError::Invalid { .. }))
        {
            // Over-long: store nothing more of it.
            buf.clear();
        }
        if !buf.is_empty() {
            self.store_chunk(id, index, index * cs, buf.freeze(), None)
                .await?;
        }
        while let Some(done) = puts.join_next().await {
            join_put(Some(done.map(|r| r.map(|_| ()))))?;
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(consumed),
        }
    }

    /// A stored chunk of an upload, read back and verified.
    pub(crate) async fn read_chunk(&self, entry: ChunkEntry) -> Result<Bytes> {
        read_verified(&*self.meta, &*self.blobs, entry).await
    }
}

/// Reads a chunk an open upload references and checks it. A missing blob means the client
/// has not (successfully) sent it: a client error, not damage. Either way the chunk is
/// recorded as lost when a committed file had it (see [`MetaStore::chunk_lost`]), so sending
/// it again writes it.
async fn read_verified(
    meta: &dyn MetaStore,
    blobs: &dyn BlobStore,
    e: ChunkEntry,
) -> Result<Bytes> {
    let (data, ok) = match blobs.get_checked(&e.hash).await {
        Ok(read) => read,
        Err(BlobError::NotFound { .. }) => {
            crate::download::chunk_lost(meta, &e.hash).await;
            return Err(invalid(
                "incomplete_upload",
                format!("chunk {} has not been stored; send it again", e.index),
            ));
        }
        Err(err) => return Err(err.into()),
    };
    if ok && data.len() as u64 != e.length {
        // The content is what the hash says; the length the client offered was wrong.
        return Err(invalid(
            "chunk_size_mismatch",
            format!(
                "chunk {} is {} bytes, not {}",
                e.index,
                data.len(),
                e.length
            ),
        ));
    }
    if !ok {
        tracing::error!(chunk = %e.hash, index = e.index, "a chunk of an open upload does not match its hash or length");
        crate::download::chunk_lost(meta, &e.hash).await;
        return Err(CoreError::Damaged {
            file: String::new(),
            chunk: e.hash.to_hex(),
            problem: "corrupt",
        });
    }
    Ok(data)
}

/// Digest algorithms a client may use to protect an appended body (tus checksum extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumAlgorithm {
    Sha1,
    Sha256,
}

impl ChecksumAlgorithm {
    pub const ALL: [Self; 2] = [Self::Sha1, Self::Sha256];

    pub fn name(&self) -> &'static str {
        match self {
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == s)
    }

    fn digest(&self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha1 => {
                use sha1::Digest as _;
                sha1::Sha1::digest(data).to_vec()
            }
            Self::Sha256 => Sha256::digest(data).to_vec(),
        }
    }
}

/// The checksum a client sent with an appended body.
#[derive(Debug, Clone)]
pub struct BodyChecksum {
    pub algorithm: ChecksumAlgorithm,
    pub digest: Vec<u8>,
}

/// Where a sequential (tus) upload stands after [`Vault::append_session`].
#[derive(Debug, Clone)]
pub struct Appended {
    pub offset: u64,
    /// Set when this append completed the upload, which is now a visible file.
    pub committed: Option<FileRecord>,
}

/// One lock per sequential upload on this node: an append runs alone, and an offset query
/// waits for the append in progress (whose body may have just failed) to finish storing.
/// Entries live only while someone holds or waits for them.
#[derive(Debug, Default)]
pub(crate) struct UploadLocks(
    std::sync::Mutex<std::collections::HashMap<FileId, std::sync::Arc<tokio::sync::RwLock<()>>>>,
);

enum Held {
    Shared(#[allow(dead_code)] tokio::sync::OwnedRwLockReadGuard<()>),
    Exclusive(#[allow(dead_code)] tokio::sync::OwnedRwLockWriteGuard<()>),
}

pub(crate) struct UploadLockGuard {
    locks: std::sync::Arc<UploadLocks>,
    id: FileId,
    guard: Option<Held>,
}

impl UploadLocks {
    /// Exclusive: appends, offset queries, commits.
    async fn lock(self: &std::sync::Arc<Self>, id: FileId) -> UploadLockGuard {
        let m = self.entry(id);
        UploadLockGuard {
            locks: self.clone(),
            id,
            guard: Some(Held::Exclusive(m.write_owned().await)),
        }
    }

    /// Shared: chunk PUTs and offers, which may run in parallel but not during a commit.
    async fn shared(self: &std::sync::Arc<Self>, id: FileId) -> UploadLockGuard {
        let m = self.entry(id);
        UploadLockGuard {
            locks: self.clone(),
            id,
            guard: Some(Held::Shared(m.read_owned().await)),
        }
    }

    fn entry(&self, id: FileId) -> std::sync::Arc<tokio::sync::RwLock<()>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(id).or_default().clone()
    }
}

impl Drop for UploadLockGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.0.lock().unwrap_or_else(|e| e.into_inner());
        if map
            .get(&self.id)
            .is_some_and(|m| std::sync::Arc::strong_count(m) == 1)
        {
            map.remove(&self.id);
        }
    }
}

impl Vault {
    /// The resume offset of a sequential upload: bytes stored from the start without a gap
    /// (recorded *and* written), or the whole size once committed. Waits for an append to the
    /// same upload on this node to finish.
    pub async fn session_offset(&self, who: &Principal, id: FileId) -> Result<(UploadRecord, u64)> {
        let _lock = self.upload_locks.lock(id).await;
        self.offset_unlocked(who, id).await
    }

    async fn offset_unlocked(&self, who: &Principal, id: FileId) -> Result<(UploadRecord, u64)> {
        let s = self.session(who, id).await?;
        let offset = match s.upload.state {
            chunkvault_meta::UploadState::Open => s.contiguous_bytes(),
            chunkvault_meta::UploadState::Committed => s.upload.declared_size.unwrap_or(0),
            other => {
                return Err(CoreError::UploadClosed {
                    state: other.as_str().into(),
                });
            }
        };
        Ok((s.upload, offset))
    }

    /// Appends `body` at `offset` to a sequential upload of declared size (tus PATCH). Bodies
    /// need not align with chunks: a short last chunk is stored as a chunk of its own, and
    /// the next append reads it back, verified, and stores it again completed. So nothing is
    /// kept outside the two stores and a restart between appends loses nothing. When the
    /// offset reaches the declared size the upload is committed (read back, SHA-256 computed).
    ///
    /// Appends to one upload run one at a time on this node (several nodes behind a load
    /// balancer need sticky routing per upload for that guarantee).
    ///
    /// With `checksum`, the body is verified *before* anything is stored, so a mismatch leaves
    /// the offset where it was; such a body may be at most one chunk long (memory stays one
    /// chunk per request).
    pub async fn append_session<S, E>(
        &self,
        who: &Principal,
        id: FileId,
        offset: u64,
        body: S,
        checksum: Option<BodyChecksum>,
    ) -> Result<Appended>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin,
        E: Display,
    {
        let _lock = self.upload_locks.lock(id).await;
        let (upload, current) = self.offset_unlocked(who, id).await?;
        if upload.state != chunkvault_meta::UploadState::Open {
            return Err(CoreError::UploadClosed {
                state: upload.state.as_str().into(),
            });
        }
        let total = upload.declared_size.ok_or_else(|| {
            invalid(
                "size_unknown",
                "this upload has no declared size and cannot be appended to",
            )
        })?;
        if offset != current {
            return Err(CoreError::Conflict {
                code: "offset_mismatch",
                message: format!("the upload's offset is {current}, not {offset}"),
            });
        }
        let cs = upload.chunk_size;
        let index = current / cs;
        let prefix = if current % cs != 0 {
            let tail = self
                .meta
                .upload_chunks(id, index, 1)
                .await?
                .into_iter()
                .next()
                .filter(|e| e.index == index)
                .ok_or_else(|| CoreError::Internal("the partial chunk vanished".into()))?;
            self.read_chunk(tail).await?
        } else {
            Bytes::new()
        };
        let remaining = total - current;
        let consumed = match checksum {
            None => {
                self.store_stream(id, cs, index, prefix, body, remaining)
                    .await?
            }
            Some(c) => {
                let data = read_bounded(body, cs, &self.stats).await?;
                let for_digest = data.clone();
                let algorithm = c.algorithm;
                let digest =
                    tokio::task::spawn_blocking(move || algorithm.digest(&for_digest)).await?;
                if digest != c.digest {
                    return Err(invalid(
                        "checksum_mismatch",
                        format!(
                            "the body's {} does not match Upload-Checksum",
                            algorithm.name()
                        ),
                    ));
                }
                let one = stream::iter([Ok::<_, std::convert::Infallible>(data)]);
                self.store_stream(id, cs, index, prefix, one, remaining)
                    .await?
            }
        };
        let offset = current + consumed;
        let committed = if offset == total {
            Some(
                self.commit_unlocked(who, id, &SessionCommit::default())
                    .await?,
            )
        } else {
            None
        };
        Ok(Appended { offset, committed })
    }
}

/// Reads a whole body of at most `limit` bytes.
async fn read_bounded<S, E>(mut body: S, limit: u64, stats: &Stats) -> Result<Bytes>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin,
    E: Display,
{
    let mut buf = BytesMut::new();
    while let Some(frame) = body.next().await {
        let frame = frame.map_err(|e| CoreError::BodyFailed {
            message: e.to_string(),
        })?;
        Stats::add(&stats.bytes_in, frame.len() as u64);
        if (buf.len() + frame.len()) as u64 > limit {
            return Err(invalid(
                "checksum_body_too_large",
                format!("a body with a checksum may be at most {limit} bytes (one chunk)"),
            ));
        }
        buf.extend_from_slice(&frame);
    }
    Ok(buf.freeze())
}
