//! Receiving a file: the body is cut into chunks as it streams in; each chunk is hashed, its
//! pending reference recorded, and its blob written, with a fixed number of chunks in memory
//! per upload whatever the file size. The file becomes visible only in [`Vault::commit`].

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chunkvault_blob::{BlobStore, ChunkBuf};
use chunkvault_meta::{
    ChunkState, CommitFile, FileRecord, MetaError, MetaStore, NewUpload, PendingChunk,
};
use chunkvault_types::{ChunkId, FileDigest, FileHasher, FileId};
use futures::{Stream, StreamExt};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::{CoreError, Principal, Result, Stats, Vault};

/// Chunks this large are hashed on two blocking threads at once (the whole file's digest and
/// the chunk's own hash, both BLAKE3); smaller
/// ones inline, where a thread hand-off would cost more than the hashing (~30 µs for 64 KiB).
pub(crate) const PARALLEL_HASH_MIN: usize = 64 << 10;

/// Longest file name accepted, in bytes of UTF-8.
pub const MAX_NAME_BYTES: usize = 1024;
/// Longest content type accepted.
pub const MAX_TYPE_BYTES: usize = 255;

/// What the client says about a file.
#[derive(Debug, Clone, Default)]
pub struct UploadMeta {
    pub name: String,
    pub content_type: String,
    /// The size the client announced; the upload fails if the body differs.
    pub expected_size: Option<u64>,
}

impl UploadMeta {
    /// Checks the name and type; fills in the default type.
    pub fn validate(mut self) -> Result<Self> {
        if self.name.is_empty() {
            return Err(CoreError::Invalid {
                code: "missing_name",
                message: "fileName is required".into(),
            });
        }
        if self.name.len() > MAX_NAME_BYTES {
            return Err(CoreError::Invalid {
                code: "name_too_long",
                message: format!(
                    "fileName is {} bytes; at most {MAX_NAME_BYTES} are accepted",
                    self.name.len()
                ),
            });
        }
        if self.name.chars().any(char::is_control) {
            return Err(CoreError::Invalid {
                code: "invalid_name",
                message: "fileName must not contain control characters".into(),
            });
        }
        if self.name.chars().any(is_bidi_control) {
            return Err(CoreError::Invalid {
                code: "invalid_name",
                message: "fileName must not contain bidirectional override, embedding or isolate \
                          characters (U+202A-U+202E, U+2066-U+2069)"
                    .into(),
            });
        }
        let t = self.content_type.trim();
        if t.is_empty() {
            self.content_type = "application/octet-stream".into();
        } else {
            // A media type travels back in a Content-Type header: visible ASCII only, type/subtype.
            let valid = t.len() <= MAX_TYPE_BYTES
                && t.bytes().all(|b| (0x20..0x7f).contains(&b))
                && t.split(';').next().is_some_and(|mt| {
                    let mut parts = mt.trim().splitn(2, '/');
                    let token = |s: &str| {
                        !s.is_empty()
                            && s.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
                    };
                    parts.next().is_some_and(token) && parts.next().is_some_and(token)
                });
            if !valid {
                return Err(CoreError::Invalid {
                    code: "invalid_type",
                    message: "fileType must be a media type such as text/plain".into(),
                });
            }
            self.content_type = t.to_string();
        }
        Ok(self)
    }
}

/// Unicode's bidirectional embedding, override and isolate characters. They are not control
/// characters to [`char::is_control`], but they make a name display otherwise than it reads:
/// "invoice\u{202E}fdp.exe" shows as "invoiceexe.pdf", a known way to disguise a file's type.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// An upload whose bytes are all stored but which is not visible yet. Dropping it without
/// [`Vault::commit`] aborts the upload, so its chunks become collectable.
#[derive(Debug)]
pub struct Received {
    pub id: FileId,
    pub size: u64,
    pub digest: FileDigest,
    guard: AbortGuard,
}

/// Aborts the upload when dropped armed: on errors, and when the request future is dropped
/// because the client went away.
#[derive(Debug)]
struct AbortGuard {
    meta: Arc<dyn MetaStore>,
    blobs: Arc<dyn BlobStore>,
    id: FileId,
    armed: bool,
    stats: Arc<Stats>,
    /// Held while the upload is being opened (see [`Vault::begin_upload`]).
    opening: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        Stats::add(&self.stats.uploads_aborted, 1);
        let (meta, blobs, id, opening) = (
            self.meta.clone(),
            self.blobs.clone(),
            self.id,
            self.opening.clone(),
        );
        // If the metadata store is unreachable now, the upload expires later instead.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                // An open still in flight finishes first, so the abort finds what it opened.
                let _opened = opening.lock().await;
                match crate::gc::abort_and_collect(&meta, &blobs, id).await {
                    // NotFound: the upload failed before it was opened.
                    Ok(()) | Err(MetaError::NotFound) => {}
                    Err(e) => {
                        tracing::warn!(upload = %id, error = %e, "could not abort upload; it will expire");
                    }
                }
            });
        }
    }
}

impl Vault {
    /// Uploads a whole file in one call: receive, then commit.
    pub async fn upload<S, E>(
        &self,
        who: &Principal,
        meta: UploadMeta,
        body: S,
    ) -> Result<FileRecord>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin,
        E: Display,
    {
        let meta = meta.validate()?;
        let chunk_size = self.config.chunk_size;
        if self.blobs.records_copies() || meta.expected_size.is_some_and(|s| s > chunk_size as u64)
        {
            let received = self.receive(who, body, meta.expected_size).await?;
            return self.commit(received, meta).await;
        }
        // A body that may fit one chunk is read first; if it does, the file is stored whole.
        // Held in memory: at most one chunk and one frame, as on the streaming path.
        let mut body = body;
        let mut frames = Vec::new();
        let mut read = 0usize;
        while read <= chunk_size {
            match body.next().await {
                None => return self.upload_whole(who, meta, frames, read).await,
                Some(Ok(frame)) => {
                    read += frame.len();
                    frames.push(frame);
                }
                Some(Err(e)) => {
                    return Err(CoreError::BodyFailed {
                        message: e.to_string(),
                    });
                }
            }
        }
        // Larger: streamed as any other body, from its first byte.
        let body = futures::stream::iter(frames.into_iter().map(Ok)).chain(body);
        let received = self.receive(who, body, meta.expected_size).await?;
        self.commit(received, meta).await
    }

    /// Stores a file of at most one chunk, all of it in hand, with one metadata transaction
    /// instead of two. The blob is written first, then [`MetaStore::create_file`] opens,
    /// records and commits the file at once; a crash or failure in between leaves only an
    /// orphan blob, which GC removes after its grace period.
    ///
    /// Writing before recording is safe against GC as follows. GC deletes a blob only after
    /// claiming its chunk row (state `deleting`) and forgets the row only after the delete.
    /// If the transaction meets a claimed row, it records nothing ([`MetaError::ChunkBusy`]):
    /// wait and write again. If it finds the chunk live, the blob was written after any earlier
    /// delete (every writer of a live chunk ensured that). Otherwise (a new or pending row) a
    /// claim may have deleted the blob and been forgotten between our write and our
    /// transaction, so the blob is looked up and written again if it is gone; from the commit
    /// on, the file's reference keeps GC from claiming it. Stores whose puts record copies in
    /// the metadata (see [`BlobStore::records_copies`]) never come here.
    async fn upload_whole(
        &self,
        who: &Principal,
        meta: UploadMeta,
        frames: Vec<Bytes>,
        size: usize,
    ) -> Result<FileRecord> {
        Stats::add(&self.stats.uploads_started, 1);
        // Counted aborted unless it commits, also when the request is dropped (the client
        // went away) part-way.
        let mut outcome = Aborted {
            stats: &self.stats,
            armed: true,
        };
        let stored = self.store_whole(who, meta, frames, size).await;
        if stored.is_ok() {
            outcome.armed = false;
            Stats::add(&self.stats.uploads_committed, 1);
        }
        stored
    }

    async fn store_whole(
        &self,
        who: &Principal,
        meta: UploadMeta,
        frames: Vec<Bytes>,
        size: usize,
    ) -> Result<FileRecord> {
        Stats::add(&self.stats.bytes_in, size as u64);
        let data = if frames.len() == 1 {
            frames.into_iter().next().unwrap_or_default()
        } else {
            let mut buf = ChunkBuf::with_capacity(size);
            for frame in &frames {
                buf.extend_from_slice(frame);
            }
            buf.freeze()
        };
        if let Some(expected) = meta.expected_size.filter(|e| *e != size as u64) {
            return Err(size_mismatch(expected, size as u64, size as u64 > expected));
        }
        let upload = self.new_upload(who);
        let commit = CommitFile {
            name: meta.name,
            content_type: meta.content_type,
            size: size as u64,
            digest: FileDigest::blake3_of(&data),
            committed_at: upload.created_at,
        };
        if !data.is_empty() && size <= self.config.inline_max.min(self.config.chunk_size) {
            // Kept in the metadata store: no chunk, no blob, nothing for GC. Its transaction
            // charges the quota or refuses the file, so there is nothing to check first.
            return Ok(self.meta.create_inline_file(&upload, &commit, data).await?);
        }
        // A blob is written before its transaction: refuse a file over the quota first.
        if let Some(left) = self
            .quota_remaining(who)
            .await?
            .filter(|l| size as u64 > *l)
        {
            return Err(quota_exceeded(left, size as u64, true));
        }
        let hash = ChunkId::of(&data);
        let chunks: Vec<PendingChunk> = if data.is_empty() {
            Vec::new()
        } else {
            vec![PendingChunk {
                index: 0,
                offset: 0,
                length: size as u64,
                hash,
            }]
        };
        // Written again on every try: GC may have deleted it while the record waited.
        let (record, states) = self
            .retry_while_gc_deletes(|| async {
                if !chunks.is_empty() {
                    self.blobs.put(&hash, data.clone()).await?;
                    Stats::add(&self.stats.chunks_written, 1);
                }
                Ok(self.meta.create_file(&upload, &chunks, &commit).await?)
            })
            .await?;
        if states.first() == Some(&ChunkState::MustWrite) && self.blobs.head(&hash).await?.is_none()
        {
            tracing::info!(chunk = %hash, "a chunk was collected while its file was recorded; writing it again");
            self.blobs.put(&hash, data).await?;
            Stats::add(&self.stats.chunks_written, 1);
        }
        Ok(record)
    }

    /// Opens an upload owned by `who` and stores the body's chunks. Nothing is visible until
    /// [`Vault::commit`]. When `expected_size` is given, a body that runs past it fails at
    /// once; a declared size or a body over the account's remaining quota fails as soon as it
    /// is known (the commit checks the quota again, exactly, in its transaction).
    pub async fn receive<S, E>(
        &self,
        who: &Principal,
        body: S,
        expected_size: Option<u64>,
    ) -> Result<Received>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin,
        E: Display,
    {
        let remaining = self.quota_remaining(who).await?;
        if let (Some(size), Some(left)) = (expected_size, remaining)
            && size > left
        {
            return Err(quota_exceeded(left, size, true));
        }
        // Opened in the metadata store with its first chunk (one call, not two); an empty
        // body opens it at the end.
        let upload = self.new_upload(who);
        let id = upload.id;
        Stats::add(&self.stats.uploads_started, 1);
        let guard = AbortGuard {
            meta: self.meta.clone(),
            blobs: self.blobs.clone(),
            id,
            armed: true,
            stats: self.stats.clone(),
            opening: Arc::new(tokio::sync::Mutex::new(())),
        };

        // One chunk being filled here, one in the channel, one being hashed, `puts_in_flight`
        // being written: memory per upload is bounded, and a full pipeline stops reading the
        // body, which is the backpressure the client feels.
        let (tx, rx) = mpsc::channel::<Bytes>(1);
        let chunk_size = self.config.chunk_size;
        let stats = self.stats.clone();
        let producer = async move {
            let mut body = body;
            let mut total = 0u64;
            let mut buf = ChunkBuf::with_capacity(chunk_size);
            while let Some(frame) = body.next().await {
                let mut frame = frame.map_err(|e| CoreError::BodyFailed {
                    message: e.to_string(),
                })?;
                total += frame.len() as u64;
                Stats::add(&stats.bytes_in, frame.len() as u64);
                if let Some(limit) = expected_size.filter(|l| total > *l) {
                    return Err(size_mismatch(limit, total, true));
                }
                if let Some(left) = remaining.filter(|l| total > *l) {
                    return Err(quota_exceeded(left, total, false));
                }
                while !frame.is_empty() {
                    let take = (chunk_size - buf.len()).min(frame.len());
                    buf.extend_from_slice(&frame.split_to(take));
                    if buf.len() == chunk_size {
                        let full = std::mem::replace(&mut buf, ChunkBuf::with_capacity(chunk_size));
                        if tx.send(full.freeze()).await.is_err() {
                            return Ok(total); // the consumer failed; its error wins
                        }
                    }
                }
            }
            if !buf.is_empty() && tx.send(buf.freeze()).await.is_err() {
                return Ok(total);
            }
            Ok(total)
        };
        let (total, digest) =
            tokio::try_join!(producer, self.store_chunks(&upload, &guard.opening, rx))?;
        if let Some(expected) = expected_size.filter(|e| *e != total) {
            return Err(size_mismatch(expected, total, false));
        }
        Ok(Received {
            id,
            size: total,
            digest,
            guard,
        })
    }

    /// Makes a received upload a visible file, with the name and type given now (multipart
    /// forms may send them after the file).
    pub async fn commit(&self, received: Received, meta: UploadMeta) -> Result<FileRecord> {
        let meta = meta.validate()?;
        if let Some(expected) = meta.expected_size.filter(|e| *e != received.size) {
            return Err(size_mismatch(expected, received.size, false));
        }
        let mut received = received;
        let record = self
            .meta
            .commit_upload(
                received.id,
                &CommitFile {
                    name: meta.name,
                    content_type: meta.content_type,
                    size: received.size,
                    digest: received.digest.clone(),
                    committed_at: OffsetDateTime::now_utc(),
                },
            )
            .await?;
        received.guard.armed = false;
        Stats::add(&self.stats.uploads_committed, 1);
        Ok(record)
    }

    /// The consumer side: hash each chunk with BLAKE3 (its id), record its pending reference
    /// (the first one together with opening the upload), write its blob unless a committed
    /// upload already stored it. The whole-file digest runs beside all that on a thread of its
    /// own ([`StreamDigest`]), so it never waits for a record or a write. Returns it.
    async fn store_chunks(
        &self,
        upload: &NewUpload,
        opening: &Arc<tokio::sync::Mutex<()>>,
        mut rx: mpsc::Receiver<Bytes>,
    ) -> Result<FileDigest> {
        let id = upload.id;
        let mut digest = StreamDigest::default();
        let mut index = 0u64;
        let mut offset = 0u64;
        let mut puts: JoinSet<Result<()>> = JoinSet::new();
        while let Some(chunk) = rx.recv().await {
            digest.update(chunk.clone()).await?;
            let hash = if chunk.len() < PARALLEL_HASH_MIN {
                // Handing a small chunk to a thread costs more than hashing it here.
                ChunkId::of(&chunk)
            } else {
                let for_id = chunk.clone();
                tokio::task::spawn_blocking(move || ChunkId::of(&for_id)).await?
            };
            let pending = PendingChunk {
                index,
                offset,
                length: chunk.len() as u64,
                hash,
            };
            let state = if index == 0 {
                self.begin_upload(upload, Some(pending), opening).await?
            } else {
                self.add_chunk_waiting_for_gc(id, pending).await?
            };
            index += 1;
            offset += chunk.len() as u64;
            let dedup = state == ChunkState::Stored;
            if chunk.len() < self.config.chunk_size {
                // A short chunk is the body's last: nothing follows to overlap its write with,
                // so it is written here rather than on a task of its own.
                store_blob(&*self.blobs, &self.stats, hash, chunk, dedup).await?;
                continue;
            }
            while puts.len() >= self.config.puts_in_flight.max(1) {
                join_put(puts.join_next().await)?;
            }
            let blobs: Arc<dyn BlobStore> = self.blobs.clone();
            let stats = self.stats.clone();
            puts.spawn(async move {
                store_blob(&*blobs, &stats, hash, chunk, dedup)
                    .await
                    .map(drop)
            });
        }
        while let Some(done) = puts.join_next().await {
            join_put(Some(done))?;
        }
        if index == 0 {
            self.begin_upload(upload, None, opening).await?;
        }
        digest.finish().await
    }

    /// A new upload of `who`'s, named at commit, with this vault's chunk size and expiry.
    fn new_upload(&self, who: &Principal) -> NewUpload {
        let now = OffsetDateTime::now_utc();
        NewUpload {
            id: FileId::new(),
            name: String::new(),
            content_type: String::new(),
            chunk_size: self.config.chunk_size as u64,
            created_at: now,
            expires_at: now + self.config.upload_ttl,
            declared_size: None,
            owner: who.owner(),
        }
    }

    /// Opens `upload`, with its first chunk when it has one, on a task of its own, holding
    /// `opening` until done. The request may be dropped meanwhile (the client went away); the
    /// open then still finishes, and the abort that the upload's guard sends waits for
    /// `opening`, so it always runs after the open: an open that landed after its abort would
    /// hold its chunks until the upload expired. Returns the first chunk's state.
    async fn begin_upload(
        &self,
        upload: &NewUpload,
        first: Option<PendingChunk>,
        opening: &Arc<tokio::sync::Mutex<()>>,
    ) -> Result<ChunkState> {
        let held = opening
            .clone()
            .try_lock_owned()
            .map_err(|_| CoreError::Internal("an upload was opened twice".into()))?;
        let (vault, upload) = (self.clone(), upload.clone());
        tokio::spawn(async move {
            let _held = held;
            match first {
                Some(chunk) => vault.create_upload_waiting_for_gc(&upload, chunk).await,
                None => {
                    vault.meta.create_upload(&upload).await?;
                    Ok(ChunkState::MustWrite)
                }
            }
        })
        .await?
    }

    /// Opens `upload` with its first chunk; when GC is deleting that very chunk, waits for it
    /// to finish, like [`Vault::add_chunk_waiting_for_gc`].
    async fn create_upload_waiting_for_gc(
        &self,
        upload: &NewUpload,
        chunk: PendingChunk,
    ) -> Result<ChunkState> {
        let chunks = [chunk];
        self.retry_while_gc_deletes(|| async {
            Ok(self.meta.create_upload_with_chunks(upload, &chunks).await?)
        })
        .await
        .map(|states| states[0])
    }

    /// Records a pending reference; when GC is deleting that very chunk, waits for it to
    /// finish (the blob is then written again) rather than failing the upload.
    pub(crate) async fn add_chunk_waiting_for_gc(
        &self,
        id: FileId,
        chunk: PendingChunk,
    ) -> Result<ChunkState> {
        Ok(self.add_chunks_waiting_for_gc(id, &[chunk]).await?[0])
    }

    /// [`Vault::add_chunk_waiting_for_gc`] for several chunks in one transaction.
    pub(crate) async fn add_chunks_waiting_for_gc(
        &self,
        id: FileId,
        chunks: &[PendingChunk],
    ) -> Result<Vec<ChunkState>> {
        self.retry_while_gc_deletes(|| async { Ok(self.meta.add_chunks(id, chunks).await?) })
            .await
    }

    /// Runs `record` again while it fails with [`CoreError::Busy`] (the metadata store's
    /// `ChunkBusy`: GC is deleting one of the chunks, nothing was recorded), backing off, for
    /// up to 30 s.
    async fn retry_while_gc_deletes<T, F, Fut>(&self, record: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut wait = Duration::from_millis(20);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match record().await {
                Err(CoreError::Busy) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
                done => return done,
            }
        }
    }
}

/// Counts an upload as aborted when dropped armed.
struct Aborted<'a> {
    stats: &'a Stats,
    armed: bool,
}

impl Drop for Aborted<'_> {
    fn drop(&mut self) {
        if self.armed {
            Stats::add(&self.stats.uploads_aborted, 1);
        }
    }
}

/// Chunks queued for the whole-file digest thread beyond the one it is hashing. They are
/// clones of chunks the pipeline holds anyway, so the queue adds no copies; when it is full
/// the pipeline waits, which is backpressure like any other stage.
const DIGEST_QUEUE: usize = 2;

/// The whole-file digest (BLAKE3) of an upload's body, fed chunk by chunk in order. Small
/// chunks are hashed inline; from the first one of [`PARALLEL_HASH_MIN`] bytes on, a blocking
/// thread hashes them back to back, beside the chunks' own hashing, the metadata record and
/// the blob write. A stream's digest cannot run in parallel with itself, so it gets a thread
/// that never waits for the others.
#[derive(Default)]
enum StreamDigest {
    #[default]
    Empty,
    Inline(FileHasher),
    Thread {
        queue: mpsc::Sender<Bytes>,
        done: tokio::task::JoinHandle<FileHasher>,
    },
}

impl StreamDigest {
    async fn update(&mut self, chunk: Bytes) -> Result<()> {
        match self {
            Self::Empty if chunk.len() >= PARALLEL_HASH_MIN => {
                let (queue, mut chunks) = mpsc::channel::<Bytes>(DIGEST_QUEUE);
                let done = tokio::task::spawn_blocking(move || {
                    let mut hasher = FileHasher::new();
                    while let Some(c) = chunks.blocking_recv() {
                        hasher.update(&c);
                    }
                    hasher
                });
                queue.send(chunk).await.map_err(|_| digest_thread_gone())?;
                *self = Self::Thread { queue, done };
            }
            Self::Empty => {
                let mut hasher = FileHasher::new();
                hasher.update(&chunk);
                *self = Self::Inline(hasher);
            }
            Self::Inline(hasher) => hasher.update(&chunk),
            Self::Thread { queue, .. } => {
                queue.send(chunk).await.map_err(|_| digest_thread_gone())?;
            }
        }
        Ok(())
    }

    async fn finish(self) -> Result<FileDigest> {
        let hasher = match self {
            Self::Empty => FileHasher::new(),
            Self::Inline(hasher) => hasher,
            Self::Thread { queue, done } => {
                drop(queue);
                done.await?
            }
        };
        Ok(hasher.finish())
    }
}

/// The digest thread ended before its queue closed: it panicked, and its join says so.
fn digest_thread_gone() -> CoreError {
    CoreError::Internal("the digest thread of an upload stopped".into())
}

/// Writes a chunk's blob, or, when its row says a committed upload stored it already (`dedup`),
/// checks with one look that the blob is there at the chunk's length and writes it only when
/// it is not: a blob lost or cut short behind the metadata's back is restored by the next
/// upload of its content instead of being deduplicated against. Damage that keeps the length
/// is found by reads and scrub, which record the chunk lost ([`MetaStore::chunk_lost`]), so
/// the upload after that gets no `dedup` and writes (a put replaces a damaged blob).
pub(crate) async fn store_blob(
    blobs: &dyn BlobStore,
    stats: &Stats,
    hash: ChunkId,
    data: Bytes,
    dedup: bool,
) -> Result<bool> {
    if dedup {
        match blobs.head(&hash).await? {
            Some(m) if m.size == data.len() as u64 => {
                Stats::add(&stats.chunks_deduplicated, 1);
                return Ok(false);
            }
            found => tracing::warn!(
                chunk = %hash,
                stored_length = found.map(|m| m.size),
                "a stored chunk's blob is missing or of the wrong length; written again from this upload"
            ),
        }
    }
    blobs.put(&hash, data).await?;
    Stats::add(&stats.chunks_written, 1);
    Ok(true)
}

pub(crate) fn join_put(
    done: Option<std::result::Result<Result<()>, tokio::task::JoinError>>,
) -> Result<()> {
    match done {
        None => Ok(()),
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(e.into()),
    }
}

/// `known`: `size` is the upload's declared size; otherwise the bytes received so far, when
/// they first ran past the quota.
pub(crate) fn quota_exceeded(left: u64, size: u64, known: bool) -> CoreError {
    let needs = if known { "needs" } else { "needs at least" };
    CoreError::QuotaExceeded {
        message: format!("the account's quota has {left} bytes left; this upload {needs} {size}"),
    }
}

fn size_mismatch(expected: u64, got: u64, more: bool) -> CoreError {
    CoreError::Invalid {
        code: "size_mismatch",
        message: if more {
            format!("fileSize is {expected} but the body is longer")
        } else {
            format!("fileSize is {expected} but the body has {got} bytes")
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, t: &str) -> UploadMeta {
        UploadMeta {
            name: name.into(),
            content_type: t.into(),
            expected_size: None,
        }
    }

    #[tokio::test]
    async fn stream_digest_is_the_blake3_of_the_chunks_in_order() {
        let big = PARALLEL_HASH_MIN;
        let bodies: [&[usize]; 5] = [
            &[],
            &[1],
            &[big - 1],
            &[big, big, 7],
            &[3 * big, big, big, big, big, 1],
        ];
        for sizes in bodies {
            let chunks: Vec<Bytes> = sizes
                .iter()
                .enumerate()
                .map(|(i, n)| Bytes::from((0..*n).map(|j| (i * 31 + j) as u8).collect::<Vec<_>>()))
                .collect();
            let mut whole = Vec::new();
            let mut digest = StreamDigest::default();
            for c in &chunks {
                whole.extend_from_slice(c);
                digest.update(c.clone()).await.unwrap();
            }
            let threaded = matches!(digest, StreamDigest::Thread { .. });
            assert_eq!(
                threaded,
                sizes.first().is_some_and(|n| *n >= big),
                "{sizes:?}"
            );
            assert_eq!(
                digest.finish().await.unwrap(),
                FileDigest::blake3_of(&whole),
                "{sizes:?}"
            );
        }
    }

    #[test]
    fn validates_names_and_types() {
        assert_eq!(
            meta("a.txt", "").validate().unwrap().content_type,
            "application/octet-stream"
        );
        assert_eq!(
            meta("a.txt", " text/plain; charset=utf-8 ")
                .validate()
                .unwrap()
                .content_type,
            "text/plain; charset=utf-8"
        );
        assert!(
            meta("../../etc/passwd \"quoted\" ünï 名前.txt", "image/png")
                .validate()
                .is_ok()
        );
        let code = |m: UploadMeta| match m.validate() {
            Err(CoreError::Invalid { code, .. }) => code,
            other => panic!("expected invalid, got {other:?}"),
        };
        assert_eq!(code(meta("", "")), "missing_name");
        assert_eq!(
            code(meta(&"x".repeat(MAX_NAME_BYTES + 1), "")),
            "name_too_long"
        );
        assert_eq!(code(meta("a\r\nSet-Cookie: x", "")), "invalid_name");
        assert_eq!(code(meta("a\0b", "")), "invalid_name");
        assert_eq!(code(meta("invoice\u{202E}fdp.exe", "")), "invalid_name");
        assert_eq!(code(meta("a\u{2066}b\u{2069}", "")), "invalid_name");
        // Right-to-left text itself is a name like any other.
        assert!(meta("مستند.pdf", "").validate().is_ok());
        assert_eq!(code(meta("a", "text/plain\r\nX: y")), "invalid_type");
        assert_eq!(code(meta("a", "notatype")), "invalid_type");
        assert_eq!(code(meta("a", "té/xt")), "invalid_type");
    }
}
