//! The conformance suite every [`BlobStore`] must pass. Backend tests call [`run_all`] on a
//! fresh, empty store (its own directory, container or bucket).

use std::collections::HashSet;

use bytes::Bytes;
use chunkvault_types::ChunkId;
use futures::{StreamExt, TryStreamExt};

use crate::{BlobError, BlobStore};

fn blob(seed: u8, len: usize) -> (ChunkId, Bytes) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    (ChunkId::of(&data), Bytes::from(data))
}

/// Runs every check in turn against an empty store.
pub async fn run_all(store: &dyn BlobStore) {
    empty_store(store).await;
    put_then_get(store).await;
    put_is_idempotent(store).await;
    put_replaces_a_damaged_blob(store).await;
    missing_blob_is_not_found(store).await;
    get_checked_tells_damage(store).await;
    delete_is_idempotent(store).await;
    list_sees_every_chunk(store).await;
    empty_and_large_blobs(store).await;
    concurrent_puts_of_one_chunk(store).await;
    check_passes(store).await;
}

/// A fresh store lists nothing and checks healthy.
pub async fn empty_store(store: &dyn BlobStore) {
    let listed: Vec<_> = store
        .list()
        .try_collect()
        .await
        .expect("list an empty store");
    assert!(
        listed.is_empty(),
        "a fresh store lists nothing, got {listed:?}"
    );
    store.check().await.expect("a fresh store checks healthy");
}

pub async fn put_then_get(store: &dyn BlobStore) {
    let (id, data) = blob(1, 1000);
    store.put(&id, data.clone()).await.expect("put");
    assert_eq!(store.get(&id).await.expect("get"), data);
    let meta = store
        .head(&id)
        .await
        .expect("head")
        .expect("head finds the blob");
    assert_eq!(meta.id, id);
    assert_eq!(meta.size, 1000);
    let age = time::OffsetDateTime::now_utc() - meta.last_modified;
    assert!(
        age.whole_seconds().abs() < 600,
        "last_modified is about now, was {}",
        meta.last_modified
    );
    store.delete(&id).await.expect("delete");
}

pub async fn put_is_idempotent(store: &dyn BlobStore) {
    let (id, data) = blob(2, 777);
    store.put(&id, data.clone()).await.expect("first put");
    store
        .put(&id, data.clone())
        .await
        .expect("second put of the same chunk");
    assert_eq!(store.get(&id).await.expect("get"), data);
    store.delete(&id).await.expect("delete");
}

/// A put replaces whatever is stored under the id: repair writes a good copy over a damaged
/// one this way. A replicated store with a write quorum below its copy count returns before
/// its last copies land, so the damaged put's late copy may still be written after the good
/// put returned (or over it, on that location): the good put is repeated until a read sees
/// it, as repair repeats until a chunk is healthy. A store that writes before it returns
/// passes at the first try.
pub async fn put_replaces_a_damaged_blob(store: &dyn BlobStore) {
    let (id, data) = blob(9, 300);
    let mut damaged = data.to_vec();
    damaged[7] ^= 0x40;
    store
        .put(&id, Bytes::from(damaged))
        .await
        .expect("put damaged");
    let mut tries = 0;
    loop {
        tries += 1;
        store.put(&id, data.clone()).await.expect("put good");
        let got = store.get(&id).await.expect("get");
        if got == data {
            break;
        }
        assert!(tries < 50, "the good copy never replaced the damaged one");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    store.delete(&id).await.expect("delete");
}

pub async fn missing_blob_is_not_found(store: &dyn BlobStore) {
    let (id, _) = blob(3, 10);
    match store.get(&id).await {
        Err(BlobError::NotFound { .. }) => {}
        other => panic!("get of a missing blob must be NotFound, got {other:?}"),
    }
    assert!(
        store
            .head(&id)
            .await
            .expect("head of a missing blob")
            .is_none()
    );
}

/// `get_checked` says whether what it read hashes to its id: yes for a stored chunk (small, one
/// past what a local store reads on the calling task, several of its read pieces), no for
/// bytes stored under an id they do not hash to (how a damaged blob looks), and `NotFound`
/// for a missing one.
pub async fn get_checked_tells_damage(store: &dyn BlobStore) {
    for len in [1usize, 1000, (64 << 10) + 1, (4 << 20) + 3] {
        let (id, data) = blob(11, len);
        store.put(&id, data.clone()).await.expect("put");
        let (got, ok) = store.get_checked(&id).await.expect("get_checked");
        assert_eq!(got, data, "{len} bytes read back");
        assert!(ok, "an intact {len}-byte blob checks");
        store.delete(&id).await.expect("delete");

        // Never stored intact, so every copy a replicated store keeps is the damaged one.
        let (id, data) = blob(13, len);
        let mut damaged = data.to_vec();
        damaged[len / 2] ^= 0x01;
        let damaged = Bytes::from(damaged);
        store.put(&id, damaged.clone()).await.expect("put damaged");
        let (got, ok) = store
            .get_checked(&id)
            .await
            .expect("get_checked of a damaged blob");
        assert_eq!(got, damaged, "{len} damaged bytes read back as they are");
        assert!(!ok, "a damaged {len}-byte blob does not check");
        store.delete(&id).await.expect("delete damaged");
    }
    let (missing, _) = blob(12, 10);
    assert!(matches!(
        store.get_checked(&missing).await,
        Err(BlobError::NotFound { .. })
    ));
}

pub async fn delete_is_idempotent(store: &dyn BlobStore) {
    let (id, data) = blob(4, 10);
    store
        .delete(&id)
        .await
        .expect("delete of a blob never stored");
    store.put(&id, data).await.expect("put");
    store.delete(&id).await.expect("delete");
    store.delete(&id).await.expect("second delete");
    assert!(store.head(&id).await.expect("head").is_none());
    assert!(matches!(
        store.get(&id).await,
        Err(BlobError::NotFound { .. })
    ));
}

pub async fn list_sees_every_chunk(store: &dyn BlobStore) {
    let blobs: Vec<_> = (0..20u8).map(|i| blob(100 + i, 50 + i as usize)).collect();
    for (id, data) in &blobs {
        store.put(id, data.clone()).await.expect("put");
    }
    let listed: HashSet<ChunkId> = store
        .list()
        .map_ok(|m| m.id)
        .try_collect()
        .await
        .expect("list");
    let expected: HashSet<ChunkId> = blobs.iter().map(|(id, _)| *id).collect();
    assert_eq!(listed, expected);
    let sizes: Vec<u64> = store
        .list()
        .map_ok(|m| m.size)
        .try_collect()
        .await
        .expect("list");
    assert!(sizes.iter().all(|s| (50..70).contains(s)));
    for (id, _) in &blobs {
        store.delete(id).await.expect("delete");
    }
    assert_eq!(store.list().count().await, 0);
}

pub async fn empty_and_large_blobs(store: &dyn BlobStore) {
    for len in [0usize, 1, 4 << 20] {
        let (id, data) = blob(7, len);
        store.put(&id, data.clone()).await.expect("put");
        let got = store.get(&id).await.expect("get");
        assert_eq!(got.len(), len);
        assert!(
            id.matches(&got),
            "content of a {len}-byte blob survives a round trip"
        );
        store.delete(&id).await.expect("delete");
    }
}

pub async fn concurrent_puts_of_one_chunk(store: &dyn BlobStore) {
    let (id, data) = blob(9, 256 << 10);
    let puts = (0..8).map(|_| store.put(&id, data.clone()));
    for r in futures::future::join_all(puts).await {
        r.expect("concurrent put of the same chunk");
    }
    assert_eq!(store.get(&id).await.expect("get"), data);
    store.delete(&id).await.expect("delete");
}

pub async fn check_passes(store: &dyn BlobStore) {
    store.check().await.expect("check");
    assert!(!store.describe().is_empty());
}
