//! A wrapper store that fails, stalls or corrupts on command, for fault-injection tests. It
//! implements the same trait as what it wraps, so the code under test cannot tell.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chunkvault_types::ChunkId;
use futures::stream::{self, BoxStream, StreamExt};

use crate::{BlobError, BlobMeta, BlobStore, Result};

/// What the wrapper does to calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Pass every call through.
    #[default]
    None,
    /// Every call fails as if the backend were unreachable.
    Down,
    /// Puts fail as unreachable; reads and deletes work.
    FailPuts,
    /// Gets fail as unreachable; writes work.
    FailGets,
    /// Every call waits this long before going through.
    Stall(Duration),
    /// Gets return the blob with one byte flipped.
    CorruptReads,
    /// Puts fail as a full local disk does (`ENOSPC`); reads and deletes work.
    Full,
}

/// See [`Fault`]. Cloning shares the controls.
#[derive(Debug, Clone)]
pub struct FaultyBlobStore<S> {
    inner: S,
    fault: Arc<Mutex<Fault>>,
    /// Puts that still succeed before `FailPuts` behaviour starts; negative: no countdown.
    puts_until_failure: Arc<AtomicI64>,
    /// Run once after the next put that succeeds (see [`FaultyBlobStore::after_next_put`]).
    after_put: Arc<Mutex<Option<Hook>>>,
}

/// Work run inside a put, for tests.
pub struct Hook(futures::future::BoxFuture<'static, ()>);

impl Hook {
    pub fn new(work: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        Self(Box::pin(work))
    }
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

impl<S: BlobStore> FaultyBlobStore<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            fault: Arc::default(),
            puts_until_failure: Arc::new(AtomicI64::new(-1)),
            after_put: Arc::default(),
        }
    }

    /// Runs `hook` once, right after the next put that succeeds and before that put returns:
    /// something (GC, say) that happens between a blob's write and what its writer does next.
    pub fn after_next_put(&self, hook: Hook) {
        *self.after_put.lock().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = fault;
    }

    /// Lets `n` more puts through, then fails every later put as unreachable (until
    /// [`FaultyBlobStore::clear_countdown`]). Only puts count.
    pub fn fail_puts_after(&self, n: u64) {
        self.puts_until_failure
            .store(i64::try_from(n).unwrap_or(i64::MAX), Ordering::SeqCst);
    }

    /// Stops the countdown of [`FaultyBlobStore::fail_puts_after`]: puts succeed again.
    pub fn clear_countdown(&self) {
        self.puts_until_failure.store(-1, Ordering::SeqCst);
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn current(&self) -> Fault {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn before(&self, op: Op) -> Result<()> {
        match self.current() {
            Fault::Down => return Err(down()),
            Fault::FailPuts if op == Op::Put => return Err(down()),
            Fault::Full if op == Op::Put => return Err(full()),
            Fault::FailGets if op == Op::Read => return Err(down()),
            Fault::Stall(d) => tokio::time::sleep(d).await,
            _ => {}
        }
        if op == Op::Put {
            // Atomically take one put from the countdown; at zero every put fails.
            let taken =
                self.puts_until_failure
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                        (left > 0).then(|| left - 1).or((left < 0).then_some(left))
                    });
            if taken.is_err() {
                return Err(down());
            }
        }
        Ok(())
    }
}

/// What a call does, for deciding which faults apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Read,
    /// Deletes and sweeps: only `Down` and `Stall` affect them.
    Remove,
    Check,
}

fn down() -> BlobError {
    BlobError::Unavailable {
        source: "injected fault: blob store down".into(),
    }
}

/// What the local store's put returns on a full disk: the `io::Error` is a source, not text.
fn full() -> BlobError {
    BlobError::Other {
        source: Box::new(std::io::Error::from(std::io::ErrorKind::StorageFull)),
    }
}

#[async_trait]
impl<S: BlobStore> BlobStore for FaultyBlobStore<S> {
    async fn put(&self, id: &ChunkId, data: Bytes) -> Result<()> {
        self.before(Op::Put).await?;
        self.inner.put(id, data).await?;
        let hook = self
            .after_put
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(Hook(work)) = hook {
            work.await;
        }
        Ok(())
    }

    async fn get(&self, id: &ChunkId) -> Result<Bytes> {
        self.before(Op::Read).await?;
        let data = self.inner.get(id).await?;
        if self.current() == Fault::CorruptReads && !data.is_empty() {
            let mut v = data.to_vec();
            let at = v.len() / 2;
            v[at] ^= 0x01;
            return Ok(Bytes::from(v));
        }
        Ok(data)
    }

    async fn head(&self, id: &ChunkId) -> Result<Option<BlobMeta>> {
        self.before(Op::Read).await?;
        self.inner.head(id).await
    }

    async fn delete(&self, id: &ChunkId) -> Result<()> {
        self.before(Op::Remove).await?;
        self.inner.delete(id).await
    }

    fn list(&self) -> BoxStream<'_, Result<BlobMeta>> {
        if self.current() == Fault::Down {
            return stream::once(async { Err(down()) }).boxed();
        }
        self.inner.list()
    }

    async fn check(&self) -> Result<()> {
        self.before(Op::Check).await?;
        self.inner.check().await
    }

    async fn sweep_incomplete(&self, older_than: time::OffsetDateTime) -> Result<u64> {
        self.before(Op::Remove).await?;
        self.inner.sweep_incomplete(older_than).await
    }

    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }

    fn records_copies(&self) -> bool {
        self.inner.records_copies()
    }
}
