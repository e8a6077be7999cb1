//! [`ObjectStoreBlobs`]: the [`BlobStore`] over any `object_store` backend.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chunkvault_types::{ChunkHasher, ChunkId};
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use time::OffsetDateTime;

use crate::pool::ChunkBuf;
use crate::{BlobError, BlobMeta, BlobStore, CHUNK_PREFIX, Result, chunk_key, parse_chunk_key};

/// Written at the root of every store chunkvault creates or opens. Its absence on a read that
/// found no chunk tells a wiped or missing container from one missing chunk.
const MARKER: &str = "chunkvault-store";
const MARKER_CONTENT: &[u8] = b"chunkvault blob store, layout 2: chunks/ab/<blake3 hex>\n";

/// Timeouts and retries of the network backends (Azure, S3, GCS). Transient failures are
/// retried with exponential backoff by object_store's client; what still fails after that
/// surfaces as [`BlobError::Unavailable`].
#[derive(Debug, Clone)]
pub struct RetryOptions {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_retries: usize,
    /// Upper bound on the time spent retrying one call.
    pub retry_timeout: Duration,
}

impl Default for RetryOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            max_retries: 4,
            retry_timeout: Duration::from_secs(30),
        }
    }
}

#[cfg_attr(
    not(any(feature = "azure", feature = "aws", feature = "gcp")),
    allow(dead_code)
)]
impl RetryOptions {
    pub(crate) fn client_options(&self) -> object_store::ClientOptions {
        object_store::ClientOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_timeout(self.request_timeout)
            .with_pool_idle_timeout(Duration::from_secs(30))
    }

    pub(crate) fn retry_config(&self) -> object_store::RetryConfig {
        object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: self.max_retries,
            retry_timeout: self.retry_timeout,
        }
    }
}

/// Which backend a store uses, parsed from `CHUNKVAULT_BLOB_URL`-style URLs plus settings
/// that a URL does not carry (credentials come from the configuration, never the URL).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum BlobConfig {
    /// A local directory (`file:///path`). `fsync` makes every put durable before it returns.
    Local {
        root: std::path::PathBuf,
        fsync: bool,
    },
    /// In memory (`memory://`): for tests and throwaway runs; lost at exit.
    Memory,
    /// Azure Blob Storage (`az://container`).
    #[cfg(feature = "azure")]
    Azure(crate::AzureConfig),
    /// Amazon S3 or compatible (`s3://bucket`), credentials and region from the standard AWS_*
    /// environment variables.
    #[cfg(feature = "aws")]
    S3 { bucket: String },
    /// Google Cloud Storage (`gs://bucket`), credentials from the standard GOOGLE_* variables.
    #[cfg(feature = "gcp")]
    Gcs { bucket: String },
}

/// The adapter: chunk operations mapped onto object_store calls under [`CHUNK_PREFIX`].
#[derive(Debug, Clone)]
pub struct ObjectStoreBlobs {
    store: Arc<dyn ObjectStore>,
    describe: String,
    /// The directory of a local store: object_store stages each write in `<key>#<n>` and renames
    /// it; a crash between the two leaves the staging file, which only we can sweep.
    local_root: Option<std::path::PathBuf>,
    /// A local store that syncs every write: small writes then stay on blocking threads too.
    local_fsync: bool,
}

impl ObjectStoreBlobs {
    /// Wraps an already-built object store, without touching it.
    pub fn new(store: Arc<dyn ObjectStore>, describe: impl Into<String>) -> Self {
        Self {
            store,
            describe: describe.into(),
            local_root: None,
            local_fsync: false,
        }
    }

    /// An empty in-memory store.
    pub fn memory() -> Self {
        Self::new(Arc::new(object_store::memory::InMemory::new()), "memory")
    }

    /// A store in a local directory, which is created when missing.
    pub fn local(root: &std::path::Path, fsync: bool) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|e| BlobError::Config {
            message: format!("cannot create blob directory {}: {e}", root.display()),
        })?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(root)
            .map_err(|e| BlobError::Config {
                message: format!("cannot open blob directory {}: {e}", root.display()),
            })?
            .with_fsync(fsync)
            .with_automatic_cleanup(false);
        let mut store = Self::new(Arc::new(fs), format!("local directory {}", root.display()));
        store.local_root = Some(root.to_path_buf());
        store.local_fsync = fsync;
        Ok(store)
    }

    /// Builds the store `config` names and prepares it for use: creates the container when the
    /// backend needs that, writes the layout marker, and checks that it answers. Fails with a
    /// clear error on wrong credentials or an unreachable service.
    pub async fn open(config: &BlobConfig, retry: &RetryOptions) -> Result<Self> {
        let _ = retry;
        let store = match config {
            BlobConfig::Local { root, fsync } => Self::local(root, *fsync)?,
            BlobConfig::Memory => Self::memory(),
            #[cfg(feature = "azure")]
            BlobConfig::Azure(az) => az.build(retry).await?,
            #[cfg(feature = "aws")]
            BlobConfig::S3 { bucket } => {
                let s3 = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_client_options(retry.client_options())
                    .with_retry(retry.retry_config())
                    .build()
                    .map_err(|e| BlobError::Config {
                        message: e.to_string(),
                    })?;
                Self::new(Arc::new(s3), format!("s3 bucket {bucket}"))
            }
            #[cfg(feature = "gcp")]
            BlobConfig::Gcs { bucket } => {
                let gcs = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_client_options(retry.client_options())
                    .with_retry(retry.retry_config())
                    .build()
                    .map_err(|e| BlobError::Config {
                        message: e.to_string(),
                    })?;
                Self::new(Arc::new(gcs), format!("gcs bucket {bucket}"))
            }
        };
        store.ensure_marker().await?;
        Ok(store)
    }

    /// Builds the store `config` names without sending a request: no container is created,
    /// no marker written. For a replicated deployment whose location does not answer at
    /// start-up; [`ObjectStoreBlobs::open`] is the normal way in.
    pub fn connect(config: &BlobConfig, retry: &RetryOptions) -> Result<Self> {
        let _ = retry;
        match config {
            BlobConfig::Local { root, fsync } => Self::local(root, *fsync),
            BlobConfig::Memory => Ok(Self::memory()),
            #[cfg(feature = "azure")]
            BlobConfig::Azure(az) => az.client(retry),
            #[cfg(feature = "aws")]
            BlobConfig::S3 { bucket } => {
                let s3 = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_client_options(retry.client_options())
                    .with_retry(retry.retry_config())
                    .build()
                    .map_err(|e| BlobError::Config {
                        message: e.to_string(),
                    })?;
                Ok(Self::new(Arc::new(s3), format!("s3 bucket {bucket}")))
            }
            #[cfg(feature = "gcp")]
            BlobConfig::Gcs { bucket } => {
                let gcs = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_client_options(retry.client_options())
                    .with_retry(retry.retry_config())
                    .build()
                    .map_err(|e| BlobError::Config {
                        message: e.to_string(),
                    })?;
                Ok(Self::new(Arc::new(gcs), format!("gcs bucket {bucket}")))
            }
        }
    }

    /// Writes the layout marker unless it is there. Called once when a store is opened.
    pub async fn ensure_marker(&self) -> Result<()> {
        let marker = Path::from(MARKER);
        match self.store.head(&marker).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => self
                .store
                .put(&marker, PutPayload::from_static(MARKER_CONTENT))
                .await
                .map(|_| ())
                .map_err(|e| self.classify(e, MARKER)),
            Err(e) => Err(self.classify(e, MARKER)),
        }
    }

    /// The underlying object store, for tools that need raw access (benchmarks, tests).
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    fn classify(&self, e: object_store::Error, key: &str) -> BlobError {
        BlobError::from_object_store(e, key)
    }

    /// A chunk read found nothing: tell a missing chunk from a missing container.
    async fn not_found(&self, key: String) -> BlobError {
        match self.store.head(&Path::from(MARKER)).await {
            Ok(_) => BlobError::NotFound { key },
            Err(object_store::Error::NotFound { .. }) => BlobError::ContainerMissing {
                name: self.describe.clone(),
            },
            Err(e) => self.classify(e, MARKER),
        }
    }
}

/// What a failed chunk write means. A put overwrites, so the store answering that the blob
/// exists (HTTP 409) is not about the blob: it is the store refusing writes (a lease, a full
/// account, Azurite at its memory limit). Like an unreachable store, that is the backend's
/// condition, not a bug: clients get a 503 and the log carries the store's own message.
fn put_error(e: object_store::Error, key: &str, describe: &str) -> BlobError {
    match e {
        object_store::Error::NotFound { .. } => BlobError::ContainerMissing {
            name: describe.to_string(),
        },
        e @ object_store::Error::AlreadyExists { .. } => BlobError::Unavailable {
            source: Box::new(e),
        },
        e => BlobError::from_object_store(e, key),
    }
}

fn to_time(t: impl Into<i64>) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(t.into() as i128)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn meta(id: ChunkId, m: &object_store::ObjectMeta) -> BlobMeta {
    BlobMeta {
        id,
        size: m.size,
        last_modified: to_time(m.last_modified.timestamp_nanos_opt().unwrap_or(0)),
    }
}

#[async_trait]
impl BlobStore for ObjectStoreBlobs {
    async fn put(&self, id: &ChunkId, data: Bytes) -> Result<()> {
        let key = chunk_key(id);
        if let Some(root) = &self.local_root
            && !self.local_fsync
            && data.len() as u64 <= INLINE_IO_MAX
        {
            let path = root.join(&key);
            return write_small_local(&path, &data)
                .map_err(|e| put_error(local_io_error("writing", &path, e), &key, &self.describe));
        }
        match self
            .store
            .put(&Path::from(key.as_str()), PutPayload::from_bytes(data))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(put_error(e, &key, &self.describe)),
        }
    }

    async fn get(&self, id: &ChunkId) -> Result<Bytes> {
        self.read(id, false).await.map(|(data, _)| data)
    }

    async fn get_checked(&self, id: &ChunkId) -> Result<(Bytes, bool)> {
        let (data, hash) = self.read(id, true).await?;
        Ok((data, hash == Some(*id)))
    }

    async fn head(&self, id: &ChunkId) -> Result<Option<BlobMeta>> {
        let key = chunk_key(id);
        if let Some(root) = &self.local_root {
            // One stat, on the calling task (see INLINE_IO_MAX); anything unusual takes the
            // object_store path below, which names it.
            match std::fs::metadata(root.join(&key)) {
                Ok(m) if m.is_file() => {
                    if let Ok(modified) = m.modified() {
                        return Ok(Some(BlobMeta {
                            id: *id,
                            size: m.len(),
                            last_modified: OffsetDateTime::from(modified),
                        }));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return match self.not_found(key).await {
                        BlobError::NotFound { .. } => Ok(None),
                        other => Err(other),
                    };
                }
                _ => {}
            }
        }
        match self.store.head(&Path::from(key.as_str())).await {
            Ok(m) => Ok(Some(meta(*id, &m))),
            Err(object_store::Error::NotFound { .. }) => match self.not_found(key).await {
                BlobError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
            Err(e) => Err(self.classify(e, &key)),
        }
    }

    async fn delete(&self, id: &ChunkId) -> Result<()> {
        let key = chunk_key(id);
        match self.store.delete(&Path::from(key.as_str())).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.classify(e, &key)),
        }
    }

    fn list(&self) -> BoxStream<'_, Result<BlobMeta>> {
        let prefix = Path::from(CHUNK_PREFIX);
        self.store
            .list(Some(&prefix))
            .filter_map(move |item| async move {
                match item {
                    Ok(m) => parse_chunk_key(m.location.as_ref()).map(|id| Ok(meta(id, &m))),
                    // A local directory with no chunk yet has no `chunks/` folder at all.
                    Err(object_store::Error::NotFound { .. }) => None,
                    Err(e) => Some(Err(BlobError::from_object_store(e, CHUNK_PREFIX))),
                }
            })
            .boxed()
    }

    async fn check(&self) -> Result<()> {
        match self.store.head(&Path::from(MARKER)).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Err(BlobError::ContainerMissing {
                name: self.describe.clone(),
            }),
            Err(e) => Err(self.classify(e, MARKER)),
        }
    }

    async fn sweep_incomplete(&self, older_than: OffsetDateTime) -> Result<u64> {
        let Some(root) = self.local_root.clone() else {
            return Ok(0);
        };
        let cutoff = std::time::SystemTime::UNIX_EPOCH
            + std::time::Duration::from_nanos(older_than.unix_timestamp_nanos().max(0) as u64);
        tokio::task::spawn_blocking(move || sweep_staging(&root.join(CHUNK_PREFIX), cutoff))
            .await
            .map_err(|e| BlobError::Other {
                source: Box::new(e),
            })?
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

fn sweep_staging(dir: &std::path::Path, cutoff: std::time::SystemTime) -> Result<u64> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => {
            return Err(BlobError::Other {
                source: Box::new(e),
            });
        }
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            removed += sweep_staging(&path, cutoff)?;
        } else if entry.file_name().to_string_lossy().contains('#')
            && meta.modified().is_ok_and(|m| m < cutoff)
            && std::fs::remove_file(&path).is_ok()
        {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Local reads and unsynced writes up to this size run on the calling task: object_store's
/// local store does every file operation on a blocking thread, and for a small chunk that
/// hand-off costs several times the work (a download of a 4 KiB file spent more time
/// switching threads than anything else). Larger ones stay on blocking threads.
const INLINE_IO_MAX: u64 = 64 << 10;

/// Writes a small chunk file on the calling task. On Linux it is written unnamed and linked in
/// ([`write_unnamed`]); otherwise, or when that cannot be done, as object_store's local store
/// does: into a new staging file `<path>#<n>` (the name [`sweep_staging`] knows), then renamed
/// over `path`. Either way a reader sees the whole old file or the whole new one, never a
/// part. The parent directories are created when missing. Only for stores without fsync.
fn write_small_local(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    if write_unnamed(path, data)? {
        return Ok(());
    }
    // A staging file can vanish before its rename: GC sweeps staging files older than its
    // grace period, and with a grace of zero that includes ours. Then write it again.
    let mut attempts = 0;
    loop {
        attempts += 1;
        match write_staged(path, data) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 3 => continue,
            done => return done,
        }
    }
}

fn write_staged(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut n = 1u32;
    let mut made_parent = false;
    let (mut file, staging) = loop {
        let mut staging = path.as_os_str().to_owned();
        staging.push(format!("#{n}"));
        let staging = std::path::PathBuf::from(staging);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staging)
        {
            Ok(f) => break (f, staging),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !made_parent => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                made_parent = true;
            }
            Err(e) => return Err(e),
        }
    };
    let written = file
        .write_all(data)
        .and_then(|()| std::fs::rename(&staging, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&staging);
    }
    written
}

/// Writes `data` into a new file with no name yet (`O_TMPFILE`) and then links it in at `path`:
/// a reader sees all of the blob or nothing, as with a staging file, but ext4 does one
/// directory insertion instead of an insertion, a rename and a removal, and a crash leaves no
/// debris. `Ok(false)` when this cannot be done here (a file system without `O_TMPFILE`, no
/// `/proc`, a missing directory) or `path` exists already without holding `data` (see
/// [`holds`]): the caller then writes through a staging file, which also replaces a damaged
/// blob as a put must.
#[cfg(target_os = "linux")]
fn write_unnamed(path: &std::path::Path, data: &[u8]) -> std::io::Result<bool> {
    use rustix::fs::{AtFlags, CWD, Mode, OFlags};
    use rustix::io::Errno;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let Some(dir) = path.parent() else {
        return Ok(false);
    };
    let fd = match rustix::fs::openat(
        CWD,
        dir,
        OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o666),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let mut file = std::fs::File::from(fd);
    file.write_all(data)?;
    let unnamed = format!("/proc/self/fd/{}", file.as_raw_fd());
    match rustix::fs::linkat(CWD, unnamed.as_str(), CWD, path, AtFlags::SYMLINK_FOLLOW) {
        Ok(()) => Ok(true),
        // The same content stored before (deduplication) or by a concurrent put: kept as it
        // is when intact, replaced when not.
        Err(Errno::EXIST) => Ok(holds(path, data)),
        Err(Errno::NOENT | Errno::PERM | Errno::ACCESS) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether the file at `path` holds exactly `data`. A put of a blob that is there intact need
/// not replace it: its name is its content's hash, and a blob is only ever replaced whole (by
/// a link or a rename), so what is read here is what later reads get. Replacing costs a
/// staging file and a rename, which ext4 follows by writing the new file out at once. Any
/// error reading it counts as "not intact": the caller then replaces it.
#[cfg(target_os = "linux")]
fn holds(path: &std::path::Path, data: &[u8]) -> bool {
    use std::io::Read;
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    if !file.metadata().is_ok_and(|m| m.len() == data.len() as u64) {
        return false;
    }
    let mut buf = [0u8; 8192];
    for expected in data.chunks(buf.len()) {
        let got = &mut buf[..expected.len()];
        if file.read_exact(got).is_err() || got != expected {
            return false;
        }
    }
    true
}

impl ObjectStoreBlobs {
    /// Reads a whole blob into a pooled buffer; with `hash`, hashes it as it reads and returns
    /// the hash too.
    async fn read(&self, id: &ChunkId, hash: bool) -> Result<(Bytes, Option<ChunkId>)> {
        let key = chunk_key(id);
        if let Some(root) = &self.local_root {
            let path = root.join(&key);
            match read_small_local(&path, hash) {
                Ok(Some(data)) => return Ok(data),
                Ok(None) => {} // large: read on a blocking thread below
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(self.not_found(key).await);
                }
                Err(e) => return Err(self.classify(local_io_error("reading", &path, e), &key)),
            }
        }
        let result = match self.store.get(&Path::from(key.as_str())).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Err(self.not_found(key).await),
            Err(e) => return Err(self.classify(e, &key)),
        };
        read_pooled(result, hash)
            .await
            .map_err(|e| self.classify(e, &key))
    }
}

/// A local chunk file read whole (and hashed, with `hash`) on the calling task when it is
/// small; `None` when it is not.
fn read_small_local(
    path: &std::path::Path,
    hash: bool,
) -> std::io::Result<Option<(Bytes, Option<ChunkId>)>> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len > INLINE_IO_MAX {
        return Ok(None);
    }
    read_exactly(file, 0, len, hash).map(Some)
}

/// `len` bytes of `file` from `start` into a pooled buffer, hashed piece by piece as they are
/// read when `hash` is set; a file that ends sooner (it shrank under us) is an error, as with
/// object_store's own reader.
fn read_exactly(
    mut file: std::fs::File,
    start: u64,
    len: u64,
    hash: bool,
) -> std::io::Result<(Bytes, Option<ChunkId>)> {
    use std::io::{Seek, SeekFrom};
    // Files reach here freshly opened, at offset 0.
    if start != 0 {
        file.seek(SeekFrom::Start(start))?;
    }
    let size = usize::try_from(len).unwrap_or(usize::MAX);
    let mut buf = ChunkBuf::with_capacity(size);
    let mut hasher = hash.then(ChunkHasher::new);
    let read = buf.read_pieces(&mut file, size, |piece| {
        if let Some(h) = hasher.as_mut() {
            h.update(piece);
        }
    })?;
    if read != size {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("expected {len} bytes, read {read}"),
        ));
    }
    Ok((buf.freeze(), hasher.map(|h| h.finish())))
}

fn local_io_error(
    what: &'static str,
    path: &std::path::Path,
    source: std::io::Error,
) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(LocalIoError {
            what,
            path: path.display().to_string(),
            source,
        }),
    }
}

/// A local file operation that failed; keeps the `io::Error` as its source, so that what it
/// means (a full disk, say) can still be told apart (`BlobError::is_storage_full`).
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub(crate) struct LocalIoError {
    what: &'static str,
    path: String,
    source: std::io::Error,
}

/// Reads a whole object into a pooled buffer (see `pool.rs`), hashed as it arrives when `hash`
/// is set: a local file straight from the file (on a blocking thread unless small), a remote
/// object from its body stream.
async fn read_pooled(
    result: object_store::GetResult,
    hash: bool,
) -> object_store::Result<(Bytes, Option<ChunkId>)> {
    let len = result.range.end - result.range.start;
    match result.payload {
        object_store::GetResultPayload::File(file, path) => {
            let start = result.range.start;
            let read = move || {
                read_exactly(file, start, len, hash)
                    .map_err(|e| local_io_error("reading", &path, e))
            };
            if len <= INLINE_IO_MAX {
                // The file is open already; a small read costs less than a thread hand-off.
                read()
            } else {
                tokio::task::spawn_blocking(read)
                    .await
                    .map_err(|e| object_store::Error::JoinError { source: e })?
            }
        }
        object_store::GetResultPayload::Stream(mut stream) => {
            let mut buf = ChunkBuf::with_capacity(usize::try_from(len).unwrap_or(usize::MAX));
            let mut hasher = hash.then(ChunkHasher::new);
            while let Some(part) = stream.next().await {
                let part = part?;
                if let Some(h) = hasher.as_mut() {
                    h.update(&part);
                }
                buf.extend_from_slice(&part);
            }
            Ok((buf.freeze(), hasher.map(|h| h.finish())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> crate::error::BoxError {
        "MemoryExtentStoreAtSizeLimit".into()
    }

    #[test]
    fn a_refused_put_is_the_store_being_unavailable() {
        let key = "chunks/ab/cd/abcd";
        let exists = object_store::Error::AlreadyExists {
            path: key.to_string(),
            source: source(),
        };
        let e = put_error(exists, key, "az://bench");
        assert!(matches!(e, BlobError::Unavailable { .. }), "{e:?}");
        assert!(e.is_unavailable());

        let missing = object_store::Error::NotFound {
            path: key.to_string(),
            source: source(),
        };
        assert!(matches!(
            put_error(missing, key, "az://bench"),
            BlobError::ContainerMissing { name } if name == "az://bench"
        ));

        // Anything else keeps the general classification: a bad request is not "unavailable".
        let other = object_store::Error::NotSupported { source: source() };
        let e = put_error(other, key, "az://bench");
        assert!(matches!(e, BlobError::Other { .. }), "{e:?}");
        assert!(!e.is_unavailable());
        assert!(!e.is_storage_full());
    }

    /// A real `ENOSPC` (writing to /dev/full), reported as the local store's own writes report
    /// errors, is told apart from other I/O failures.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_disk_is_storage_full() {
        use std::io::Write;
        let path = std::path::Path::new("/dev/full");
        let written = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| f.write_all(b"x").and_then(|()| f.flush()));
        let enospc = written.expect_err("/dev/full refuses writes");
        let e = put_error(local_io_error("writing", path, enospc), "k", "local");
        assert!(e.is_storage_full(), "{e:?}");
        assert!(!e.is_unavailable());

        let missing = std::fs::File::open("/nonexistent/chunkvault").expect_err("no such file");
        let e = put_error(local_io_error("writing", path, missing), "k", "local");
        assert!(!e.is_storage_full(), "{e:?}");
    }

    /// A local failure is not "unavailable" because of words in its path.
    #[test]
    fn a_local_error_is_not_classified_by_its_path() {
        let path = std::path::Path::new("/srv/connection-retry-dns/blobs/ab/cd");
        let bad = std::io::Error::from(std::io::ErrorKind::InvalidData);
        let e = BlobError::from_object_store(local_io_error("reading", path, bad), "k");
        assert!(matches!(e, BlobError::Other { .. }), "{e:?}");
        assert!(!e.is_unavailable());
        // A remote store's generic failure is still sorted by its text.
        let remote = object_store::Error::Generic {
            store: "MicrosoftAzure",
            source: "Error after 10 retries: connection refused".into(),
        };
        assert!(BlobError::from_object_store(remote, "k").is_unavailable());
    }
}
