//! The conformance suite every [`MetaStore`] must pass, run on a fresh, migrated database.

use std::time::Duration;

use chunkvault_types::{ChunkId, FileDigest, FileId};
use time::OffsetDateTime;

use crate::{
    Account, AccountId, ApiKeyRecord, ChunkCopy, ChunkState, CommitFile, CopyStatus, MetaError,
    MetaStore, NewUpload, PendingChunk, Role, SchemaStatus, UploadState,
};

const CS: u64 = 4;

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn new_upload(name: &str) -> NewUpload {
    let t = now();
    NewUpload {
        id: FileId::new(),
        name: name.into(),
        content_type: "application/octet-stream".into(),
        chunk_size: CS,
        created_at: t,
        expires_at: t + Duration::from_secs(3600),
        declared_size: None,
        owner: None,
    }
}

fn hash(n: u32) -> ChunkId {
    ChunkId::of(&n.to_le_bytes())
}

/// The chunks of a file of `size` bytes whose chunk `i` has hash `hash(seed + i)`.
fn chunks_for(size: u64, seed: u32) -> Vec<PendingChunk> {
    (0..size.div_ceil(CS))
        .map(|i| PendingChunk {
            index: i,
            offset: i * CS,
            length: CS.min(size - i * CS),
            hash: hash(seed + i as u32),
        })
        .collect()
}

fn commit(size: u64) -> CommitFile {
    CommitFile {
        name: "final.bin".into(),
        content_type: "text/plain".into(),
        size,
        digest: FileDigest::Blake3("ab".repeat(32)),
        committed_at: now(),
    }
}

/// Stores a file and returns its id.
/// The file as listing returns it (from the database), if listed.
async fn listed(m: &dyn MetaStore, id: FileId) -> Option<crate::FileRecord> {
    m.list_files(None, None, 1000)
        .await
        .unwrap()
        .into_iter()
        .find(|x| x.id == id)
}

async fn store_file(m: &dyn MetaStore, size: u64, seed: u32) -> FileId {
    let u = new_upload("f");
    m.create_upload(&u).await.unwrap();
    m.add_chunks(u.id, &chunks_for(size, seed)).await.unwrap();
    m.commit_upload(u.id, &commit(size)).await.unwrap();
    u.id
}

pub async fn run_all(m: &dyn MetaStore) {
    schema_is_current(m).await;
    upload_is_invisible_until_commit(m).await;
    commit_checks_the_manifest(m).await;
    empty_file(m).await;
    dedup_reports_stored_chunks(m).await;
    re_adding_an_index_replaces_it(m).await;
    abort_and_expire_drop_references(m).await;
    listing_is_newest_first_and_paginated(m).await;
    delete_drops_references(m).await;
    gc_claims_only_unreferenced_chunks(m).await;
    gc_grace_period_is_respected(m).await;
    busy_chunk_blocks_new_references(m).await;
    opening_with_chunks_is_one_transaction(m).await;
    a_whole_file_is_recorded_in_one_transaction(m).await;
    file_with_manifest_reads_both(m).await;
    orphans_are_claimed_only_when_unknown(m).await;
    manifest_pages(m).await;
    leases_exclude_other_holders(m).await;
    concurrent_uploads_of_the_same_chunks(m).await;
    open_upload_references_and_declared_size(m).await;
    accounts_and_keys(m).await;
    quota_is_charged_at_commit_and_credited_at_delete(m).await;
    listing_and_chunks_held_are_per_owner(m).await;
    link_secret_is_shared_and_rotates(m).await;
    chunk_copies_are_recorded_replaced_and_forgotten(m).await;
    chunk_copies_are_recorded_in_batches(m).await;
    cancelled_calls_leave_no_transaction_open(m).await;
    an_aborted_uploads_chunks_are_claimed_at_once(m).await;
    an_inline_file_is_kept_in_the_store(m).await;
    both_digest_algorithms_are_kept_as_committed(m).await;
    a_lost_chunk_is_written_again_and_stays_listed(m).await;
}

pub async fn schema_is_current(m: &dyn MetaStore) {
    assert!(matches!(
        m.schema_status().await.unwrap(),
        SchemaStatus::Current { .. }
    ));
    m.check().await.unwrap();
    m.migrate().await.expect("migrating twice is a no-op");
}

pub async fn upload_is_invisible_until_commit(m: &dyn MetaStore) {
    let u = new_upload("draft.txt");
    m.create_upload(&u).await.unwrap();
    assert!(m.create_upload(&u).await.is_err(), "an id is used once");
    let states = m.add_chunks(u.id, &chunks_for(10, 1)).await.unwrap();
    assert_eq!(states, vec![ChunkState::MustWrite; 3]);
    assert!(m.file(u.id).await.unwrap().is_none());
    assert!(m.manifest(u.id, 0, 10).await.unwrap().is_empty());
    assert!(
        !m.list_files(None, None, 100)
            .await
            .unwrap()
            .iter()
            .any(|f| f.id == u.id)
    );
    let rec = m.upload(u.id).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.chunks_recorded, rec.name.as_str()),
        (UploadState::Open, 3, "draft.txt")
    );

    let f = m.commit_upload(u.id, &commit(10)).await.unwrap();
    assert_eq!((f.size, f.chunk_count, f.chunk_size), (10, 3, CS));
    assert_eq!(f.name, "final.bin");
    assert_eq!(m.file(u.id).await.unwrap().unwrap(), f);
    let manifest = m.manifest(u.id, 0, 10).await.unwrap();
    assert_eq!(manifest.len(), 3);
    assert_eq!(
        (manifest[2].index, manifest[2].offset, manifest[2].length),
        (2, 8, 2)
    );
    assert_eq!(manifest[1].hash, hash(2));
    assert!(matches!(
        m.commit_upload(u.id, &commit(10)).await,
        Err(MetaError::NotOpen { .. })
    ));
    assert!(matches!(
        m.add_chunks(u.id, &chunks_for(4, 9)).await,
        Err(MetaError::NotOpen { .. })
    ));
    assert!(matches!(
        m.add_chunks(FileId::new(), &chunks_for(4, 9)).await,
        Err(MetaError::NotFound)
    ));
    assert!(matches!(
        m.commit_upload(FileId::new(), &commit(0)).await,
        Err(MetaError::NotFound)
    ));
}

pub async fn commit_checks_the_manifest(m: &dyn MetaStore) {
    let u = new_upload("holes");
    m.create_upload(&u).await.unwrap();
    let mut c = chunks_for(12, 20);
    c.remove(1);
    m.add_chunks(u.id, &c).await.unwrap();
    assert!(matches!(
        m.commit_upload(u.id, &commit(12)).await,
        Err(MetaError::InvalidManifest { .. })
    ));
    assert!(matches!(
        m.commit_upload(u.id, &commit(8)).await,
        Err(MetaError::InvalidManifest { .. })
    ));
    // A misplaced offset is refused even when count and total agree.
    m.add_chunks(
        u.id,
        &[PendingChunk {
            index: 1,
            offset: 5,
            length: 4,
            hash: hash(99),
        }],
    )
    .await
    .unwrap();
    assert!(matches!(
        m.commit_upload(u.id, &commit(12)).await,
        Err(MetaError::InvalidManifest { .. })
    ));
    m.add_chunks(
        u.id,
        &[PendingChunk {
            index: 1,
            offset: 4,
            length: 4,
            hash: hash(21),
        }],
    )
    .await
    .unwrap();
    m.commit_upload(u.id, &commit(12)).await.unwrap();
    assert_eq!(
        m.upload(u.id).await.unwrap().unwrap().state,
        UploadState::Committed
    );
}

pub async fn empty_file(m: &dyn MetaStore) {
    let u = new_upload("empty");
    m.create_upload(&u).await.unwrap();
    let f = m.commit_upload(u.id, &commit(0)).await.unwrap();
    assert_eq!((f.size, f.chunk_count), (0, 0));
    assert!(m.manifest(u.id, 0, 10).await.unwrap().is_empty());
}

pub async fn dedup_reports_stored_chunks(m: &dyn MetaStore) {
    store_file(m, 8, 100).await;
    let u = new_upload("again");
    m.create_upload(&u).await.unwrap();
    let mut c = chunks_for(12, 100);
    c[2].hash = hash(5000);
    let states = m.add_chunks(u.id, &c).await.unwrap();
    assert_eq!(
        states,
        vec![
            ChunkState::Stored,
            ChunkState::Stored,
            ChunkState::MustWrite
        ]
    );
    // The same new chunk twice in one batch: one row, both indices recorded.
    let u2 = new_upload("twice");
    m.create_upload(&u2).await.unwrap();
    let twice = [
        PendingChunk {
            index: 0,
            offset: 0,
            length: 4,
            hash: hash(6000),
        },
        PendingChunk {
            index: 1,
            offset: 4,
            length: 4,
            hash: hash(6000),
        },
    ];
    assert_eq!(
        m.add_chunks(u2.id, &twice).await.unwrap(),
        vec![ChunkState::MustWrite; 2]
    );
    m.commit_upload(u2.id, &commit(8)).await.unwrap();
    assert_eq!(m.manifest(u2.id, 0, 10).await.unwrap().len(), 2);
}

pub async fn re_adding_an_index_replaces_it(m: &dyn MetaStore) {
    let u = new_upload("retry");
    m.create_upload(&u).await.unwrap();
    m.add_chunks(u.id, &chunks_for(4, 300)).await.unwrap();
    m.add_chunks(u.id, &chunks_for(4, 301)).await.unwrap();
    m.commit_upload(u.id, &commit(4)).await.unwrap();
    assert_eq!(m.manifest(u.id, 0, 10).await.unwrap()[0].hash, hash(301));
}

pub async fn abort_and_expire_drop_references(m: &dyn MetaStore) {
    let a = new_upload("abort");
    m.create_upload(&a).await.unwrap();
    m.add_chunks(a.id, &chunks_for(4, 400)).await.unwrap();
    m.abort_upload(a.id).await.unwrap();
    m.abort_upload(a.id).await.expect("abort is idempotent");
    assert_eq!(
        m.upload(a.id).await.unwrap().unwrap().state,
        UploadState::Aborted
    );
    assert!(m.files_with_chunk(&hash(400), 10).await.unwrap().is_empty());
    assert!(matches!(
        m.commit_upload(a.id, &commit(4)).await,
        Err(MetaError::NotOpen { .. })
    ));

    let mut e = new_upload("expire");
    e.expires_at = now() - Duration::from_secs(1);
    m.create_upload(&e).await.unwrap();
    m.add_chunks(e.id, &chunks_for(4, 401)).await.unwrap();
    let live = new_upload("still open");
    m.create_upload(&live).await.unwrap();
    let expired = m.expire_uploads(now()).await.unwrap();
    assert!(expired.contains(&e.id));
    assert!(!expired.contains(&live.id));
    assert_eq!(
        m.upload(e.id).await.unwrap().unwrap().state,
        UploadState::Expired
    );
    assert!(m.files_with_chunk(&hash(401), 10).await.unwrap().is_empty());
    assert!(matches!(
        m.commit_upload(e.id, &commit(4)).await,
        Err(MetaError::NotOpen { .. })
    ));

    let committed = store_file(m, 4, 402).await;
    assert!(matches!(
        m.abort_upload(committed).await,
        Err(MetaError::NotOpen { .. })
    ));
    assert!(matches!(
        m.abort_upload(FileId::new()).await,
        Err(MetaError::NotFound)
    ));
}

pub async fn listing_is_newest_first_and_paginated(m: &dyn MetaStore) {
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(store_file(m, 4, 500 + i).await);
    }
    let all = m.list_files(None, None, 1000).await.unwrap();
    let pos: Vec<usize> = ids
        .iter()
        .map(|id| all.iter().position(|f| f.id == *id).unwrap())
        .collect();
    assert!(pos.windows(2).all(|w| w[0] > w[1]), "newest first");
    let first = m.list_files(None, None, 2).await.unwrap();
    assert_eq!(first.len(), 2);
    let next = m.list_files(None, Some(first[1].id), 2).await.unwrap();
    assert!(next.iter().all(|f| f.id < first[1].id));
}

pub async fn delete_drops_references(m: &dyn MetaStore) {
    let id = store_file(m, 8, 600).await;
    assert_eq!(m.files_with_chunk(&hash(600), 10).await.unwrap(), vec![id]);
    assert!(m.delete_file(id).await.unwrap());
    assert!(!m.delete_file(id).await.unwrap());
    assert!(m.file(id).await.unwrap().is_none());
    assert!(m.files_with_chunk(&hash(600), 10).await.unwrap().is_empty());
    assert!(!m.delete_file(FileId::new()).await.unwrap());
    let open = new_upload("open");
    m.create_upload(&open).await.unwrap();
    assert!(
        !m.delete_file(open.id).await.unwrap(),
        "delete is for committed files"
    );
}

async fn claim_all(m: &dyn MetaStore, before: OffsetDateTime) -> Vec<ChunkId> {
    let mut all = Vec::new();
    loop {
        let c = m.gc_claim_unreferenced(before, 500).await.unwrap();
        let fresh: Vec<_> = c.into_iter().filter(|id| !all.contains(id)).collect();
        if fresh.is_empty() {
            return all;
        }
        all.extend(fresh);
    }
}

pub async fn gc_claims_only_unreferenced_chunks(m: &dyn MetaStore) {
    let kept = store_file(m, 4, 700).await;
    let gone = store_file(m, 4, 701).await;
    let open = new_upload("pending");
    m.create_upload(&open).await.unwrap();
    m.add_chunks(open.id, &chunks_for(4, 702)).await.unwrap();
    m.delete_file(gone).await.unwrap();
    let claimed = claim_all(m, now() + Duration::from_secs(1)).await;
    assert!(claimed.contains(&hash(701)));
    assert!(
        !claimed.contains(&hash(700)),
        "a committed file's chunk is never claimed"
    );
    assert!(
        !claimed.contains(&hash(702)),
        "an open upload's pending chunk is never claimed"
    );
    m.gc_forget(&claimed).await.unwrap();
    assert!(
        claim_all(m, now() + Duration::from_secs(1))
            .await
            .is_empty(),
        "GC is idempotent"
    );
    let walked = m.chunks(None, 100_000).await.unwrap();
    assert!(walked.iter().any(|c| c.hash == hash(700) && c.live));
    assert!(walked.iter().any(|c| c.hash == hash(702) && !c.live));
    assert!(!walked.iter().any(|c| c.hash == hash(701)));
    assert!(
        walked.windows(2).all(|w| w[0].hash < w[1].hash),
        "walk is in hash order"
    );
    let _ = kept;
}

pub async fn gc_grace_period_is_respected(m: &dyn MetaStore) {
    let id = store_file(m, 4, 800).await;
    m.delete_file(id).await.unwrap();
    let claimed = claim_all(m, now() - Duration::from_secs(3600)).await;
    assert!(
        !claimed.contains(&hash(800)),
        "dropped moments ago: inside the grace period"
    );
    let claimed = claim_all(m, now() + Duration::from_secs(1)).await;
    assert!(claimed.contains(&hash(800)));
    m.gc_forget(&claimed).await.unwrap();
}

/// `gc_claim_chunks`: of the hashes given, exactly those nothing references are claimed, at
/// once (no grace period), each once; an upload meeting one is told to wait until it is
/// forgotten, and may then record it anew.
pub async fn an_aborted_uploads_chunks_are_claimed_at_once(m: &dyn MetaStore) {
    let other = new_upload("other");
    m.create_upload(&other).await.unwrap();
    m.add_chunks(other.id, &chunks_for(4, 7701)).await.unwrap();
    let kept = store_file(m, 4, 7702).await;
    let a = new_upload("aborted");
    m.create_upload(&a).await.unwrap();
    m.add_chunks(a.id, &chunks_for(16, 7700)).await.unwrap();
    m.abort_upload(a.id).await.unwrap();

    let asked = [7700, 7701, 7702, 7703, 7703, 7799].map(hash);
    let mut claimed = m.gc_claim_chunks(&asked).await.unwrap();
    claimed.sort();
    let mut want = vec![hash(7700), hash(7703)];
    want.sort();
    assert_eq!(claimed, want, "only what nothing references, each once");
    assert!(m.gc_claim_chunks(&asked).await.unwrap().is_empty());
    assert!(m.gc_claim_chunks(&[]).await.unwrap().is_empty());

    let late = new_upload("late");
    m.create_upload(&late).await.unwrap();
    match m.add_chunks(late.id, &chunks_for(4, 7700)).await {
        Err(MetaError::ChunkBusy { id }) => assert_eq!(id, hash(7700)),
        other => panic!("a claimed chunk must be busy, got {other:?}"),
    }
    // A claim given back (its blob could not be deleted) is a pending chunk again: an upload
    // meeting it writes the blob, and it can be claimed again.
    m.gc_unclaim(&[hash(7703), hash(7702)], now())
        .await
        .unwrap();
    assert_eq!(
        m.add_chunks(late.id, &chunks_for(4, 7703)).await.unwrap(),
        vec![ChunkState::MustWrite]
    );
    let other_late = new_upload("other late");
    m.create_upload(&other_late).await.unwrap();
    m.abort_upload(late.id).await.unwrap();
    assert_eq!(
        m.gc_claim_chunks(&[hash(7703)]).await.unwrap(),
        vec![hash(7703)]
    );
    m.gc_forget(&[hash(7703)]).await.unwrap();
    assert_eq!(m.manifest(kept, 0, 10).await.unwrap()[0].hash, hash(7702));
    m.gc_forget(&claimed).await.unwrap();
    let late = other_late;
    assert_eq!(
        m.add_chunks(late.id, &chunks_for(4, 7700)).await.unwrap(),
        vec![ChunkState::MustWrite]
    );
    m.abort_upload(late.id).await.unwrap();
    m.abort_upload(other.id).await.unwrap();
}

pub async fn busy_chunk_blocks_new_references(m: &dyn MetaStore) {
    let id = store_file(m, 4, 900).await;
    m.delete_file(id).await.unwrap();
    let claimed = claim_all(m, now() + Duration::from_secs(1)).await;
    assert!(claimed.contains(&hash(900)));
    let u = new_upload("late");
    m.create_upload(&u).await.unwrap();
    match m.add_chunks(u.id, &chunks_for(4, 900)).await {
        Err(MetaError::ChunkBusy { id }) => assert_eq!(id, hash(900)),
        other => panic!("a chunk being deleted must be busy, got {other:?}"),
    }
    assert_eq!(
        m.upload(u.id).await.unwrap().unwrap().chunks_recorded,
        0,
        "nothing recorded"
    );
    m.gc_forget(&claimed).await.unwrap();
    assert_eq!(
        m.add_chunks(u.id, &chunks_for(4, 900)).await.unwrap(),
        vec![ChunkState::MustWrite]
    );
}

/// `file_with_manifest`: what `file`, `manifest` from index 0 and `inline_data` say, together.
pub async fn file_with_manifest_reads_both(m: &dyn MetaStore) {
    let u = new_upload("both");
    m.create_upload(&u).await.unwrap();
    m.add_chunks(u.id, &chunks_for(10, 1700)).await.unwrap();
    assert!(
        m.file_with_manifest(u.id, 10).await.unwrap().is_none(),
        "not committed yet"
    );
    let f = m.commit_upload(u.id, &commit(10)).await.unwrap();
    let start = m.file_with_manifest(u.id, 10).await.unwrap().unwrap();
    assert_eq!(start.file, f);
    assert_eq!(start.entries, m.manifest(u.id, 0, 10).await.unwrap());
    assert_eq!(start.entries.len(), 3);
    assert_eq!(start.inline, None);
    let first = m.file_with_manifest(u.id, 2).await.unwrap().unwrap();
    assert_eq!(first.entries, start.entries[..2]);
    let none = m.file_with_manifest(u.id, 0).await.unwrap().unwrap();
    assert!(none.entries.is_empty());
    assert!(
        m.file_with_manifest(FileId::new(), 10)
            .await
            .unwrap()
            .is_none()
    );
    assert!(m.delete_file(u.id).await.unwrap());
    assert!(
        m.file_with_manifest(u.id, 10).await.unwrap().is_none(),
        "deleted"
    );
    // The store's connections stay usable after all of this (no read left open).
    let again = store_file(m, 4, 1750).await;
    assert_eq!(
        m.file_with_manifest(again, 10)
            .await
            .unwrap()
            .unwrap()
            .entries
            .len(),
        1
    );
}

/// `create_file`: open, record and commit at once, all or nothing.
pub async fn a_whole_file_is_recorded_in_one_transaction(m: &dyn MetaStore) {
    let u = new_upload("whole");
    let chunks = chunks_for(10, 1200);
    let (f, states) = m.create_file(&u, &chunks, &commit(10)).await.unwrap();
    assert_eq!(states, vec![ChunkState::MustWrite; 3]);
    assert_eq!(
        (f.id, f.size, f.chunk_count, f.chunk_size),
        (u.id, 10, 3, CS)
    );
    assert_eq!(
        (f.name.as_str(), f.content_type.as_str()),
        ("final.bin", "text/plain")
    );
    assert_eq!(m.file(u.id).await.unwrap().unwrap(), f);
    let whole = f.clone();
    assert_eq!(
        m.upload(u.id).await.unwrap().unwrap().state,
        UploadState::Committed
    );
    let manifest = m.manifest(u.id, 0, 10).await.unwrap();
    assert_eq!(
        manifest
            .iter()
            .map(|e| (e.index, e.offset, e.length, e.hash))
            .collect::<Vec<_>>(),
        chunks
            .iter()
            .map(|c| (c.index, c.offset, c.length, c.hash))
            .collect::<Vec<_>>()
    );
    // What create_file returned is the stored row (listing reads it back from the database).
    assert_eq!(listed(m, u.id).await, Some(f.clone()));
    // Its chunks are live and referenced: stored for the next upload, never claimed by GC.
    let again = new_upload("whole again");
    let (_, states) = m
        .create_file(&again, &chunks[..1], &commit(4))
        .await
        .unwrap();
    assert_eq!(states, vec![ChunkState::Stored]);
    assert_eq!(
        m.create_upload_with_chunks(&new_upload("open"), &chunks[2..])
            .await
            .unwrap(),
        vec![ChunkState::Stored]
    );
    let claimed = claim_all(m, now() + Duration::from_secs(1)).await;
    assert!(chunks.iter().all(|c| !claimed.contains(&c.hash)));
    m.gc_forget(&claimed).await.unwrap();

    // An empty file has no chunks.
    let empty = new_upload("empty");
    let (f, states) = m.create_file(&empty, &[], &commit(0)).await.unwrap();
    assert!(states.is_empty());
    assert_eq!((f.size, f.chunk_count), (0, 0));
    let start = m.file_with_manifest(empty.id, 10).await.unwrap().unwrap();
    assert_eq!(
        (start.file, start.entries, start.inline),
        (f, Vec::new(), None)
    );

    // Refused, with nothing recorded: an id in use, a manifest with a hole or the wrong total.
    assert!(
        m.create_file(&u, &chunks_for(4, 1300), &commit(4))
            .await
            .is_err()
    );
    assert_eq!(m.manifest(u.id, 0, 10).await.unwrap().len(), 3);
    for (given, size) in [(vec![chunks[0], chunks[2]], 10), (chunks.clone(), 11)] {
        let bad = new_upload("bad");
        let result = m.create_file(&bad, &given, &commit(size)).await;
        assert!(
            matches!(result, Err(MetaError::InvalidManifest { .. })),
            "expected InvalidManifest, got {result:?}"
        );
        assert!(
            m.upload(bad.id).await.unwrap().is_none(),
            "nothing recorded"
        );
    }

    // Over the owner's quota: refused, nothing recorded or charged.
    let a = account("whole", Some(20));
    m.create_account(&a).await.unwrap();
    let mut owned = new_upload("owned");
    owned.owner = Some(a.id);
    let (owned_file, _) = m
        .create_file(&owned, &chunks_for(12, 1400), &commit(12))
        .await
        .unwrap();
    assert_eq!(owned_file.owner, Some(a.id));
    assert_eq!(
        m.list_files(Some(a.id), None, 10).await.unwrap(),
        vec![owned_file]
    );
    assert_eq!(used(m, a.id).await, 12);
    let mut over = new_upload("over");
    over.owner = Some(a.id);
    match m.create_file(&over, &chunks_for(9, 1500), &commit(9)).await {
        Err(MetaError::QuotaExceeded { quota, used, size }) => {
            assert_eq!((quota, used, size), (20, 12, 9))
        }
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }
    assert!(m.upload(over.id).await.unwrap().is_none());
    assert_eq!(used(m, a.id).await, 12);
    assert_eq!(
        m.create_upload_with_chunks(&new_upload("probe"), &chunks_for(4, 1500))
            .await
            .unwrap(),
        vec![ChunkState::MustWrite],
        "the refused file's chunk was not recorded live"
    );

    // A chunk GC is deleting: busy, nothing recorded; once GC is done, it records.
    let id = store_file(m, 4, 1600).await;
    m.delete_file(id).await.unwrap();
    let claimed = claim_all(m, now() + Duration::from_secs(1)).await;
    assert!(claimed.contains(&hash(1600)));
    let late = new_upload("late");
    match m.create_file(&late, &chunks_for(4, 1600), &commit(4)).await {
        Err(MetaError::ChunkBusy { id }) => assert_eq!(id, hash(1600)),
        other => panic!("a chunk being deleted must be busy, got {other:?}"),
    }
    assert!(
        m.upload(late.id).await.unwrap().is_none(),
        "nothing recorded"
    );
    m.gc_forget(&claimed).await.unwrap();
    let (_, states) = m
        .create_file(&late, &chunks_for(4, 1600), &commit(4))
        .await
        .unwrap();
    assert_eq!(states, vec![ChunkState::MustWrite]);

    // Read back whole or in part, as often as asked (a store may keep recent files); once
    // deleted, gone for every read at once.
    for _ in 0..2 {
        let start = m.file_with_manifest(u.id, 10).await.unwrap().unwrap();
        assert_eq!(
            (start.file, start.entries),
            (whole.clone(), manifest.clone())
        );
        let first = m.file_with_manifest(u.id, 2).await.unwrap().unwrap();
        assert_eq!(first.entries, manifest[..2]);
    }
    assert!(m.delete_file(u.id).await.unwrap());
    assert!(m.file_with_manifest(u.id, 10).await.unwrap().is_none());
    assert!(m.file(u.id).await.unwrap().is_none());
    assert!(m.manifest(u.id, 0, 10).await.unwrap().is_empty());
}

pub async fn opening_with_chunks_is_one_transaction(m: &dyn MetaStore) {
    // Opens and records in one call; the file is visible only after the commit.
    let u = new_upload("first");
    let chunks = chunks_for(6, 950);
    assert_eq!(
        m.create_upload_with_chunks(&u, &chunks[..1]).await.unwrap(),
        vec![ChunkState::MustWrite]
    );
    let open = m.upload(u.id).await.unwrap().unwrap();
    assert_eq!((open.state, open.chunks_recorded), (UploadState::Open, 1));
    assert!(m.file(u.id).await.unwrap().is_none());
    m.add_chunks(u.id, &chunks[1..]).await.unwrap();
    m.commit_upload(u.id, &commit(6)).await.unwrap();
    assert_eq!(m.manifest(u.id, 0, 10).await.unwrap().len(), 2);

    // The same content again: its chunk is reported stored.
    let again = new_upload("again");
    assert_eq!(
        m.create_upload_with_chunks(&again, &chunks[..1])
            .await
            .unwrap(),
        vec![ChunkState::Stored]
    );

    // An id that exists already: an error, and the existing upload is untouched.
    assert!(
        m.create_upload_with_chunks(&again, &chunks_for(4, 951))
            .await
            .is_err()
    );
    assert_eq!(
        m.upload(again.id).await.unwrap().unwrap().chunks_recorded,
        1
    );

    // A chunk GC is deleting: busy, and not even the upload is recorded.
    let id = store_file(m, 4, 952).await;
    m.delete_file(id).await.unwrap();
    let claimed = claim_all(m, now() + Duration::from_secs(1)).await;
    assert!(claimed.contains(&hash(952)));
    let late = new_upload("late");
    match m
        .create_upload_with_chunks(&late, &chunks_for(4, 952))
        .await
    {
        Err(MetaError::ChunkBusy { id }) => assert_eq!(id, hash(952)),
        other => panic!("a chunk being deleted must be busy, got {other:?}"),
    }
    assert!(
        m.upload(late.id).await.unwrap().is_none(),
        "nothing recorded"
    );
    m.gc_forget(&claimed).await.unwrap();
    assert_eq!(
        m.create_upload_with_chunks(&late, &chunks_for(4, 952))
            .await
            .unwrap(),
        vec![ChunkState::MustWrite]
    );
    m.abort_upload(again.id).await.unwrap();
    m.abort_upload(late.id).await.unwrap();
}

pub async fn orphans_are_claimed_only_when_unknown(m: &dyn MetaStore) {
    store_file(m, 4, 1000).await;
    let claimed = m
        .gc_claim_orphans(&[hash(1000), hash(1001), hash(1001)], now())
        .await
        .unwrap();
    assert_eq!(claimed, vec![hash(1001)]);
    let u = new_upload("orphan");
    m.create_upload(&u).await.unwrap();
    assert!(matches!(
        m.add_chunks(u.id, &chunks_for(4, 1001)).await,
        Err(MetaError::ChunkBusy { .. })
    ));
    m.gc_forget(&claimed).await.unwrap();
    m.add_chunks(u.id, &chunks_for(4, 1001)).await.unwrap();
}

pub async fn manifest_pages(m: &dyn MetaStore) {
    let id = store_file(m, 4 * 25 + 1, 2000).await;
    let mut seen = Vec::new();
    let mut from = 0;
    loop {
        let page = m.manifest(id, from, 7).await.unwrap();
        if page.is_empty() {
            break;
        }
        from = page.last().unwrap().index + 1;
        seen.extend(page);
    }
    assert_eq!(seen.len(), 26);
    assert!(
        seen.iter()
            .enumerate()
            .all(|(i, e)| e.index == i as u64 && e.offset == i as u64 * CS)
    );
    assert_eq!(seen[25].length, 1);
}

pub async fn leases_exclude_other_holders(m: &dyn MetaStore) {
    let ttl = Duration::from_secs(60);
    let t = now();
    assert!(m.try_lease("gc-test", "a", ttl, t).await.unwrap());
    assert!(
        m.try_lease("gc-test", "a", ttl, t).await.unwrap(),
        "the holder renews"
    );
    assert!(!m.try_lease("gc-test", "b", ttl, t).await.unwrap());
    assert!(
        m.try_lease("gc-test", "b", ttl, t + Duration::from_secs(61))
            .await
            .unwrap(),
        "expired leases move"
    );
    m.release_lease("gc-test", "a").await.unwrap();
    assert!(
        !m.try_lease("gc-test", "a", ttl, t + Duration::from_secs(62))
            .await
            .unwrap(),
        "a cannot release b's lease"
    );
    m.release_lease("gc-test", "b").await.unwrap();
    assert!(m.try_lease("gc-test", "a", ttl, t).await.unwrap());
    m.release_lease("gc-test", "a").await.unwrap();
}

/// Many uploads sharing chunks at once: every one commits, no deadlock, dedup consistent.
pub async fn concurrent_uploads_of_the_same_chunks(m: &dyn MetaStore) {
    let tasks = (0..8).map(|k| async move {
        let u = new_upload("concurrent");
        m.create_upload(&u).await.unwrap();
        let mut c = chunks_for(40, 3000);
        if k % 2 == 1 {
            c.reverse();
        }
        for pair in c.chunks(3) {
            m.add_chunks(u.id, pair).await.unwrap();
        }
        m.commit_upload(u.id, &commit(40)).await.unwrap();
        u.id
    });
    let ids = futures::future::join_all(tasks).await;
    for id in ids {
        assert_eq!(m.manifest(id, 0, 100).await.unwrap().len(), 10);
    }
    assert_eq!(m.files_with_chunk(&hash(3000), 100).await.unwrap().len(), 8);
}

/// Upload sessions read back what an open upload recorded (any order, replaced indices) and
/// the size announced when it was opened.
pub async fn open_upload_references_and_declared_size(m: &dyn MetaStore) {
    let mut u = new_upload("session");
    u.declared_size = Some(10);
    m.create_upload(&u).await.unwrap();
    let rec = m.upload(u.id).await.unwrap().unwrap();
    assert_eq!(rec.declared_size, Some(10));
    assert_eq!(rec.state, UploadState::Open);
    assert!(m.upload_chunks(u.id, 0, 10).await.unwrap().is_empty());
    let chunks = chunks_for(10, 600);
    // Out of order, and index 1 first with other content, then replaced.
    let mut wrong = chunks[1];
    wrong.hash = hash(699);
    m.add_chunks(u.id, &[chunks[2], wrong]).await.unwrap();
    m.add_chunks(u.id, &[chunks[1]]).await.unwrap();
    let got = m.upload_chunks(u.id, 0, 10).await.unwrap();
    assert_eq!(
        got.iter().map(|e| (e.index, e.hash)).collect::<Vec<_>>(),
        vec![(1, hash(601)), (2, hash(602))]
    );
    assert_eq!(got[1].length, 2);
    m.add_chunks(u.id, &[chunks[0]]).await.unwrap();
    assert_eq!(m.upload_chunks(u.id, 1, 1).await.unwrap()[0].index, 1);
    assert_eq!(m.upload(u.id).await.unwrap().unwrap().chunks_recorded, 3);
    m.commit_upload(u.id, &commit(10)).await.unwrap();
    assert_eq!(m.upload_chunks(u.id, 0, 10).await.unwrap().len(), 3);
    let plain = new_upload("plain");
    m.create_upload(&plain).await.unwrap();
    assert_eq!(
        m.upload(plain.id).await.unwrap().unwrap().declared_size,
        None
    );
    assert!(
        m.upload_chunks(FileId::new(), 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

fn account(name: &str, quota: Option<u64>) -> Account {
    Account {
        id: AccountId::new(),
        name: format!("{name}-{}", uuid::Uuid::new_v4().simple()),
        role: Role::User,
        quota_bytes: quota,
        bytes_used: 0,
        created_at: now(),
        disabled: false,
    }
}

/// Stores a file of `owner` and returns its id (or the commit's error).
async fn store_owned(
    m: &dyn MetaStore,
    owner: AccountId,
    size: u64,
    seed: u32,
) -> Result<FileId, MetaError> {
    let mut u = new_upload("owned");
    u.owner = Some(owner);
    m.create_upload(&u).await.unwrap();
    m.add_chunks(u.id, &chunks_for(size, seed)).await.unwrap();
    m.commit_upload(u.id, &commit(size)).await.map(|_| u.id)
}

pub async fn accounts_and_keys(m: &dyn MetaStore) {
    let a = account("alice", Some(1000));
    m.create_account(&a).await.unwrap();
    let again = Account {
        id: AccountId::new(),
        ..a.clone()
    };
    assert!(matches!(
        m.create_account(&again).await,
        Err(MetaError::AlreadyExists { .. })
    ));
    assert_eq!(m.account(a.id).await.unwrap().unwrap().name, a.name);
    let by_name = m.account_by_name(&a.name).await.unwrap().unwrap();
    assert_eq!(by_name.id, a.id);
    assert_eq!(by_name.quota_bytes, Some(1000));
    assert!(m.account(AccountId::new()).await.unwrap().is_none());
    assert!(
        m.list_accounts()
            .await
            .unwrap()
            .iter()
            .any(|x| x.id == a.id)
    );
    assert!(m.set_quota(a.id, None).await.unwrap());
    assert_eq!(m.account(a.id).await.unwrap().unwrap().quota_bytes, None);
    assert!(!m.set_quota(AccountId::new(), Some(1)).await.unwrap());
    assert!(m.set_account_disabled(a.id, true).await.unwrap());
    assert!(m.account(a.id).await.unwrap().unwrap().disabled);
    assert!(m.set_account_disabled(a.id, false).await.unwrap());
    assert!(!m.account(a.id).await.unwrap().unwrap().disabled);

    let key_id = format!("k{}", &uuid::Uuid::new_v4().simple().to_string()[..11]);
    let key = ApiKeyRecord {
        id: key_id.clone(),
        account: a.id,
        name: "laptop".into(),
        secret_hash: vec![7; 32],
        created_at: now(),
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
    };
    m.create_api_key(&key).await.unwrap();
    assert!(matches!(
        m.create_api_key(&key).await,
        Err(MetaError::AlreadyExists { .. })
    ));
    let stored = m.api_key(&key_id).await.unwrap().unwrap();
    assert_eq!(stored.secret_hash, vec![7; 32]);
    assert_eq!(stored.account, a.id);
    assert!(m.api_key("nokey").await.unwrap().is_none());
    let listed = m.list_api_keys(Some(a.id)).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(!m.list_api_keys(None).await.unwrap().is_empty());

    let t = now();
    m.touch_api_key(&key_id, t).await.unwrap();
    let until = t + Duration::from_secs(60);
    assert!(m.set_api_key_expiry(&key_id, Some(until)).await.unwrap());
    assert!(m.revoke_api_key(&key_id, t).await.unwrap());
    // A second revocation keeps the first time.
    assert!(
        m.revoke_api_key(&key_id, t + Duration::from_secs(5))
            .await
            .unwrap()
    );
    let k = m.api_key(&key_id).await.unwrap().unwrap();
    assert_eq!(
        k.revoked_at.map(|r| r.unix_timestamp()),
        Some(t.unix_timestamp())
    );
    assert_eq!(
        k.expires_at.map(|r| r.unix_timestamp()),
        Some(until.unix_timestamp())
    );
    assert!(k.last_used_at.is_some());
    assert!(!m.revoke_api_key("nokey", t).await.unwrap());

    // The key with its account in one read: what each read alone says, in every state.
    assert!(m.api_key_with_account("nokey").await.unwrap().is_none());
    for disabled in [true, false] {
        m.set_account_disabled(a.id, disabled).await.unwrap();
        let (key, account) = m.api_key_with_account(&key_id).await.unwrap().unwrap();
        assert_eq!(key, m.api_key(&key_id).await.unwrap().unwrap());
        assert_eq!(account, m.account(a.id).await.unwrap());
        assert_eq!(account.map(|a| a.disabled), Some(disabled));
    }
}

async fn used(m: &dyn MetaStore, id: AccountId) -> u64 {
    m.account(id).await.unwrap().unwrap().bytes_used
}

pub async fn quota_is_charged_at_commit_and_credited_at_delete(m: &dyn MetaStore) {
    let a = account("quota", Some(20));
    m.create_account(&a).await.unwrap();
    let f1 = store_owned(m, a.id, 12, 7000).await.unwrap();
    assert_eq!(used(m, a.id).await, 12);
    assert_eq!(m.file(f1).await.unwrap().unwrap().owner, Some(a.id));
    // 12 + 9 > 20: refused, nothing visible, nothing charged; the upload stays open for the
    // caller to abort.
    let mut u = new_upload("over");
    u.owner = Some(a.id);
    m.create_upload(&u).await.unwrap();
    m.add_chunks(u.id, &chunks_for(9, 7100)).await.unwrap();
    match m.commit_upload(u.id, &commit(9)).await {
        Err(MetaError::QuotaExceeded { quota, used, size }) => {
            assert_eq!((quota, used, size), (20, 12, 9))
        }
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }
    assert!(m.file(u.id).await.unwrap().is_none());
    assert_eq!(used(m, a.id).await, 12);
    m.abort_upload(u.id).await.unwrap();
    // Exactly up to the quota is fine.
    let f2 = store_owned(m, a.id, 8, 7200).await.unwrap();
    assert_eq!(used(m, a.id).await, 20);
    assert!(m.delete_file(f1).await.unwrap());
    assert_eq!(used(m, a.id).await, 8);
    assert!(!m.delete_file(f1).await.unwrap());
    assert_eq!(used(m, a.id).await, 8, "a second delete credits nothing");
    assert!(m.delete_file(f2).await.unwrap());
    assert_eq!(used(m, a.id).await, 0);
    // Files without an owner charge no one.
    let free = store_file(m, 5, 7300).await;
    assert_eq!(m.file(free).await.unwrap().unwrap().owner, None);
}

pub async fn listing_and_chunks_held_are_per_owner(m: &dyn MetaStore) {
    let a = account("lista", None);
    let b = account("listb", None);
    m.create_account(&a).await.unwrap();
    m.create_account(&b).await.unwrap();
    let fa = store_owned(m, a.id, 8, 8000).await.unwrap();
    let fb = store_owned(m, b.id, 8, 8100).await.unwrap();
    let of_a = m.list_files(Some(a.id), None, 100).await.unwrap();
    assert_eq!(of_a.iter().map(|f| f.id).collect::<Vec<_>>(), vec![fa]);
    let all = m.list_files(None, None, 1000).await.unwrap();
    assert!(all.iter().any(|f| f.id == fa) && all.iter().any(|f| f.id == fb));
    assert!(
        m.list_files(Some(a.id), Some(fa), 100)
            .await
            .unwrap()
            .is_empty()
    );

    // a holds 8000 and 8001, b holds 8100 and 8101; an open upload counts too.
    let held = m
        .chunks_held_by(a.id, &[hash(8000), hash(8100), hash(8001), hash(8000)])
        .await
        .unwrap();
    let mut held_sorted = held.clone();
    held_sorted.sort();
    let mut expected = vec![hash(8000), hash(8001)];
    expected.sort();
    assert_eq!(held_sorted, expected);
    let mut u = new_upload("open");
    u.owner = Some(b.id);
    m.create_upload(&u).await.unwrap();
    m.add_chunks(u.id, &chunks_for(4, 8200)).await.unwrap();
    assert_eq!(
        m.chunks_held_by(b.id, &[hash(8200)]).await.unwrap(),
        vec![hash(8200)]
    );
    assert!(
        m.chunks_held_by(a.id, &[hash(8200)])
            .await
            .unwrap()
            .is_empty()
    );
    m.abort_upload(u.id).await.unwrap();
    assert!(
        m.chunks_held_by(b.id, &[hash(8200)])
            .await
            .unwrap()
            .is_empty(),
        "an aborted upload holds nothing"
    );
}

pub async fn link_secret_is_shared_and_rotates(m: &dyn MetaStore) {
    let first = m.link_secret(&[1; 32], now()).await.unwrap();
    let again = m.link_secret(&[2; 32], now()).await.unwrap();
    assert_eq!(first, again, "the first secret stays");
    let rotated = m.rotate_link_secret(&[3; 32], now()).await.unwrap();
    assert_eq!(rotated.generation, first.generation + 1);
    assert_eq!(rotated.secret, vec![3; 32]);
    assert_eq!(m.link_secret(&[4; 32], now()).await.unwrap(), rotated);
}

fn copy(n: u32, location: &str, shard: Option<u32>, state: CopyStatus) -> ChunkCopy {
    ChunkCopy {
        hash: hash(n),
        location: location.into(),
        shard,
        state,
        // Whole seconds: both databases keep microseconds, and the comparison is exact.
        verified_at: OffsetDateTime::from_unix_timestamp(1_800_000_000 + i64::from(n)).unwrap(),
    }
}

pub async fn chunk_copies_are_recorded_replaced_and_forgotten(m: &dyn MetaStore) {
    let file = store_file(m, 8, 90_000).await;
    assert!(
        m.chunk_copies(&hash(90_000)).await.unwrap().is_empty(),
        "nothing is recorded until a copy is"
    );
    m.record_copies(&[
        copy(90_000, "west", None, CopyStatus::Ok),
        copy(90_000, "east", None, CopyStatus::Ok),
        copy(90_001, "east", Some(0), CopyStatus::Ok),
        copy(90_001, "north", Some(1), CopyStatus::Ok),
        // Two records of one copy in one call: the last wins.
        copy(90_001, "north", Some(1), CopyStatus::Corrupt),
        // No chunk row: skipped, not an error.
        copy(90_999, "east", None, CopyStatus::Ok),
    ])
    .await
    .unwrap();
    assert_eq!(
        m.chunk_copies(&hash(90_000)).await.unwrap(),
        vec![
            copy(90_000, "east", None, CopyStatus::Ok),
            copy(90_000, "west", None, CopyStatus::Ok)
        ],
        "in location order"
    );
    assert_eq!(
        m.chunk_copies(&hash(90_001)).await.unwrap(),
        vec![
            copy(90_001, "east", Some(0), CopyStatus::Ok),
            copy(90_001, "north", Some(1), CopyStatus::Corrupt)
        ]
    );
    assert!(m.chunk_copies(&hash(90_999)).await.unwrap().is_empty());

    // A later record replaces the earlier one (a read found the copy missing).
    let mut seen = copy(90_000, "west", None, CopyStatus::Missing);
    seen.verified_at += Duration::from_secs(60);
    m.record_copies(std::slice::from_ref(&seen)).await.unwrap();
    m.record_copies(std::slice::from_ref(&seen))
        .await
        .expect("idempotent");
    assert_eq!(
        m.chunk_copies(&hash(90_000)).await.unwrap(),
        vec![copy(90_000, "east", None, CopyStatus::Ok), seen.clone()]
    );

    // The chunks with a copy not ok: 90_000 (west missing) and 90_001 (north corrupt), in
    // hash order, paged; a pending chunk's bad copy is not listed until it is live.
    let mut bad = vec![hash(90_000), hash(90_001)];
    bad.sort();
    assert_eq!(m.chunks_with_bad_copies(None, 10).await.unwrap(), bad);
    assert_eq!(m.chunks_with_bad_copies(None, 1).await.unwrap(), bad[..1]);
    assert_eq!(
        m.chunks_with_bad_copies(Some(bad[0]), 10).await.unwrap(),
        bad[1..]
    );
    let open = new_upload("pending");
    m.create_upload(&open).await.unwrap();
    m.add_chunks(open.id, &chunks_for(4, 90_500)).await.unwrap();
    m.record_copies(&[copy(90_500, "east", None, CopyStatus::Missing)])
        .await
        .unwrap();
    assert_eq!(m.chunks_with_bad_copies(None, 10).await.unwrap(), bad);
    m.abort_upload(open.id).await.unwrap();

    // A drain forgets one location's copies, only those.
    m.forget_copies("east", &[hash(90_000), hash(90_001), hash(90_999)])
        .await
        .unwrap();
    m.forget_copies("east", &[hash(90_000)])
        .await
        .expect("idempotent");
    assert_eq!(
        m.chunk_copies(&hash(90_000)).await.unwrap(),
        vec![seen.clone()]
    );
    assert_eq!(
        m.chunk_copies(&hash(90_001)).await.unwrap(),
        vec![copy(90_001, "north", Some(1), CopyStatus::Corrupt)]
    );

    // GC removes a chunk's records with its row, and a chunk being collected records nothing.
    m.delete_file(file).await.unwrap();
    let claimed = claim_all(m, now() + Duration::from_secs(1)).await;
    assert!(claimed.contains(&hash(90_000)) && claimed.contains(&hash(90_001)));
    m.record_copies(&[copy(90_000, "south", None, CopyStatus::Ok)])
        .await
        .unwrap();
    assert_eq!(
        m.chunk_copies(&hash(90_000)).await.unwrap(),
        vec![seen],
        "no new record for a chunk GC is deleting"
    );
    m.gc_forget(&claimed).await.unwrap();
    assert!(m.chunk_copies(&hash(90_000)).await.unwrap().is_empty());
    assert!(
        !m.chunks_with_bad_copies(None, 100)
            .await
            .unwrap()
            .iter()
            .any(|h| [hash(90_000), hash(90_001)].contains(h))
    );
    assert!(m.chunk_copies(&hash(90_001)).await.unwrap().is_empty());
}

pub async fn chunk_copies_are_recorded_in_batches(m: &dyn MetaStore) {
    // More records than one statement takes (BATCH rows): 1,200 chunks on two locations.
    let n = 1_200u32;
    store_file(m, u64::from(n) * CS, 100_000).await;
    let records: Vec<ChunkCopy> = (0..n)
        .flat_map(|i| {
            [
                copy(100_000 + i, "a", Some(i % 6), CopyStatus::Ok),
                copy(100_000 + i, "b", None, CopyStatus::Missing),
            ]
        })
        .collect();
    m.record_copies(&records).await.unwrap();
    for i in [0, 599, 1_199] {
        assert_eq!(
            m.chunk_copies(&hash(100_000 + i)).await.unwrap(),
            vec![
                copy(100_000 + i, "a", Some(i % 6), CopyStatus::Ok),
                copy(100_000 + i, "b", None, CopyStatus::Missing)
            ]
        );
    }
    let ids: Vec<ChunkId> = (0..n).map(|i| hash(100_000 + i)).collect();
    m.forget_copies("b", &ids).await.unwrap();
    assert_eq!(m.chunk_copies(&hash(100_600)).await.unwrap().len(), 1);
}

/// Callers drop futures at any point (a client goes away, an upload fails part-way): a call
/// dropped part-way must leave nothing behind that changes later calls. Each round drops a
/// transactional call after a different delay, then checks that a new upload is visible at
/// once to a read (a connection left inside a transaction would hide it) and that the dropped
/// call either happened or did not, whole.
pub async fn cancelled_calls_leave_no_transaction_open(m: &dyn MetaStore) {
    for round in 0..300u32 {
        let u = new_upload("cancelled");
        m.create_upload(&u).await.unwrap();
        let chunks = chunks_for(3 * CS, 900_000 + round * 8);
        let delay = Duration::from_micros(u64::from(round % 60) * 25);
        let call = async {
            if round % 2 == 0 {
                m.add_chunks(u.id, &chunks).await.map(|_| ())
            } else {
                m.abort_upload(u.id).await
            }
        };
        let finished = tokio::time::timeout(delay, call).await.is_ok();
        if round % 4 == 0 {
            // Let a call that was dropped while its statement was in flight settle.
            tokio::task::yield_now().await;
        }

        let other = new_upload("after");
        m.create_upload(&other).await.unwrap();
        assert!(
            m.upload(other.id).await.unwrap().is_some(),
            "round {round} (dropped after {delay:?}, finished: {finished}): an upload just created is not visible"
        );
        let dropped = m.upload(u.id).await.unwrap().expect("the upload exists");
        if round % 2 == 0 {
            // All three references or none; the upload still open.
            assert_eq!(dropped.state, UploadState::Open);
            assert!(
                dropped.chunks_recorded == 0 || dropped.chunks_recorded == 3,
                "round {round}: {} of 3 references recorded",
                dropped.chunks_recorded
            );
        } else {
            assert!(
                matches!(dropped.state, UploadState::Open | UploadState::Aborted),
                "round {round}: {:?}",
                dropped.state
            );
        }
        m.abort_upload(other.id).await.unwrap();
        m.abort_upload(u.id).await.unwrap();
    }
}

pub async fn an_inline_file_is_kept_in_the_store(m: &dyn MetaStore) {
    let data = bytes::Bytes::from_static(b"inline bytes");
    let n = data.len() as u64;
    let u = new_upload("inline");
    let f = m
        .create_inline_file(&u, &commit(n), data.clone())
        .await
        .unwrap();
    assert!(f.inline);
    assert_eq!(
        (f.id, f.size, f.chunk_count, f.manifest_len()),
        (u.id, n, 1, 0)
    );
    // What it returned is the row as every read returns it.
    assert_eq!(m.file(u.id).await.unwrap().unwrap(), f);
    assert_eq!(listed(m, u.id).await, Some(f.clone()));
    // The content comes with the row, on every read (a store may answer from memory).
    for _ in 0..2 {
        assert_eq!(
            m.file_with_manifest(u.id, 10).await.unwrap(),
            Some(crate::FileStart {
                file: f.clone(),
                entries: Vec::new(),
                inline: Some(data.clone()),
            })
        );
    }
    assert!(m.manifest(u.id, 0, 10).await.unwrap().is_empty());
    assert_eq!(m.inline_data(u.id).await.unwrap(), Some(data.clone()));
    assert_eq!(
        m.upload(u.id).await.unwrap().unwrap().state,
        UploadState::Committed
    );

    // A file in chunks has no inline content; an unknown id neither.
    let chunked = store_file(m, 10, 8000).await;
    assert!(!m.file(chunked).await.unwrap().unwrap().inline);
    assert_eq!(m.inline_data(chunked).await.unwrap(), None);
    assert_eq!(m.inline_data(FileId::new()).await.unwrap(), None);

    // Content that does not match the declared size, or none, records nothing.
    for (size, bad) in [(n + 1, data.clone()), (0, bytes::Bytes::new())] {
        let u = new_upload("bad");
        assert!(matches!(
            m.create_inline_file(&u, &commit(size), bad).await,
            Err(MetaError::InvalidManifest { .. })
        ));
        assert!(m.file(u.id).await.unwrap().is_none());
        assert!(m.upload(u.id).await.unwrap().is_none());
    }

    // Quota: charged at creation, refused whole past it, credited at deletion.
    let a = account("inline-quota", Some(n + 5));
    m.create_account(&a).await.unwrap();
    let mut owned = new_upload("owned");
    owned.owner = Some(a.id);
    let of = m
        .create_inline_file(&owned, &commit(n), data.clone())
        .await
        .unwrap();
    assert_eq!(of.owner, Some(a.id));
    assert_eq!(used(m, a.id).await, n);
    let mut over = new_upload("over");
    over.owner = Some(a.id);
    match m.create_inline_file(&over, &commit(n), data.clone()).await {
        Err(MetaError::QuotaExceeded { quota, used, size }) => {
            assert_eq!((quota, used, size), (n + 5, n, n))
        }
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }
    assert!(m.file(over.id).await.unwrap().is_none());
    assert_eq!(m.inline_data(over.id).await.unwrap(), None);
    assert_eq!(used(m, a.id).await, n);

    // Deleting the file deletes its content; a second delete finds nothing.
    for (id, credited) in [(u.id, None), (owned.id, Some(a.id))] {
        assert!(m.delete_file(id).await.unwrap());
        assert!(m.file(id).await.unwrap().is_none());
        assert_eq!(m.inline_data(id).await.unwrap(), None);
        assert!(!m.delete_file(id).await.unwrap());
        if let Some(a) = credited {
            assert_eq!(used(m, a).await, 0);
        }
    }
}

/// A file keeps the digest it was committed with, algorithm and all, on every read: BLAKE3
/// for files stored now, SHA-256 for files from earlier versions (their rows predate the
/// `blake3` column).
pub async fn both_digest_algorithms_are_kept_as_committed(m: &dyn MetaStore) {
    for digest in [
        FileDigest::Blake3("b3".repeat(32)),
        FileDigest::Sha256("5a".repeat(32)),
    ] {
        let u = new_upload("digest");
        m.create_upload(&u).await.unwrap();
        m.add_chunks(u.id, &chunks_for(10, 9100)).await.unwrap();
        let c = CommitFile {
            digest: digest.clone(),
            ..commit(10)
        };
        let f = m.commit_upload(u.id, &c).await.unwrap();
        assert_eq!(f.digest, digest, "as the commit returns it");
        assert_eq!(m.file(u.id).await.unwrap().unwrap().digest, digest);
        assert_eq!(listed(m, u.id).await.unwrap().digest, digest);
        let start = m.file_with_manifest(u.id, 10).await.unwrap().unwrap();
        assert_eq!(start.file.digest, digest);

        let data = bytes::Bytes::from_static(b"tiny");
        let u = new_upload("inline digest");
        let f = m
            .create_inline_file(
                &u,
                &CommitFile {
                    digest: digest.clone(),
                    ..commit(4)
                },
                data,
            )
            .await
            .unwrap();
        assert_eq!(f.digest, digest);
        assert_eq!(m.file(u.id).await.unwrap().unwrap().digest, digest);
        let start = m.file_with_manifest(u.id, 10).await.unwrap().unwrap();
        assert_eq!(start.file.digest, digest);
    }
}

/// The chunk rows `hashes` as `chunks` lists them: (hash, live), in hash order.
async fn chunk_rows(m: &dyn MetaStore, hashes: &[ChunkId]) -> Vec<(ChunkId, bool)> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = m.chunks(after, 1000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.hash);
        out.extend(
            page.iter()
                .filter(|c| hashes.contains(&c.hash))
                .map(|c| (c.hash, c.live)),
        );
    }
    out
}

/// `chunk_lost`: a chunk a committed file has becomes one the next upload writes again (every
/// way of recording a chunk says `MustWrite`), stays listed as one whose blob must exist,
/// and is deduplicated again once that upload commits. A chunk only an open upload holds, and
/// an unknown one, are left alone.
pub async fn a_lost_chunk_is_written_again_and_stays_listed(m: &dyn MetaStore) {
    let kept = store_file(m, 8, 9100).await;
    let (lost, other) = (hash(9100), hash(9101));
    m.chunk_lost(&lost, now()).await.unwrap();
    let mut want = vec![(lost, true), (other, true)];
    want.sort();
    assert_eq!(
        chunk_rows(m, &[lost, other]).await,
        want,
        "still listed live"
    );

    let opened = new_upload("opened with it");
    assert_eq!(
        m.create_upload_with_chunks(&opened, &chunks_for(4, 9100))
            .await
            .unwrap(),
        vec![ChunkState::MustWrite]
    );
    // A whole file's transaction commits, and so makes the chunk live again (its caller
    // wrote the blob first): record it lost again after.
    let whole = new_upload("whole");
    let (_, states) = m
        .create_file(&whole, &chunks_for(4, 9100), &commit(4))
        .await
        .unwrap();
    assert_eq!(states, vec![ChunkState::MustWrite]);
    m.chunk_lost(&lost, now()).await.unwrap();
    let u = new_upload("again");
    m.create_upload(&u).await.unwrap();
    assert_eq!(
        m.add_chunks(u.id, &chunks_for(8, 9100)).await.unwrap(),
        vec![ChunkState::MustWrite, ChunkState::Stored]
    );
    m.commit_upload(u.id, &commit(8)).await.unwrap();
    let after = new_upload("after");
    m.create_upload(&after).await.unwrap();
    assert_eq!(
        m.add_chunks(after.id, &chunks_for(8, 9100)).await.unwrap(),
        vec![ChunkState::Stored; 2],
        "written again and committed: deduplicated again"
    );
    assert_eq!(m.manifest(kept, 0, 10).await.unwrap().len(), 2);

    // Only an open upload holds it: nothing to record; unknown: nothing either.
    let open = new_upload("open");
    m.create_upload(&open).await.unwrap();
    m.add_chunks(open.id, &chunks_for(4, 9200)).await.unwrap();
    m.chunk_lost(&hash(9200), now()).await.unwrap();
    m.chunk_lost(&hash(9299), now()).await.unwrap();
    assert_eq!(
        chunk_rows(m, &[hash(9200)]).await,
        vec![(hash(9200), false)]
    );
    for u in [opened.id, after.id, open.id] {
        m.abort_upload(u).await.unwrap();
    }
}
