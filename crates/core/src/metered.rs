//! Wrappers that time every call to the blob store and the metadata store and count their
//! errors, by operation. They implement the same traits as what they wrap (like the fault
//! wrapper), so [`crate::Vault::new`] puts them around whatever it is given and every front end
//! (server, `chunkvault gc`, tests) reports the same metrics. Labels are the operation name and
//! a coarse error kind: bounded, never an id.
//!
//! Metrics (through the `metrics` facade; a no-op until a recorder is installed):
//! - `chunkvault_blob_store_call_duration_seconds{op}` and
//!   `chunkvault_metadata_store_call_duration_seconds{op}`: histograms, every call, whatever
//!   its outcome;
//! - `chunkvault_blob_store_call_errors_total{op,kind}` and
//!   `chunkvault_metadata_store_call_errors_total{op,kind}`: failed calls.
//!
//! `list` streams for as long as GC walks the store, so only its errors are counted.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chunkvault_blob::{BlobError, BlobMeta, BlobStore};
use chunkvault_meta::{
    Account, AccountId, ApiKeyRecord, ChunkCopy, ChunkRecord, ChunkState, CommitFile, FileRecord,
    FileStart, LinkSecret, MetaError, MetaStore, NewUpload, PendingChunk, SchemaStatus,
    UploadRecord,
};
use chunkvault_types::{ChunkEntry, ChunkId, FileId};
use futures::StreamExt;
use futures::stream::BoxStream;
use time::OffsetDateTime;

const BLOB_DURATION: &str = "chunkvault_blob_store_call_duration_seconds";
const BLOB_ERRORS: &str = "chunkvault_blob_store_call_errors_total";
const META_DURATION: &str = "chunkvault_metadata_store_call_duration_seconds";
const META_ERRORS: &str = "chunkvault_metadata_store_call_errors_total";

/// Runs `call`, records its duration under `duration{op}` and, when it fails, one error under
/// `errors{op,kind}`.
async fn timed<T, E>(
    duration: &'static str,
    errors: &'static str,
    op: &'static str,
    kind: fn(&E) -> &'static str,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let start = Instant::now();
    let result = call.await;
    metrics::histogram!(duration, "op" => op).record(start.elapsed().as_secs_f64());
    if let Err(e) = &result {
        metrics::counter!(errors, "op" => op, "kind" => kind(e)).increment(1);
    }
    result
}

fn blob_kind(e: &BlobError) -> &'static str {
    match e {
        BlobError::NotFound { .. } => "not_found",
        BlobError::ContainerMissing { .. } => "container_missing",
        BlobError::Denied { .. } => "denied",
        BlobError::Unavailable { .. } => "unavailable",
        BlobError::Config { .. } => "config",
        _ => "other",
    }
}

fn meta_kind(e: &MetaError) -> &'static str {
    match e {
        MetaError::NotFound => "not_found",
        MetaError::NotOpen { .. } => "not_open",
        MetaError::InvalidManifest { .. } => "invalid_manifest",
        MetaError::ChunkBusy { .. } => "chunk_busy",
        MetaError::Unavailable { .. } => "unavailable",
        MetaError::Schema { .. } => "schema",
        MetaError::QuotaExceeded { .. } => "quota_exceeded",
        MetaError::AlreadyExists { .. } => "already_exists",
        _ => "other",
    }
}

/// A [`BlobStore`] that meters another.
#[derive(Debug, Clone)]
pub struct MeteredBlobs {
    inner: Arc<dyn BlobStore>,
}

impl MeteredBlobs {
    pub fn new(inner: Arc<dyn BlobStore>) -> Self {
        Self { inner }
    }
}

macro_rules! blob_call {
    ($op:literal, $call:expr) => {
        timed(BLOB_DURATION, BLOB_ERRORS, $op, blob_kind, $call).await
    };
}

#[async_trait]
impl BlobStore for MeteredBlobs {
    async fn put(&self, id: &ChunkId, data: Bytes) -> chunkvault_blob::Result<()> {
        blob_call!("put", self.inner.put(id, data))
    }

    async fn get(&self, id: &ChunkId) -> chunkvault_blob::Result<Bytes> {
        blob_call!("get", self.inner.get(id))
    }

    async fn get_checked(&self, id: &ChunkId) -> chunkvault_blob::Result<(Bytes, bool)> {
        // Timed as a `get`: the same read, with the hash the store computed as it read.
        blob_call!("get", self.inner.get_checked(id))
    }

    async fn head(&self, id: &ChunkId) -> chunkvault_blob::Result<Option<BlobMeta>> {
        blob_call!("head", self.inner.head(id))
    }

    async fn delete(&self, id: &ChunkId) -> chunkvault_blob::Result<()> {
        blob_call!("delete", self.inner.delete(id))
    }

    fn list(&self) -> BoxStream<'_, chunkvault_blob::Result<BlobMeta>> {
        self.inner
            .list()
            .inspect(|item| {
                if let Err(e) = item {
                    metrics::counter!(BLOB_ERRORS, "op" => "list", "kind" => blob_kind(e))
                        .increment(1);
                }
            })
            .boxed()
    }

    async fn check(&self) -> chunkvault_blob::Result<()> {
        blob_call!("check", self.inner.check())
    }

    async fn sweep_incomplete(&self, older_than: OffsetDateTime) -> chunkvault_blob::Result<u64> {
        blob_call!("sweep_incomplete", self.inner.sweep_incomplete(older_than))
    }

    fn describe(&self) -> String {
        // Metering changes nothing an operator needs to know about the store.
        self.inner.describe()
    }

    fn records_copies(&self) -> bool {
        self.inner.records_copies()
    }
}

/// A [`MetaStore`] that meters another.
#[derive(Debug, Clone)]
pub struct MeteredMeta {
    inner: Arc<dyn MetaStore>,
}

impl MeteredMeta {
    pub fn new(inner: Arc<dyn MetaStore>) -> Self {
        Self { inner }
    }
}

macro_rules! meta_call {
    ($op:literal, $call:expr) => {
        timed(META_DURATION, META_ERRORS, $op, meta_kind, $call).await
    };
}

type MetaResult<T> = chunkvault_meta::Result<T>;

#[async_trait]
impl MetaStore for MeteredMeta {
    async fn create_upload(&self, upload: &NewUpload) -> MetaResult<()> {
        meta_call!("create_upload", self.inner.create_upload(upload))
    }

    async fn add_chunks(
        &self,
        upload: FileId,
        chunks: &[PendingChunk],
    ) -> MetaResult<Vec<ChunkState>> {
        meta_call!("add_chunks", self.inner.add_chunks(upload, chunks))
    }

    async fn create_upload_with_chunks(
        &self,
        upload: &NewUpload,
        chunks: &[PendingChunk],
    ) -> MetaResult<Vec<ChunkState>> {
        meta_call!(
            "create_upload_with_chunks",
            self.inner.create_upload_with_chunks(upload, chunks)
        )
    }

    async fn commit_upload(&self, upload: FileId, commit: &CommitFile) -> MetaResult<FileRecord> {
        meta_call!("commit_upload", self.inner.commit_upload(upload, commit))
    }

    async fn create_file(
        &self,
        upload: &NewUpload,
        chunks: &[PendingChunk],
        commit: &CommitFile,
    ) -> MetaResult<(FileRecord, Vec<ChunkState>)> {
        meta_call!(
            "create_file",
            self.inner.create_file(upload, chunks, commit)
        )
    }

    async fn create_inline_file(
        &self,
        upload: &NewUpload,
        commit: &CommitFile,
        data: bytes::Bytes,
    ) -> MetaResult<FileRecord> {
        meta_call!(
            "create_inline_file",
            self.inner.create_inline_file(upload, commit, data)
        )
    }

    async fn inline_data(&self, id: FileId) -> MetaResult<Option<bytes::Bytes>> {
        meta_call!("inline_data", self.inner.inline_data(id))
    }

    async fn abort_upload(&self, upload: FileId) -> MetaResult<()> {
        meta_call!("abort_upload", self.inner.abort_upload(upload))
    }

    async fn upload(&self, id: FileId) -> MetaResult<Option<UploadRecord>> {
        meta_call!("upload", self.inner.upload(id))
    }

    async fn file(&self, id: FileId) -> MetaResult<Option<FileRecord>> {
        meta_call!("file", self.inner.file(id))
    }

    async fn manifest(
        &self,
        id: FileId,
        from_index: u64,
        limit: u32,
    ) -> MetaResult<Vec<ChunkEntry>> {
        meta_call!("manifest", self.inner.manifest(id, from_index, limit))
    }

    async fn upload_chunks(
        &self,
        id: FileId,
        from_index: u64,
        limit: u32,
    ) -> MetaResult<Vec<ChunkEntry>> {
        meta_call!(
            "upload_chunks",
            self.inner.upload_chunks(id, from_index, limit)
        )
    }

    async fn file_with_manifest(&self, id: FileId, limit: u32) -> MetaResult<Option<FileStart>> {
        meta_call!(
            "file_with_manifest",
            self.inner.file_with_manifest(id, limit)
        )
    }

    async fn list_files(
        &self,
        owner: Option<AccountId>,
        before: Option<FileId>,
        limit: u32,
    ) -> MetaResult<Vec<FileRecord>> {
        meta_call!("list_files", self.inner.list_files(owner, before, limit))
    }

    async fn delete_file(&self, id: FileId) -> MetaResult<bool> {
        meta_call!("delete_file", self.inner.delete_file(id))
    }

    async fn expire_uploads(&self, now: OffsetDateTime) -> MetaResult<Vec<FileId>> {
        meta_call!("expire_uploads", self.inner.expire_uploads(now))
    }

    async fn gc_claim_unreferenced(
        &self,
        touched_before: OffsetDateTime,
        limit: u32,
    ) -> MetaResult<Vec<ChunkId>> {
        meta_call!(
            "gc_claim_unreferenced",
            self.inner.gc_claim_unreferenced(touched_before, limit)
        )
    }

    async fn gc_claim_orphans(
        &self,
        ids: &[ChunkId],
        now: OffsetDateTime,
    ) -> MetaResult<Vec<ChunkId>> {
        meta_call!("gc_claim_orphans", self.inner.gc_claim_orphans(ids, now))
    }

    async fn gc_claim_chunks(&self, ids: &[ChunkId]) -> MetaResult<Vec<ChunkId>> {
        meta_call!("gc_claim_chunks", self.inner.gc_claim_chunks(ids))
    }

    async fn gc_unclaim(&self, ids: &[ChunkId], now: OffsetDateTime) -> MetaResult<()> {
        meta_call!("gc_unclaim", self.inner.gc_unclaim(ids, now))
    }

    async fn chunk_lost(&self, id: &ChunkId, now: OffsetDateTime) -> MetaResult<()> {
        meta_call!("chunk_lost", self.inner.chunk_lost(id, now))
    }

    async fn gc_forget(&self, ids: &[ChunkId]) -> MetaResult<()> {
        meta_call!("gc_forget", self.inner.gc_forget(ids))
    }

    async fn chunks(&self, after: Option<ChunkId>, limit: u32) -> MetaResult<Vec<ChunkRecord>> {
        meta_call!("chunks", self.inner.chunks(after, limit))
    }

    async fn files_with_chunk(&self, id: &ChunkId, limit: u32) -> MetaResult<Vec<FileId>> {
        meta_call!("files_with_chunk", self.inner.files_with_chunk(id, limit))
    }

    async fn record_copies(&self, copies: &[ChunkCopy]) -> MetaResult<()> {
        meta_call!("record_copies", self.inner.record_copies(copies))
    }

    async fn chunk_copies(&self, id: &ChunkId) -> MetaResult<Vec<ChunkCopy>> {
        meta_call!("chunk_copies", self.inner.chunk_copies(id))
    }

    async fn forget_copies(&self, location: &str, ids: &[ChunkId]) -> MetaResult<()> {
        meta_call!("forget_copies", self.inner.forget_copies(location, ids))
    }

    async fn chunks_with_bad_copies(
        &self,
        after: Option<ChunkId>,
        limit: u32,
    ) -> MetaResult<Vec<ChunkId>> {
        meta_call!(
            "chunks_with_bad_copies",
            self.inner.chunks_with_bad_copies(after, limit)
        )
    }

    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> MetaResult<bool> {
        meta_call!("try_lease", self.inner.try_lease(name, holder, ttl, now))
    }

    async fn release_lease(&self, name: &str, holder: &str) -> MetaResult<()> {
        meta_call!("release_lease", self.inner.release_lease(name, holder))
    }

    async fn chunks_held_by(
        &self,
        owner: AccountId,
        hashes: &[ChunkId],
    ) -> MetaResult<Vec<ChunkId>> {
        meta_call!("chunks_held_by", self.inner.chunks_held_by(owner, hashes))
    }

    async fn create_account(&self, account: &Account) -> MetaResult<()> {
        meta_call!("create_account", self.inner.create_account(account))
    }

    async fn account(&self, id: AccountId) -> MetaResult<Option<Account>> {
        meta_call!("account", self.inner.account(id))
    }

    async fn account_by_name(&self, name: &str) -> MetaResult<Option<Account>> {
        meta_call!("account_by_name", self.inner.account_by_name(name))
    }

    async fn list_accounts(&self) -> MetaResult<Vec<Account>> {
        meta_call!("list_accounts", self.inner.list_accounts())
    }

    async fn set_quota(&self, id: AccountId, quota_bytes: Option<u64>) -> MetaResult<bool> {
        meta_call!("set_quota", self.inner.set_quota(id, quota_bytes))
    }

    async fn set_account_disabled(&self, id: AccountId, disabled: bool) -> MetaResult<bool> {
        meta_call!(
            "set_account_disabled",
            self.inner.set_account_disabled(id, disabled)
        )
    }

    async fn create_api_key(&self, key: &ApiKeyRecord) -> MetaResult<()> {
        meta_call!("create_api_key", self.inner.create_api_key(key))
    }

    async fn api_key(&self, id: &str) -> MetaResult<Option<ApiKeyRecord>> {
        meta_call!("api_key", self.inner.api_key(id))
    }

    async fn api_key_with_account(
        &self,
        id: &str,
    ) -> MetaResult<Option<(ApiKeyRecord, Option<Account>)>> {
        meta_call!("api_key_with_account", self.inner.api_key_with_account(id))
    }

    async fn list_api_keys(&self, account: Option<AccountId>) -> MetaResult<Vec<ApiKeyRecord>> {
        meta_call!("list_api_keys", self.inner.list_api_keys(account))
    }

    async fn revoke_api_key(&self, id: &str, at: OffsetDateTime) -> MetaResult<bool> {
        meta_call!("revoke_api_key", self.inner.revoke_api_key(id, at))
    }

    async fn set_api_key_expiry(&self, id: &str, at: Option<OffsetDateTime>) -> MetaResult<bool> {
        meta_call!("set_api_key_expiry", self.inner.set_api_key_expiry(id, at))
    }

    async fn touch_api_key(&self, id: &str, at: OffsetDateTime) -> MetaResult<()> {
        meta_call!("touch_api_key", self.inner.touch_api_key(id, at))
    }

    async fn link_secret(&self, fresh: &[u8], now: OffsetDateTime) -> MetaResult<LinkSecret> {
        meta_call!("link_secret", self.inner.link_secret(fresh, now))
    }

    async fn rotate_link_secret(
        &self,
        fresh: &[u8],
        now: OffsetDateTime,
    ) -> MetaResult<LinkSecret> {
        meta_call!(
            "rotate_link_secret",
            self.inner.rotate_link_secret(fresh, now)
        )
    }

    async fn check(&self) -> MetaResult<()> {
        meta_call!("check", self.inner.check())
    }

    async fn schema_status(&self) -> MetaResult<SchemaStatus> {
        meta_call!("schema_status", self.inner.schema_status())
    }

    async fn migrate(&self) -> MetaResult<()> {
        meta_call!("migrate", self.inner.migrate())
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that answers `get_checked` itself, differently from what hashing its `get`
    /// would say, so a wrapper that did not forward the call would be caught.
    #[derive(Debug)]
    struct SaysDamaged;

    #[async_trait]
    impl BlobStore for SaysDamaged {
        async fn put(&self, _: &ChunkId, _: Bytes) -> chunkvault_blob::Result<()> {
            Ok(())
        }
        async fn get(&self, _: &ChunkId) -> chunkvault_blob::Result<Bytes> {
            Ok(Bytes::from_static(b"x"))
        }
        async fn get_checked(&self, _: &ChunkId) -> chunkvault_blob::Result<(Bytes, bool)> {
            Ok((Bytes::from_static(b"x"), false))
        }
        async fn head(&self, _: &ChunkId) -> chunkvault_blob::Result<Option<BlobMeta>> {
            Ok(None)
        }
        async fn delete(&self, _: &ChunkId) -> chunkvault_blob::Result<()> {
            Ok(())
        }
        fn list(&self) -> futures::stream::BoxStream<'_, chunkvault_blob::Result<BlobMeta>> {
            futures::stream::empty().boxed()
        }
        async fn check(&self) -> chunkvault_blob::Result<()> {
            Ok(())
        }
        fn describe(&self) -> String {
            "says damaged".into()
        }
    }

    #[tokio::test]
    async fn metering_forwards_checked_reads_to_the_store() {
        let metered = MeteredBlobs::new(Arc::new(SaysDamaged));
        let id = ChunkId::of(b"x");
        assert!(id.matches(&metered.get(&id).await.unwrap()));
        let (data, ok) = metered.get_checked(&id).await.unwrap();
        assert_eq!(&data[..], b"x");
        assert!(!ok, "the store's own answer, not a second hash of `get`");
    }
}
