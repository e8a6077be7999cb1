//! The blob conformance suite against the local directory and memory backends, and against
//! Azurite when the test environment provides one (scripts/test always does).

use chunkvault_blob::{
    BlobConfig, BlobError, BlobStore, Fault, FaultyBlobStore, ObjectStoreBlobs, RetryOptions,
    conformance,
};
use chunkvault_types::ChunkId;

/// A local-directory store opened as the server opens it (`ObjectStoreBlobs::open`).
async fn open_local(root: std::path::PathBuf, fsync: bool) -> ObjectStoreBlobs {
    ObjectStoreBlobs::open(&BlobConfig::Local { root, fsync }, &RetryOptions::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn local_directory_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_local(dir.path().join("blobs"), false).await;
    conformance::run_all(&store).await;
}

#[tokio::test]
async fn local_directory_with_fsync_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_local(dir.path().to_path_buf(), true).await;
    conformance::run_all(&store).await;
}

#[tokio::test]
async fn memory_conforms() {
    let store = ObjectStoreBlobs::open(&BlobConfig::Memory, &RetryOptions::default())
        .await
        .unwrap();
    conformance::run_all(&store).await;
}

#[tokio::test]
async fn wiped_directory_is_container_missing_not_chunk_missing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("blobs");
    let store = open_local(root.clone(), false).await;
    let id = ChunkId::of(b"x");
    store
        .put(&id, bytes::Bytes::from_static(b"x"))
        .await
        .unwrap();
    std::fs::remove_dir_all(&root).unwrap();
    assert!(matches!(
        store.get(&id).await,
        Err(BlobError::ContainerMissing { .. })
    ));
    assert!(matches!(
        store.check().await,
        Err(BlobError::ContainerMissing { .. })
    ));
}

#[tokio::test]
async fn faulty_wrapper_conforms_when_healthy_and_fails_on_command() {
    let store = FaultyBlobStore::new(ObjectStoreBlobs::memory());
    store.inner().ensure_marker().await.unwrap();
    conformance::run_all(&store).await;
    let id = ChunkId::of(b"y");
    store.set(Fault::FailPuts);
    assert!(
        store
            .put(&id, bytes::Bytes::from_static(b"y"))
            .await
            .unwrap_err()
            .is_unavailable()
    );
    store.set(Fault::None);
    store
        .put(&id, bytes::Bytes::from_static(b"y"))
        .await
        .unwrap();
    store.set(Fault::CorruptReads);
    assert!(!id.matches(&store.get(&id).await.unwrap()));
    store.set(Fault::None);
    store.fail_puts_after(1);
    store
        .put(&id, bytes::Bytes::from_static(b"y"))
        .await
        .unwrap();
    assert!(
        store
            .put(&id, bytes::Bytes::from_static(b"y"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn local_sweep_removes_only_old_staging_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("blobs");
    let store = open_local(root.clone(), false).await;
    let id = ChunkId::of(b"kept");
    store
        .put(&id, bytes::Bytes::from_static(b"kept"))
        .await
        .unwrap();
    let key = chunkvault_blob::chunk_key(&id);
    let staging = root.join(format!("{key}#7"));
    std::fs::write(&staging, b"half a chunk").unwrap();
    let now = time::OffsetDateTime::now_utc();
    assert_eq!(
        store
            .sweep_incomplete(now - std::time::Duration::from_secs(60))
            .await
            .unwrap(),
        0,
        "young debris stays"
    );
    assert_eq!(
        store
            .sweep_incomplete(now + std::time::Duration::from_secs(1))
            .await
            .unwrap(),
        1
    );
    assert!(!staging.exists());
    assert_eq!(
        store.get(&id).await.unwrap().as_ref(),
        b"kept",
        "chunks are never swept"
    );
    let mem = ObjectStoreBlobs::memory();
    assert_eq!(mem.sweep_incomplete(now).await.unwrap(), 0);
}

/// A put of a small blob that is there intact keeps the stored file (no staging file and
/// rename for deduplicated content); one whose stored bytes differ, or are cut short, is
/// replaced whole.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn local_put_keeps_an_intact_blob_and_replaces_a_damaged_one() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("blobs");
    let store = open_local(root.clone(), false).await;
    // Larger than the 8 KiB comparison buffer, not a multiple of it.
    let data = bytes::Bytes::from((0..20_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    let id = ChunkId::of(&data);
    let path = root.join(chunkvault_blob::chunk_key(&id));
    store.put(&id, data.clone()).await.unwrap();
    let first = std::fs::metadata(&path).unwrap().ino();

    store.put(&id, data.clone()).await.unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().ino(),
        first,
        "an intact blob is kept"
    );

    let mut damaged = data.to_vec();
    damaged[15_000] ^= 1;
    std::fs::write(&path, &damaged).unwrap();
    store.put(&id, data.clone()).await.unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        data,
        "a damaged blob is replaced"
    );

    std::fs::write(&path, &data[..10]).unwrap();
    store.put(&id, data.clone()).await.unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        data,
        "a short blob is replaced"
    );
    assert_eq!(store.get(&id).await.unwrap(), data);
}
