//! End to end through the HTTP server with three local-directory locations, replicas = 2:
//! one location fails in the middle of a stream of uploads and downloads, one copy of every
//! chunk is corrupted, and repair brings everything back to full policy. The metadata records
//! where every copy lives: writes, failovers, repair, drain and GC keep those records right.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chunkvault_blob::{
    BlobConfig, BlobStore, Fault, FaultyBlobStore, Location, ObjectStoreBlobs, Policy,
    ReplicatedBlobStore, RetryOptions,
};
use chunkvault_core::{Principal, ScrubOptions, Vault, VaultConfig};
use chunkvault_meta::{ChunkCopy, CopyStatus, MetaStore, SqliteMeta, SqliteOptions};
use chunkvault_types::ChunkId;
use rand::{RngCore, SeedableRng};
use reqwest::StatusCode;

struct Server {
    base: String,
    http: reqwest::Client,
    vault: Vault,
    replicas: ReplicatedBlobStore,
    faults: Vec<FaultyBlobStore<ObjectStoreBlobs>>,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(write_quorum: usize) -> Server {
    start_over(&["a", "b", "c"], |locations| {
        ReplicatedBlobStore::new(
            locations,
            Policy {
                replicas: 2,
                write_quorum,
            },
        )
        .unwrap()
    })
    .await
}

/// A server over local-directory locations named `names`, with the policy `make` builds.
async fn start_over(
    names: &[&str],
    make: impl FnOnce(Vec<Location>) -> ReplicatedBlobStore,
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let meta = SqliteMeta::open(&SqliteOptions {
        path: dir.path().join("meta.db"),
        fsync: false,
        read_connections: 4,
    })
    .await
    .unwrap();
    meta.migrate().await.unwrap();
    let mut faults = Vec::new();
    let mut locations = Vec::new();
    for &name in names {
        let store = ObjectStoreBlobs::open(
            &BlobConfig::Local {
                root: dir.path().join(name),
                fsync: false,
            },
            &RetryOptions::default(),
        )
        .await
        .unwrap();
        let f = FaultyBlobStore::new(store);
        locations.push(Location {
            name: name.into(),
            store: Arc::new(f.clone()),
            draining: false,
        });
        faults.push(f);
    }
    let replicas = make(locations);
    // As `serve` builds it: the copies of every chunk are recorded in the metadata.
    let vault = Vault::replicated(
        replicas,
        Arc::new(meta),
        VaultConfig {
            chunk_size: 64 << 10,
            ..VaultConfig::default()
        },
    );
    let replicas = vault.replicas().unwrap().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let router = chunkvault_http::router(vault.clone());
    tokio::spawn(async move {
        let _ = chunkvault_http::serve(listener, router, async move {
            let _ = rx.await;
        })
        .await;
    });
    Server {
        base,
        http: reqwest::Client::new(),
        vault,
        replicas,
        faults,
        _dir: dir,
        _stop: tx,
    }
}

fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// (location, state) of the recorded copies, as a set.
fn states(copies: &[ChunkCopy]) -> std::collections::BTreeSet<(String, CopyStatus)> {
    copies
        .iter()
        .map(|c| (c.location.clone(), c.state))
        .collect()
}

impl Server {
    async fn copies(&self, id: &ChunkId) -> Vec<ChunkCopy> {
        self.vault.meta().chunk_copies(id).await.unwrap()
    }

    async fn manifest(&self, id: &str) -> Vec<chunkvault_types::ChunkEntry> {
        self.vault
            .manifest(&Principal::Open, id.parse().unwrap())
            .await
            .unwrap()
    }

    async fn upload(&self, name: &str, data: &[u8]) -> reqwest::Response {
        self.http
            .post(format!("{}/upload", self.base))
            .header("fileName", name)
            .header("fileType", "application/octet-stream")
            .body(Bytes::copy_from_slice(data))
            .send()
            .await
            .unwrap()
    }

    async fn upload_ok(&self, name: &str, data: &[u8]) -> String {
        let resp = self.upload(name, data).await;
        assert_eq!(resp.status(), StatusCode::CREATED, "{name}");
        let v: serde_json::Value = resp.json().await.unwrap();
        v["id"].as_str().unwrap().to_string()
    }

    async fn download(&self, id: &str) -> Vec<u8> {
        let resp = self
            .http
            .get(format!("{}/download/{id}", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "download {id}");
        resp.bytes().await.unwrap().to_vec()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_2_quorum_1_survive_a_location_failing_mid_stream() {
    let s = start(1).await;
    let mut files = Vec::new();
    for n in 0..24u64 {
        if n == 8 {
            s.faults[2].set(Fault::Down);
        }
        let data = random(n, 100_000 + n as usize * 7_919);
        let id = s.upload_ok(&format!("f{n}"), &data).await;
        files.push((id, data));
        for (id, data) in &files {
            assert!(
                s.download(id).await == *data,
                "byte-identical download of {id}"
            );
        }
    }
    // Back up: repair (what the server's background task runs) restores every missing copy.
    s.faults[2].set(Fault::None);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = s.vault.repair().await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert!(
        !report.restored.is_empty(),
        "copies missed while c was down are restored"
    );
    let scrub = s.vault.scrub(&ScrubOptions::default()).await.unwrap();
    assert!(
        scrub.is_clean(),
        "every chunk at full policy: {:?}",
        scrub.findings
    );
    assert_eq!(
        s.vault.repair().await.unwrap().restored.len(),
        0,
        "a second repair has nothing to do"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_2_quorum_2_refuse_uploads_placed_on_a_down_location() {
    let s = start(2).await;
    s.faults[0].set(Fault::Down);
    // 20 chunks of 64 KiB: some is placed on a with near certainty (each chunk 2/3).
    let data = random(1, 20 * (64 << 10));
    let resp = s.upload("big", &data).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "blob_store_unavailable");
    let list: serde_json::Value = s
        .http
        .get(format!("{}/files", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list["files"].as_array().unwrap().len(),
        0,
        "nothing visible"
    );
    s.faults[0].set(Fault::None);
    let id = s.upload_ok("big", &data).await;
    assert!(s.download(&id).await == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_copies_are_served_around_then_repaired() {
    let s = start(2).await;
    let data = random(7, 10 * (64 << 10) + 123);
    let id = s.upload_ok("f", &data).await;
    let manifest = s
        .vault
        .manifest(&chunkvault_core::Principal::Open, id.parse().unwrap())
        .await
        .unwrap();
    // Corrupt the preferred copy of every chunk, underneath the replicated store.
    for e in &manifest {
        let first = &s.replicas.placement_of(&e.hash)[0];
        let i = ["a", "b", "c"].iter().position(|n| n == first).unwrap();
        let raw = s.faults[i].inner();
        let mut bad = raw.get(&e.hash).await.unwrap().to_vec();
        bad[0] ^= 0x55;
        raw.put(&e.hash, Bytes::from(bad)).await.unwrap();
    }
    assert!(s.download(&id).await == data, "the good copies are served");
    // The reads recorded what they found: the preferred copy corrupt, the other one intact.
    for e in &manifest {
        let placed = s.replicas.placement_of(&e.hash);
        assert_eq!(
            states(&s.copies(&e.hash).await),
            vec![
                (placed[0].clone(), CopyStatus::Corrupt),
                (placed[1].clone(), CopyStatus::Ok)
            ]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>(),
        );
    }
    let scrub = s.vault.scrub(&ScrubOptions::default()).await.unwrap();
    assert_eq!(scrub.findings.len(), manifest.len());
    assert!(scrub.findings.iter().all(|f| f.problem == "below_policy"));
    // The reads queued every chunk; the queued repair (the server's 5-second task) fixes them.
    let report = s.vault.repair_queued().await.unwrap();
    assert_eq!(report.restored.len(), manifest.len(), "{report:?}");
    for e in &manifest {
        assert!(
            s.copies(&e.hash)
                .await
                .iter()
                .all(|c| c.state == CopyStatus::Ok),
            "repair recorded the restored copies"
        );
    }
    // The counters of all this are on /metrics (the recorder is shared by the tests of this
    // file, which run at once: at least what this test caused).
    let metrics = s
        .http
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} is not on /metrics:\n{metrics}"))
    };
    let n = manifest.len() as f64;
    assert!(value("chunkvault_replica_corrupt_copies_seen_total") >= n);
    assert!(value("chunkvault_replica_read_failovers_total") >= n);
    assert!(value("chunkvault_replica_repairs_queued_total") >= n);
    assert!(value("chunkvault_replica_copies_restored_total") >= n);
    assert!(value("chunkvault_replica_repair_queue_chunks") >= 0.0);
    assert!(value("chunkvault_replica_chunks_below_policy") >= 0.0);
    assert!(
        s.vault
            .scrub(&ScrubOptions::default())
            .await
            .unwrap()
            .is_clean()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_deletes_every_copy_on_every_location() {
    use futures::TryStreamExt;
    let s = start(1).await;
    let data = random(3, 6 * (64 << 10));
    let id = s.upload_ok("f", &data).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = s
        .http
        .delete(format!("{}/files/{id}", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let report = s
        .vault
        .gc(&chunkvault_core::GcOptions {
            grace: Duration::ZERO,
            holder: "test".into(),
            lease_ttl: Duration::from_secs(60),
        })
        .await
        .unwrap();
    assert_eq!(report.deleted_unreferenced.len(), 6);
    for f in &s.faults {
        let left: Vec<_> = f.inner().list().try_collect().await.unwrap();
        assert!(
            left.is_empty(),
            "{} still holds {left:?}",
            f.inner().describe()
        );
    }
}

/// Writes record their copies; a drain moves the records with the copies, and reads then go
/// straight to the recorded copies (placement still names the drained location first for some
/// chunks, which without records would cost a failover per chunk); GC removes the records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn location_records_follow_writes_drain_reads_and_gc() {
    let s = start(2).await;
    let data = random(11, 12 * (64 << 10));
    let id = s.upload_ok("f", &data).await;
    let manifest = s.manifest(&id).await;
    for e in &manifest {
        let expected: std::collections::BTreeSet<_> = s
            .replicas
            .placement_of(&e.hash)
            .into_iter()
            .map(|l| (l, CopyStatus::Ok))
            .collect();
        assert_eq!(states(&s.copies(&e.hash).await), expected, "written copies");
    }
    let first_on_c = manifest
        .iter()
        .filter(|e| s.replicas.placement_of(&e.hash)[0] == "c")
        .count();
    assert!(first_on_c > 0, "some chunk prefers c (fixed seed)");

    let report = s.vault.drain("c").await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    for e in &manifest {
        let copies = s.copies(&e.hash).await;
        assert_eq!(
            states(&copies),
            [
                ("a".to_string(), CopyStatus::Ok),
                ("b".to_string(), CopyStatus::Ok)
            ]
            .into_iter()
            .collect(),
            "after the drain both copies are recorded on a and b, none on c"
        );
    }

    let stats = s.replicas.stats();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let (failovers, missing) = (
        load(&stats.read_failovers),
        load(&stats.missing_copies_seen),
    );
    assert!(s.download(&id).await == data);
    assert_eq!(
        (
            load(&stats.read_failovers),
            load(&stats.missing_copies_seen)
        ),
        (failovers, missing),
        "no read asked c, which placement prefers for {first_on_c} chunks"
    );

    let resp = s
        .http
        .delete(format!("{}/files/{id}", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    s.vault
        .gc(&chunkvault_core::GcOptions {
            grace: Duration::ZERO,
            holder: "test".into(),
            lease_ttl: Duration::from_secs(60),
        })
        .await
        .unwrap();
    for e in &manifest {
        assert!(s.copies(&e.hash).await.is_empty(), "GC removed the records");
    }
}

/// A wiped location: reads go around it, and repair re-creates its copies and records them
/// as verified again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_locations_records_are_repaired() {
    let s = start(2).await;
    let data = random(12, 16 * (64 << 10) + 5);
    let id = s.upload_ok("f", &data).await;
    let manifest = s.manifest(&id).await;
    std::fs::remove_dir_all(s._dir.path().join("b")).unwrap();
    assert!(
        s.download(&id).await == data,
        "reads go around the wiped location"
    );
    let before_repair = time::OffsetDateTime::now_utc();
    let report = s.vault.repair().await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    let on_b = manifest
        .iter()
        .filter(|e| s.replicas.placement_of(&e.hash).contains(&"b".to_string()))
        .count();
    assert!(on_b > 0);
    assert_eq!(report.restored.len(), on_b);
    for e in &manifest {
        let copies = s.copies(&e.hash).await;
        assert_eq!(copies.len(), 2);
        for c in &copies {
            assert_eq!(c.state, CopyStatus::Ok);
            assert!(
                c.verified_at >= before_repair - Duration::from_millis(1),
                "repair verified (or rewrote) every placed copy: {c:?}"
            );
        }
    }
    assert!(
        s.vault
            .scrub(&ScrubOptions::default())
            .await
            .unwrap()
            .is_clean()
    );
}

/// Erasure coding 4 + 2 over six locations: every shard is recorded with its index where
/// placement put it; reads take the data shards only (the parity locations down cost no
/// failover), rebuild from parity when a data shard is gone, and repair records the rebuilt
/// shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_coded_shards_are_recorded_and_read_data_first() {
    let names = ["a", "b", "c", "d", "e", "f"];
    let s = start_over(&names, |locations| {
        ReplicatedBlobStore::erasure(locations, 4, 2, 6).unwrap()
    })
    .await;
    let data = random(13, 50_000);
    let id = s.upload_ok("ec", &data).await;
    let manifest = s.manifest(&id).await;
    assert_eq!(manifest.len(), 1);
    let chunk = manifest[0].hash;
    let placed = s.replicas.placement_of(&chunk);
    let mut recorded: Vec<(String, Option<u32>, CopyStatus)> = s
        .copies(&chunk)
        .await
        .into_iter()
        .map(|c| (c.location, c.shard, c.state))
        .collect();
    recorded.sort_by_key(|c| c.1);
    let expected: Vec<(String, Option<u32>, CopyStatus)> = placed
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), Some(i as u32), CopyStatus::Ok))
        .collect();
    assert_eq!(
        recorded, expected,
        "shard i recorded on the i-th placed location"
    );

    let fault = |name: &str| &s.faults[names.iter().position(|n| *n == name).unwrap()];
    let stats = s.replicas.stats();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    // Both parity locations down: the data shards suffice and nothing is skipped.
    fault(&placed[4]).set(Fault::Down);
    fault(&placed[5]).set(Fault::Down);
    let failovers = load(&stats.read_failovers);
    assert!(s.download(&id).await == data);
    assert_eq!(
        load(&stats.read_failovers),
        failovers,
        "parity shards were not read"
    );
    // Parity back, one data shard deleted: rebuilt from parity, counted as a failover.
    fault(&placed[4]).set(Fault::None);
    fault(&placed[5]).set(Fault::None);
    fault(&placed[1]).inner().delete(&chunk).await.unwrap();
    assert!(s.download(&id).await == data);
    assert!(load(&stats.read_failovers) > failovers);
    let missing = s
        .copies(&chunk)
        .await
        .into_iter()
        .find(|c| c.location == placed[1])
        .unwrap();
    assert_eq!(
        (missing.state, missing.shard),
        (CopyStatus::Missing, Some(1)),
        "the read recorded the lost shard, keeping its index"
    );
    let report = s.vault.repair().await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.restored.len(), 1);
    assert!(
        s.copies(&chunk)
            .await
            .iter()
            .all(|c| c.state == CopyStatus::Ok),
        "repair recorded the rebuilt shard"
    );
}

/// Copies a write could not store are recorded as missing, so the repair queue survives a
/// restart: with the in-memory queue gone, the queued repair still finds and restores them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_not_written_are_repaired_after_a_restart() {
    let s = start(1).await;
    s.faults[2].set(Fault::Down);
    let data = random(14, 12 * (64 << 10));
    let id = s.upload_ok("f", &data).await;
    let manifest = s.manifest(&id).await;
    let on_c: Vec<ChunkId> = manifest
        .iter()
        .map(|e| e.hash)
        .filter(|h| s.replicas.placement_of(h).contains(&"c".to_string()))
        .collect();
    assert!(!on_c.is_empty(), "c holds a share (fixed seed)");
    // The background writes to c fail at once (the fault), then are recorded.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut recorded = 0;
        for h in &on_c {
            let copies = s.copies(h).await;
            if copies
                .iter()
                .any(|c| c.location == "c" && c.state == CopyStatus::Missing)
            {
                recorded += 1;
            }
        }
        if recorded == on_c.len() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{recorded} of {} copies on c recorded missing",
            on_c.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut bad = s
        .vault
        .meta()
        .chunks_with_bad_copies(None, 100)
        .await
        .unwrap();
    bad.sort();
    let mut expected = on_c.clone();
    expected.sort();
    assert_eq!(bad, expected);

    // A restart loses the in-memory queue; c comes back.
    s.replicas.take_repair_queue();
    s.faults[2].set(Fault::None);
    let report = s.vault.repair_queued().await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.restored.len(), on_c.len());
    assert!(
        s.vault
            .meta()
            .chunks_with_bad_copies(None, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.vault
            .scrub(&ScrubOptions::default())
            .await
            .unwrap()
            .is_clean()
    );
}
