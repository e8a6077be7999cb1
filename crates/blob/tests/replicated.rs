//! The replicated store over real locations: local directories, and Azurite containers mixed
//! with a local directory. One location is made to fail (a `FaultyBlobStore` around it, or its
//! files overwritten) in the middle of a stream of puts and gets.
//!
//! The Azurite tests need `CHUNKVAULT_TEST_AZURITE_ENDPOINT` (scripts/test sets it); without it
//! they fail, saying so.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use chunkvault_blob::{
    BlobConfig, BlobError, BlobStore, CopyState, Fault, FaultyBlobStore, Location,
    ObjectStoreBlobs, Policy, ReplicatedBlobStore, RetryOptions, conformance,
};
use chunkvault_types::ChunkId;
use futures::{StreamExt, TryStreamExt};

async fn local(dir: &std::path::Path, name: &str) -> ObjectStoreBlobs {
    ObjectStoreBlobs::open(
        &BlobConfig::Local {
            root: dir.join(name),
            fsync: false,
        },
        &RetryOptions::default(),
    )
    .await
    .expect("open a local location")
}

#[cfg(feature = "azure")]
async fn azurite() -> ObjectStoreBlobs {
    let endpoint = std::env::var("CHUNKVAULT_TEST_AZURITE_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "CHUNKVAULT_TEST_AZURITE_ENDPOINT is not set: these tests need Azurite. Run the \
             suite with scripts/test, which starts it."
        )
    });
    let account = std::env::var("CHUNKVAULT_TEST_AZURITE_ACCOUNT")
        .unwrap_or_else(|_| "devstoreaccount1".into());
    let key = std::env::var("CHUNKVAULT_TEST_AZURITE_KEY").unwrap_or_else(|_| {
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
            .into()
    });
    ObjectStoreBlobs::open(
        &BlobConfig::Azure(chunkvault_blob::AzureConfig {
            account,
            access_key: key,
            container: format!("t{}", uuid::Uuid::new_v4().simple()),
            endpoint: Some(endpoint),
        }),
        &RetryOptions::default(),
    )
    .await
    .expect("open an Azurite container")
}

/// Three locations, each behind a fault wrapper the test controls.
struct Three {
    store: ReplicatedBlobStore,
    faults: Vec<FaultyBlobStore<ObjectStoreBlobs>>,
    _dir: tempfile::TempDir,
}

const NAMES: [&str; 3] = ["a", "b", "c"];

async fn three_local(replicas: usize, write_quorum: usize) -> Three {
    let dir = tempfile::tempdir().unwrap();
    let mut stores = Vec::new();
    for n in NAMES {
        stores.push(local(dir.path(), n).await);
    }
    build(stores, dir, replicas, write_quorum)
}

#[cfg(feature = "azure")]
async fn two_azurite_one_local(replicas: usize, write_quorum: usize) -> Three {
    let dir = tempfile::tempdir().unwrap();
    let stores = vec![
        azurite().await,
        azurite().await,
        local(dir.path(), "c").await,
    ];
    build(stores, dir, replicas, write_quorum)
}

fn build(
    stores: Vec<ObjectStoreBlobs>,
    dir: tempfile::TempDir,
    replicas: usize,
    write_quorum: usize,
) -> Three {
    let faults: Vec<_> = stores.into_iter().map(FaultyBlobStore::new).collect();
    let locations = faults
        .iter()
        .zip(NAMES)
        .map(|(f, n)| Location {
            name: n.to_string(),
            store: Arc::new(f.clone()),
            draining: false,
        })
        .collect();
    let store = ReplicatedBlobStore::new(
        locations,
        Policy {
            replicas,
            write_quorum,
        },
    )
    .expect("valid policy");
    Three {
        store,
        faults,
        _dir: dir,
    }
}

fn chunk(n: u32, len: usize) -> (ChunkId, Bytes) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).wrapping_add(n) as u8)
        .collect();
    (ChunkId::of(&data), Bytes::from(data))
}

fn position(name: &str) -> usize {
    NAMES.iter().position(|n| *n == name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_local_dirs_conform() {
    for (r, w) in [(2, 1), (2, 2), (3, 2)] {
        let t = three_local(r, w).await;
        conformance::run_all(&t.store).await;
    }
}

#[cfg(feature = "azure")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_azurite_and_local_conform() {
    let t = two_azurite_one_local(2, 1).await;
    conformance::run_all(&t.store).await;
    let t = two_azurite_one_local(3, 2).await;
    conformance::run_all(&t.store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    let loc = |name: &str, store: ObjectStoreBlobs| Location {
        name: name.into(),
        store: Arc::new(store),
        draining: false,
    };
    let a = local(dir.path(), "a").await;
    let b = local(dir.path(), "b").await;
    let bad =
        |locs: Vec<Location>, replicas, write_quorum, word: &str| match ReplicatedBlobStore::new(
            locs,
            Policy {
                replicas,
                write_quorum,
            },
        ) {
            Err(BlobError::Config { message }) => assert!(message.contains(word), "{message}"),
            other => panic!("expected a config error about {word}, got {other:?}"),
        };
    bad(
        vec![loc("a", a.clone()), loc("b", b.clone())],
        3,
        1,
        "replicas",
    );
    bad(
        vec![loc("a", a.clone()), loc("b", b.clone())],
        2,
        3,
        "write_quorum",
    );
    bad(
        vec![loc("a", a.clone()), loc("a", b.clone())],
        1,
        1,
        "twice",
    );
}

/// replicas=2 W=1: one location goes down in the middle of a stream of puts and gets; no call
/// fails, every read is byte-identical; what was written meanwhile is repaired afterwards.
async fn one_location_down_mid_stream(t: Three) {
    let mut written = Vec::new();
    for n in 0..120u32 {
        if n == 40 {
            t.faults[1].set(Fault::Down);
        }
        let (id, data) = chunk(n, 1000 + n as usize);
        t.store
            .put(&id, data.clone())
            .await
            .unwrap_or_else(|e| panic!("put {n} with one location down: {e:?}"));
        written.push((id, data));
        // Read back everything so far, every tenth step.
        if n % 10 == 9 {
            for (id, data) in &written {
                let got = t.store.get(id).await.expect("get with one location down");
                assert_eq!(&got, data, "byte-identical read");
            }
        }
    }
    assert!(
        t.store
            .stats()
            .read_failovers
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "reads of chunks placed on the down location failed over"
    );
    t.faults[1].set(Fault::None);
    // Let background copies settle, then repair everything and check full policy.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut restored = 0;
    for (id, _) in &written {
        let o = t.store.repair_chunk(id, None).await.expect("repair");
        assert!(o.complete(), "{o:?}");
        restored += o.restored.len();
    }
    assert!(
        restored >= 20,
        "copies missed while down were restored: {restored}"
    );
    for (id, _) in &written {
        let h = t.store.inspect(id).await;
        assert_eq!(h.healthy(), 2, "{h:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_one_location_down_mid_stream() {
    one_location_down_mid_stream(three_local(2, 1).await).await;
}

#[cfg(feature = "azure")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_one_location_down_mid_stream() {
    one_location_down_mid_stream(two_azurite_one_local(2, 1).await).await;
}

/// replicas=2 W=2: a put whose placement includes the down location fails as unavailable;
/// puts placed on the two healthy ones still succeed.
async fn quorum_not_met_fails_cleanly(t: Three) {
    t.faults[0].set(Fault::Down);
    let (mut failed, mut ok) = (0, 0);
    for n in 0..60u32 {
        let (id, data) = chunk(n, 500);
        let placed = t.store.placement_of(&id);
        match t.store.put(&id, data.clone()).await {
            Ok(()) => {
                assert!(!placed.contains(&"a".to_string()));
                assert_eq!(t.store.get(&id).await.unwrap(), data);
                ok += 1;
            }
            Err(e) => {
                assert!(placed.contains(&"a".to_string()), "{placed:?}: {e:?}");
                assert!(e.is_unavailable(), "{e:?}");
                failed += 1;
            }
        }
    }
    assert!(failed > 20 && ok > 10, "failed {failed}, ok {ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_quorum_not_met_fails_cleanly() {
    quorum_not_met_fails_cleanly(three_local(2, 2).await).await;
}

#[cfg(feature = "azure")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_quorum_not_met_fails_cleanly() {
    quorum_not_met_fails_cleanly(two_azurite_one_local(2, 2).await).await;
}

/// A corrupt copy is skipped on read and rewritten by repair.
async fn corrupt_copy_is_skipped_and_repaired(t: Three) {
    let mut chunks = Vec::new();
    for n in 0..30u32 {
        let (id, data) = chunk(n, 4096);
        t.store.put(&id, data.clone()).await.unwrap();
        chunks.push((id, data));
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // Overwrite the first placed copy of every chunk with wrong bytes, in the real store.
    for (id, data) in &chunks {
        let first = &t.store.placement_of(id)[0];
        let raw = t.faults[position(first)].inner();
        let mut bad = data.to_vec();
        bad[7] ^= 0xff;
        raw.put(id, Bytes::from(bad)).await.unwrap();
    }
    for (id, data) in &chunks {
        assert_eq!(
            &t.store.get(id).await.unwrap(),
            data,
            "the good copy is served"
        );
        let h = t.store.inspect(id).await;
        assert_eq!(h.copies[0].1, CopyState::Corrupt);
        assert_eq!(h.healthy(), 1);
    }
    assert_eq!(
        t.store
            .stats()
            .corrupt_copies_seen
            .load(std::sync::atomic::Ordering::Relaxed),
        30
    );
    let queued = t.store.take_repair_queue();
    assert_eq!(queued.len(), 30, "every failed-over read queued its chunk");
    for id in queued {
        let o = t.store.repair_chunk(&id, None).await.unwrap();
        assert_eq!(o.restored.len(), 1, "{o:?}");
    }
    for (id, _) in &chunks {
        assert_eq!(t.store.inspect(id).await.healthy(), 2);
    }
    // Every copy corrupt: the store returns one, so the caller reports damage, not absence.
    let (id, data) = &chunks[0];
    for f in &t.faults {
        f.set(Fault::CorruptReads);
    }
    let got = t.store.get(id).await.unwrap();
    assert_ne!(&got, data);
    assert!(!id.matches(&got));
    let o = t.store.repair_chunk(id, None).await.unwrap();
    assert!(o.lost, "no healthy copy: nothing to restore from");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_corrupt_copy_is_skipped_and_repaired() {
    corrupt_copy_is_skipped_and_repaired(three_local(2, 1).await).await;
}

#[cfg(feature = "azure")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_corrupt_copy_is_skipped_and_repaired() {
    corrupt_copy_is_skipped_and_repaired(two_azurite_one_local(2, 1).await).await;
}

/// A wiped location (its directory removed) reads through the other copies; repair refills it
/// once the location exists again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_location_reads_through_and_refills() {
    let t = three_local(2, 1).await;
    let mut chunks = Vec::new();
    for n in 0..50u32 {
        let (id, data) = chunk(n, 2000);
        t.store.put(&id, data.clone()).await.unwrap();
        chunks.push((id, data));
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let root = t._dir.path().join("b");
    std::fs::remove_dir_all(&root).unwrap();
    for (id, data) in &chunks {
        assert_eq!(&t.store.get(id).await.unwrap(), data);
    }
    // The operator recreates the location (open writes the marker again).
    local(t._dir.path(), "b").await;
    let mut restored = 0;
    for (id, _) in &chunks {
        let o = t.store.repair_chunk(id, None).await.unwrap();
        assert!(o.complete(), "{o:?}");
        restored += o.restored.len();
    }
    let on_b = chunks
        .iter()
        .filter(|(id, _)| t.store.placement_of(id).contains(&"b".to_string()))
        .count();
    assert_eq!(restored, on_b);
    for (id, _) in &chunks {
        assert_eq!(t.store.inspect(id).await.healthy(), 2);
    }
}

/// Draining a location moves each of its copies to the placement that excludes it, then
/// deletes it there; every chunk stays at full policy and readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_every_copy_off_a_location() {
    let t = three_local(2, 2).await;
    let mut chunks = HashMap::new();
    for n in 0..60u32 {
        let (id, data) = chunk(n, 1500);
        t.store.put(&id, data.clone()).await.unwrap();
        chunks.insert(id, data);
    }
    let on_c: Vec<ChunkId> = t
        .store
        .list_location("c")
        .unwrap()
        .map_ok(|m| m.id)
        .try_collect()
        .await
        .unwrap();
    assert!(on_c.len() > 20, "c holds its share: {}", on_c.len());
    for id in &on_c {
        let o = t.store.repair_chunk(id, Some("c")).await.unwrap();
        assert!(o.complete(), "{o:?}");
    }
    let left: Vec<ChunkId> = t
        .store
        .list_location("c")
        .unwrap()
        .map_ok(|m| m.id)
        .try_collect()
        .await
        .unwrap();
    assert!(left.is_empty(), "c is empty after the drain: {left:?}");
    // With c gone, a and b hold both copies of everything.
    t.faults[2].set(Fault::Down);
    for (id, data) in &chunks {
        assert_eq!(&t.faults[0].get(id).await.unwrap(), data);
        assert_eq!(&t.faults[1].get(id).await.unwrap(), data);
        assert_eq!(&t.store.get(id).await.unwrap(), data);
    }
}

/// A second Azurite process of our own, killed in the middle of the test.
#[cfg(feature = "azure")]
struct OwnAzurite {
    child: tokio::process::Child,
    endpoint: String,
}

#[cfg(feature = "azure")]
impl OwnAzurite {
    async fn start() -> Self {
        use tokio::io::AsyncBufReadExt;
        // scripts/test installs Azurite here.
        let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tools/node_modules/.bin/azurite-blob");
        assert!(
            bin.exists(),
            "{} is missing: run scripts/test once (it installs Azurite with npm ci)",
            bin.display()
        );
        let workdir = std::env::temp_dir().join(format!("azurite-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&workdir).unwrap();
        let mut child = tokio::process::Command::new(bin)
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                "0",
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
            ])
            .current_dir(&workdir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start a second Azurite");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let port = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("listens on http://127.0.0.1:").nth(1) {
                    return rest.trim().parse::<u16>().unwrap();
                }
            }
            panic!("Azurite exited before listening");
        })
        .await
        .expect("Azurite starts within 30 s");
        // Keep reading its output: Node exits when stdout's pipe is closed.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}/devstoreaccount1"),
        }
    }

    async fn open(&self) -> ObjectStoreBlobs {
        ObjectStoreBlobs::open(
            &BlobConfig::Azure(chunkvault_blob::AzureConfig {
                account: "devstoreaccount1".into(),
                access_key: "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==".into(),
                container: format!("t{}", uuid::Uuid::new_v4().simple()),
                endpoint: Some(self.endpoint.clone()),
            }),
            &RetryOptions {
                connect_timeout: std::time::Duration::from_millis(500),
                request_timeout: std::time::Duration::from_secs(2),
                max_retries: 1,
                retry_timeout: std::time::Duration::from_secs(3),
            },
        )
        .await
        .expect("open a container on the second Azurite")
    }
}

/// replicas=2 W=1 over [a second Azurite process, the shared Azurite, a directory]: the second
/// Azurite is killed in the middle of a stream of puts and gets; nothing fails, every read is
/// byte-identical. Then with W=2, puts placed on the dead location fail as unavailable.
#[cfg(feature = "azure")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_process_killed_mid_stream() {
    let mut own = OwnAzurite::start().await;
    let dir = tempfile::tempdir().unwrap();
    let stores = vec![
        own.open().await,
        azurite().await,
        local(dir.path(), "c").await,
    ];
    let t = build(stores, dir, 2, 1);
    let mut written = Vec::new();
    let started = std::time::Instant::now();
    let mut gets = 0;
    for n in 0..90u32 {
        if n == 30 {
            own.child.kill().await.expect("kill the second Azurite");
        }
        let (id, data) = chunk(n, 20_000 + n as usize);
        t.store
            .put(&id, data.clone())
            .await
            .unwrap_or_else(|e| panic!("put {n}: {e:?}"));
        written.push((id, data));
        if n % 15 == 14 {
            for (id, data) in &written {
                assert_eq!(&t.store.get(id).await.expect("get"), data);
                gets += 1;
            }
        }
    }
    eprintln!(
        "90 puts and {gets} gets with a killed location took {:?}",
        started.elapsed()
    );
    assert!(
        t.store
            .stats()
            .read_failovers
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    // W=2 over the same locations: a put placed on the dead one fails cleanly.
    let strict = ReplicatedBlobStore::new(
        t.store.locations().to_vec(),
        Policy {
            replicas: 2,
            write_quorum: 2,
        },
    )
    .unwrap();
    let mut refused = 0;
    for n in 1000..1030u32 {
        let (id, data) = chunk(n, 1000);
        let on_dead = strict.placement_of(&id).contains(&"a".to_string());
        match strict.put(&id, data).await {
            Ok(()) => assert!(!on_dead),
            Err(e) => {
                assert!(on_dead && e.is_unavailable(), "{e:?}");
                refused += 1;
            }
        }
    }
    assert!(refused > 5, "{refused}");
}

/// A location that hangs costs a read about `HEDGE_AFTER`, not its timeout: the next copy is
/// asked in parallel and the first healthy answer wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_location_is_hedged() {
    let t = three_local(2, 2).await;
    let mut chunks = Vec::new();
    for n in 0..12u32 {
        let (id, data) = chunk(n, 3000);
        t.store.put(&id, data.clone()).await.unwrap();
        chunks.push((id, data));
    }
    t.faults[0].set(Fault::Stall(std::time::Duration::from_secs(10)));
    let started = std::time::Instant::now();
    for (id, data) in &chunks {
        assert_eq!(&t.store.get(id).await.unwrap(), data);
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < std::time::Duration::from_secs(8),
        "12 reads with one location hanging for 10 s took {elapsed:?}"
    );
    let hedges = t
        .store
        .stats()
        .read_hedges
        .load(std::sync::atomic::Ordering::Relaxed);
    let first_on_a = chunks
        .iter()
        .filter(|(id, _)| t.store.placement_of(id)[0] == "a")
        .count();
    assert_eq!(
        hedges as usize, first_on_a,
        "one hedge per chunk preferring a"
    );
    assert!(first_on_a > 0);
}

type Erasure = (
    ReplicatedBlobStore,
    Vec<FaultyBlobStore<ObjectStoreBlobs>>,
    tempfile::TempDir,
);

/// Erasure coding, 3 data + 2 parity shards over five local directories.
async fn erasure_five(write_quorum: usize) -> Erasure {
    erasure_over(&["e1", "e2", "e3", "e4", "e5"], write_quorum).await
}

/// Erasure coding, 3 data + 2 parity shards over local directories with these names.
async fn erasure_over(names: &[&str], write_quorum: usize) -> Erasure {
    let dir = tempfile::tempdir().unwrap();
    let mut faults = Vec::new();
    let mut locations = Vec::new();
    for name in names {
        let f = FaultyBlobStore::new(local(dir.path(), name).await);
        locations.push(Location {
            name: name.to_string(),
            store: Arc::new(f.clone()),
            draining: false,
        });
        faults.push(f);
    }
    let store = ReplicatedBlobStore::erasure(locations, 3, 2, write_quorum).unwrap();
    (store, faults, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_coded_store_conforms() {
    let (store, _faults, _dir) = erasure_five(5).await;
    // Every check but list_sees_every_chunk, whose sizes are the chunks' own: a listing of
    // an erasure-coded store sees shard sizes (listing reads no content).
    conformance::empty_store(&store).await;
    conformance::put_then_get(&store).await;
    conformance::put_is_idempotent(&store).await;
    conformance::missing_blob_is_not_found(&store).await;
    conformance::delete_is_idempotent(&store).await;
    conformance::empty_and_large_blobs(&store).await;
    conformance::concurrent_puts_of_one_chunk(&store).await;
    conformance::check_passes(&store).await;
    let (id, data) = chunk(5, 777);
    store.put(&id, data).await.unwrap();
    let listed: Vec<ChunkId> = store.list().map_ok(|m| m.id).try_collect().await.unwrap();
    assert_eq!(
        listed,
        vec![id],
        "each chunk listed once, not once per shard"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_any_two_of_five_locations_lost_every_chunk_reads() {
    let (store, faults, _dir) = erasure_five(5).await;
    let mut chunks = Vec::new();
    for n in 0..40u32 {
        let (id, data) = chunk(n, 10_000 + n as usize * 13);
        store.put(&id, data.clone()).await.unwrap();
        chunks.push((id, data));
    }
    for a in 0..5 {
        for b in a + 1..5 {
            faults[a].set(Fault::Down);
            faults[b].set(Fault::CorruptReads);
            for (id, data) in &chunks {
                assert_eq!(&store.get(id).await.unwrap(), data, "lost {a} and {b}");
            }
            faults[a].set(Fault::None);
            faults[b].set(Fault::None);
        }
    }
    // Three lost: not enough shards; the error says the store is unavailable.
    for f in &faults[..3] {
        f.set(Fault::Down);
    }
    assert!(store.get(&chunks[0].0).await.unwrap_err().is_unavailable());
    for f in &faults {
        f.set(Fault::None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_shards_are_repaired_and_drained() {
    let (store, faults, dir) = erasure_five(4).await;
    let mut chunks = Vec::new();
    for n in 0..30u32 {
        let (id, data) = chunk(n, 5_000);
        store.put(&id, data.clone()).await.unwrap();
        chunks.push((id, data));
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // Wipe one location, damage another's shards.
    std::fs::remove_dir_all(dir.path().join("e2")).unwrap();
    for (id, _) in &chunks {
        let raw = faults[3].inner();
        let mut bad = raw.get(id).await.unwrap().to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0x10;
        raw.put(id, Bytes::from(bad)).await.unwrap();
    }
    for (id, data) in &chunks {
        assert_eq!(&store.get(id).await.unwrap(), data);
        assert_eq!(store.inspect(id).await.healthy(), 3);
    }
    local(dir.path(), "e2").await;
    for (id, _) in &chunks {
        let o = store.repair_chunk(id, None).await.unwrap();
        assert_eq!(o.restored.len(), 2, "{o:?}");
        assert_eq!(store.inspect(id).await.healthy(), 5);
    }
    // Draining one of five would leave four for five shards: refused, nothing deleted.
    match store.repair_chunk(&chunks[0].0, Some("e1")).await {
        Err(BlobError::Config { message }) => {
            assert!(message.contains("add a location"), "{message}")
        }
        other => panic!("a drain below policy must be refused, got {other:?}"),
    }
    assert_eq!(store.inspect(&chunks[0].0).await.healthy(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_drain_moves_shards_to_the_sixth_location() {
    let (store, faults, _dir) = erasure_over(&["e1", "e2", "e3", "e4", "e5", "e6"], 5).await;
    let mut chunks = Vec::new();
    for n in 0..30u32 {
        let (id, data) = chunk(n, 3_000);
        store.put(&id, data.clone()).await.unwrap();
        chunks.push((id, data));
    }
    let on_e6: Vec<ChunkId> = store
        .list_location("e6")
        .unwrap()
        .map_ok(|m| m.id)
        .try_collect()
        .await
        .unwrap();
    assert!(!on_e6.is_empty());
    for id in &on_e6 {
        let o = store.repair_chunk(id, Some("e6")).await.unwrap();
        assert!(o.complete(), "{o:?}");
    }
    assert_eq!(store.list_location("e6").unwrap().count().await, 0);
    // e6 gone for good: every chunk still reads, even with one more location down.
    faults[5].set(Fault::Down);
    faults[0].set(Fault::Down);
    for (id, data) in &chunks {
        assert_eq!(&store.get(id).await.unwrap(), data);
    }
}
