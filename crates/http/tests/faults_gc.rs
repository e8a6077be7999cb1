//! Visibility under faults (blob store failures, clients that go away mid-upload) and garbage
//! collection, over a real socket.

#[macro_use]
mod common;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use chunkvault_blob::{Fault, Hook};
use chunkvault_core::{Stats, VaultConfig};
use chunkvault_types::ChunkId;
use common::*;
use reqwest::StatusCode;

backend_tests!(
    blob_put_failure_is_503_and_nothing_visible,
    full_disk_is_507_and_nothing_visible,
    a_failed_upload_keeps_no_blobs,
    client_error_mid_upload_leaves_nothing,
    client_gone_mid_upload_leaves_nothing,
    gc_removes_only_unreferenced_chunks,
    gc_concurrent_with_uploads_loses_nothing,
    small_file_written_before_gc_collects_it_is_written_again,
    gc_concurrent_with_small_uploads_loses_nothing,
);

const C: usize = SMALL_CHUNK;

/// Uploads `data` as a multipart form or as a raw body.
async fn upload_as(s: &TestServer, form: bool, name: &str, data: &[u8]) -> reqwest::Response {
    let ty = "application/octet-stream";
    if form {
        s.upload_form(name, ty, data).await
    } else {
        s.upload_raw(name, ty, data).await
    }
}

/// Lifts a put countdown. `fail_puts_after` takes no "off"; a count this large never runs out.
fn lift_countdown(s: &TestServer) {
    s.faulty.fail_puts_after(1 << 40);
}

async fn blob_put_failure_is_503_and_nothing_visible(backend: Backend) {
    let s = TestServer::start(backend, C).await;
    let kept_data = random_bytes(2 * C + 1, fresh_seed());
    let kept = s.put_file("kept.bin", &kept_data).await;
    let before = s.listed_ids().await;
    let mut aborted = 0;

    // The store fails after some puts: early in the body, and at its very last chunk.
    let data = random_bytes(6 * C + 10, fresh_seed());
    for allowed in [0u64, 2, 6] {
        for form in [false, true] {
            s.faulty.fail_puts_after(allowed);
            let resp = upload_as(&s, form, "fails.bin", &data).await;
            assert!(
                resp.headers().get("retry-after").is_some(),
                "503 carries Retry-After"
            );
            expect_error(
                resp,
                StatusCode::SERVICE_UNAVAILABLE,
                "blob_store_unavailable",
            )
            .await;
            aborted += 1;
            lift_countdown(&s);
            assert_eq!(s.listed_ids().await, before, "a failed upload is invisible");
        }
    }
    // Every put failing.
    s.faulty.set(Fault::FailPuts);
    expect_error(
        s.upload_raw("fails.bin", "application/octet-stream", &data)
            .await,
        StatusCode::SERVICE_UNAVAILABLE,
        "blob_store_unavailable",
    )
    .await;
    aborted += 1;
    s.faulty.set(Fault::None);
    assert_eq!(s.listed_ids().await, before);

    // Every failed upload was aborted, and GC leaves exactly what committed files reference.
    s.wait_aborted(aborted).await;
    s.assert_store_converges().await;
    let blobs = s.blob_ids().await;
    let kept_chunks: HashSet<ChunkId> = chunk_ids(&kept_data, C).into_iter().collect();
    assert_eq!(blobs, kept_chunks);

    // Once the store is back, the same upload works and the old file is intact.
    let resp = s
        .upload_raw("fails.bin", "application/octet-stream", &data)
        .await;
    let info = expect_created(resp, "fails.bin", "application/octet-stream", &data, &s).await;
    expect_download(
        &s,
        info["id"].as_str().unwrap(),
        &data,
        "fails.bin",
        "application/octet-stream",
    )
    .await;
    expect_download(
        &s,
        &kept,
        &kept_data,
        "kept.bin",
        "application/octet-stream",
    )
    .await;
}

/// A request body that yields `data` in half-chunk pieces, pausing between them so each piece
/// really leaves the client, and then fails (`fail_at_end`) or never ends.
fn paced_body(
    data: Vec<u8>,
    fail_at_end: bool,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + 'static {
    let pieces: Vec<Bytes> = data.chunks(C / 2).map(Bytes::copy_from_slice).collect();
    futures::stream::unfold(
        (pieces.into_iter(), fail_at_end),
        |(mut rest, fail)| async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            match rest.next() {
                Some(piece) => Some((Ok(piece), (rest, fail))),
                None if fail => Some((
                    Err(std::io::Error::other("the client's source failed")),
                    (rest, false),
                )),
                None => futures::future::pending().await,
            }
        },
    )
}

/// Waits until the server has read at least `n` body bytes.
async fn wait_bytes_in(s: &TestServer, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while Stats::get(&s.stats().bytes_in) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server read only {} body bytes",
            Stats::get(&s.stats().bytes_in)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A full disk is not the store being down: 507 with its own code and no Retry-After, for
/// both forms, a file of one chunk (written before its metadata) and one of several; nothing
/// shows, and once there is room again the same upload works.
async fn full_disk_is_507_and_nothing_visible(backend: Backend) {
    let s = TestServer::start(backend, C).await;
    let kept_data = random_bytes(C + 7, fresh_seed());
    let kept = s.put_file("kept.bin", &kept_data).await;
    let mut before = s.listed_ids().await;
    s.faulty.set(Fault::Full);
    let mut aborted = 0;
    let inline_max = VaultConfig::default().inline_max;
    for size in [1, inline_max, inline_max + 1, C - 1, 3 * C + 5] {
        let data = random_bytes(size, fresh_seed());
        for form in [false, true] {
            let resp = upload_as(&s, form, "full.bin", &data).await;
            if !form && size <= inline_max {
                // Kept in the metadata store: the full blob store is not needed.
                let ty = "application/octet-stream";
                let v = expect_created(resp, "full.bin", ty, &data, &s).await;
                assert_eq!(v["inline"], true, "{v}");
                before = s.listed_ids().await;
                continue;
            }
            assert!(resp.headers().get("retry-after").is_none());
            expect_error(resp, StatusCode::INSUFFICIENT_STORAGE, "storage_full").await;
            // A one-chunk raw body is written before anything is recorded: no upload to abort.
            if form || size > C {
                aborted += 1;
            }
            assert_eq!(s.listed_ids().await, before, "a failed upload is invisible");
        }
    }
    s.faulty.set(Fault::None);
    s.wait_aborted(aborted).await;
    s.assert_store_converges().await;
    let data = random_bytes(3 * C + 5, fresh_seed());
    let resp = s.upload_raw("room.bin", "text/plain", &data).await;
    let info = expect_created(resp, "room.bin", "text/plain", &data, &s).await;
    expect_download(
        &s,
        info["id"].as_str().unwrap(),
        &data,
        "room.bin",
        "text/plain",
    )
    .await;
    expect_download(
        &s,
        &kept,
        &kept_data,
        "kept.bin",
        "application/octet-stream",
    )
    .await;
}

/// Waits until the blob store holds exactly `want`, without running GC.
async fn wait_for_blobs(s: &TestServer, want: &HashSet<ChunkId>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let blobs = s.blob_ids().await;
        if &blobs == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} blobs stored, {} expected",
            blobs.len(),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An upload that fails gives back what it had written at once, not after GC's grace period:
/// the chunks only it held are deleted when it is aborted, and a chunk another file holds is
/// kept. Covers a store failing mid-body, a full disk, and a session ended by its client.
async fn a_failed_upload_keeps_no_blobs(backend: Backend) {
    let s = TestServer::start(backend, C).await;
    let kept_data = random_bytes(2 * C + 1, fresh_seed());
    let kept = s.put_file("kept.bin", &kept_data).await;
    let kept_chunks: HashSet<ChunkId> = chunk_ids(&kept_data, C).into_iter().collect();
    wait_for_blobs(&s, &kept_chunks).await;

    // Shares its first chunk with the kept file; the rest is new.
    let mut data = kept_data[..C].to_vec();
    data.extend(random_bytes(5 * C + 3, fresh_seed()));
    let mut aborted = 0;
    for (allowed, form) in [(2u64, false), (4, true)] {
        s.faulty.fail_puts_after(allowed);
        let resp = upload_as(&s, form, "fails.bin", &data).await;
        expect_error(
            resp,
            StatusCode::SERVICE_UNAVAILABLE,
            "blob_store_unavailable",
        )
        .await;
        lift_countdown(&s);
        aborted += 1;
        s.wait_aborted(aborted).await;
        wait_for_blobs(&s, &kept_chunks).await;
    }
    s.faulty.set(Fault::Full);
    let resp = s.upload_raw("full.bin", "text/plain", &data).await;
    expect_error(resp, StatusCode::INSUFFICIENT_STORAGE, "storage_full").await;
    s.faulty.set(Fault::None);
    wait_for_blobs(&s, &kept_chunks).await;

    // A store down for everything, deletes included: what the failed upload held cannot be
    // deleted, and must not keep the same content's next upload waiting once it is back.
    s.faulty.set(Fault::Down);
    let resp = s.upload_raw("down.bin", "text/plain", &data).await;
    expect_error(
        resp,
        StatusCode::SERVICE_UNAVAILABLE,
        "blob_store_unavailable",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.faulty.set(Fault::None);
    let resp = s.upload_raw("back.bin", "text/plain", &data).await;
    let back = expect_created(resp, "back.bin", "text/plain", &data, &s).await;
    let back = back["id"].as_str().unwrap().to_string();
    expect_download(&s, &back, &data, "back.bin", "text/plain").await;
    s.client.delete(&back).await.unwrap();
    s.assert_store_converges().await;
    wait_for_blobs(&s, &kept_chunks).await;

    // A session whose client gives up: its stored chunks go with it.
    let created: serde_json::Value = s
        .http
        .post(s.url("/uploads"))
        .json(&serde_json::json!({"name": "s.bin", "size": 2 * C}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let part = random_bytes(C, fresh_seed());
    let put = s
        .http
        .put(s.url(&format!("/uploads/{id}/chunks/0")))
        .body(part.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let mut with_part = kept_chunks.clone();
    with_part.extend(chunk_ids(&part, C));
    assert_eq!(s.blob_ids().await, with_part);
    let gone = s.delete(&format!("/uploads/{id}")).await;
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    wait_for_blobs(&s, &kept_chunks).await;

    assert_eq!(s.listed_ids().await, vec![kept.clone()]);
    expect_download(
        &s,
        &kept,
        &kept_data,
        "kept.bin",
        "application/octet-stream",
    )
    .await;
}

async fn client_error_mid_upload_leaves_nothing(backend: Backend) {
    let s = TestServer::start(backend, C).await;
    let before = s.listed_ids().await;
    // Three chunks' worth arrive, then the client's source fails and the client aborts.
    let data = random_bytes(3 * C, fresh_seed());
    let result = s
        .http
        .post(s.url("/upload"))
        .header("fileName", "broken.bin")
        .body(reqwest::Body::wrap_stream(paced_body(data, true)))
        .send()
        .await;
    match result {
        Err(_) => {}
        // The server may have answered before the client gave up; never with success.
        Ok(resp) => assert!(
            resp.status().is_client_error(),
            "an upload whose body failed must not succeed: {}",
            resp.status()
        ),
    }
    assert!(
        Stats::get(&s.stats().bytes_in) >= C as u64,
        "the server received part of the body before the client failed"
    );
    s.wait_aborted(1).await;
    assert_eq!(s.listed_ids().await, before);
    s.assert_store_converges().await;
    assert!(s.blob_ids().await.is_empty());
}

async fn client_gone_mid_upload_leaves_nothing(backend: Backend) {
    let s = TestServer::start(backend, C).await;
    let before = s.listed_ids().await;
    let data = random_bytes(5 * C / 2, fresh_seed());
    // A body that yields some chunks, then never ends; the client drops the request.
    let request = s
        .http
        .post(s.url("/upload"))
        .header("fileName", "abandoned.bin")
        .header("fileSize", (10 * C).to_string())
        .body(reqwest::Body::wrap_stream(paced_body(data.clone(), false)))
        .send();
    let request = tokio::spawn(request);
    // Once the server has stored what arrived, go away.
    wait_bytes_in(&s, data.len() as u64).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    request.abort();
    assert!(request.await.unwrap_err().is_cancelled());
    s.wait_aborted(1).await;
    assert_eq!(s.listed_ids().await, before);
    s.assert_store_converges().await;
    assert!(s.blob_ids().await.is_empty());

    // The server still serves, and the same content uploads fine afterwards.
    let id = s.put_file("abandoned.bin", &data).await;
    expect_download(&s, &id, &data, "abandoned.bin", "application/octet-stream").await;
}

async fn gc_removes_only_unreferenced_chunks(backend: Backend) {
    let s = TestServer::start(backend, C).await;
    let shared = random_bytes(C, fresh_seed());
    // a = [shared, a1, a2], b = [shared, b1 (short)].
    let mut a = shared.clone();
    a.extend(random_bytes(2 * C, fresh_seed()));
    let mut b = shared.clone();
    b.extend(random_bytes(C / 3, fresh_seed()));
    let a_id = s.put_file("a.bin", &a).await;
    let b_id = s.put_file("b.bin", &b).await;
    let a_chunks = chunk_ids(&a, C);
    let b_chunks = chunk_ids(&b, C);
    assert_eq!(a_chunks[0], b_chunks[0]);
    assert_eq!(s.blob_ids().await.len(), 4);

    // GC with everything referenced deletes nothing.
    let report = s.gc("t").await;
    assert!(report.deleted_unreferenced.is_empty(), "{report:?}");
    assert!(report.deleted_orphans.is_empty(), "{report:?}");
    assert_eq!(s.blob_ids().await.len(), 4);

    s.client.delete(&a_id).await.unwrap();
    // Deleting makes the file invisible at once; its blobs wait for GC.
    assert_eq!(s.blob_ids().await.len(), 4);
    let report = s.gc("t").await;
    assert!(!report.skipped_lease_held);
    let deleted: HashSet<ChunkId> = report.deleted_unreferenced.iter().copied().collect();
    let unique_to_a: HashSet<ChunkId> = a_chunks[1..].iter().copied().collect();
    assert_eq!(deleted, unique_to_a);
    assert!(report.missing.is_empty(), "{report:?}");

    let blobs = s.blob_ids().await;
    for c in &a_chunks[1..] {
        assert!(
            !blobs.contains(c),
            "a chunk only the deleted file used is gone"
        );
    }
    assert!(blobs.contains(&a_chunks[0]), "the shared chunk stays");
    assert_eq!(blobs, b_chunks.iter().copied().collect::<HashSet<_>>());
    expect_download(&s, &b_id, &b, "b.bin", "application/octet-stream").await;

    // An orphan blob (written by no upload) is collected; a second GC has nothing to do.
    let orphan = random_bytes(500, fresh_seed());
    let orphan_id = ChunkId::of(&orphan);
    chunkvault_blob::BlobStore::put(&s.raw, &orphan_id, Bytes::from(orphan))
        .await
        .unwrap();
    // Azure's Last-Modified has one-second resolution: let the orphan age past the cutoff.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let report = s.gc("t").await;
    assert_eq!(report.deleted_orphans, vec![orphan_id]);
    let report = s.gc("t").await;
    assert!(report.deleted_unreferenced.is_empty() && report.deleted_orphans.is_empty());
    expect_download(&s, &b_id, &b, "b.bin", "application/octet-stream").await;

    // Deleting the last file that uses the shared chunk frees it too.
    s.client.delete(&b_id).await.unwrap();
    s.gc("t").await;
    assert!(s.blob_ids().await.is_empty());
    assert!(s.chunk_rows().await.is_empty());
}

async fn gc_concurrent_with_uploads_loses_nothing(backend: Backend) {
    let s = TestServer::start(backend, C).await;
    let content = random_bytes(4 * C + 17, fresh_seed());
    let other = random_bytes(2 * C, fresh_seed());
    let other_id = s.put_file("other.bin", &other).await;
    let mut live: Vec<(String, String)> = Vec::new();

    for round in 0..4 {
        // The content's chunks become unreferenced, so GC wants to delete exactly the chunks
        // the uploads below are about to reuse.
        let victim = s.put_file("victim.bin", &content).await;
        for (id, _) in live.drain(..) {
            s.client.delete(&id).await.unwrap();
        }
        s.client.delete(&victim).await.unwrap();

        let mut tasks = tokio::task::JoinSet::new();
        spawn_two_gcs(&s, &mut tasks);
        for i in 0..4 {
            let client = s.client.clone();
            let data = Bytes::from(content.clone());
            tasks.spawn(async move {
                let name = format!("r{round}-{i}.bin");
                let info = client
                    .upload_bytes(&name, "application/x-r", data)
                    .await
                    .expect("upload beside GC");
                Some((info.id.to_string(), name))
            });
        }
        while let Some(done) = tasks.join_next().await {
            if let Some(file) = done.expect("task") {
                live.push(file);
            }
        }
        assert_eq!(live.len(), 4);
        // Every committed file downloads whole, and so does the one GC never touched.
        for (id, _) in &live {
            let body = s.client.download_bytes(id).await.expect("download");
            assert!(body == content, "round {round}: file {id} lost data");
        }
        expect_download(
            &s,
            &other_id,
            &other,
            "other.bin",
            "application/octet-stream",
        )
        .await;
    }

    // A final GC with nothing in flight keeps every referenced blob and only those.
    s.assert_store_converges().await;
    for (id, name) in &live {
        expect_download(&s, id, &content, name, "application/x-r").await;
    }
    expect_download(
        &s,
        &other_id,
        &other,
        "other.bin",
        "application/octet-stream",
    )
    .await;
}

/// A small file's blob is written before its one metadata transaction. If GC deletes that very
/// blob (its content was unreferenced) between the write and the transaction, the upload finds
/// the blob gone after committing and writes it again: nothing committed is lost.
async fn small_file_written_before_gc_collects_it_is_written_again(backend: Backend) {
    let s = TestServer::start(backend, C).await;
    let content = random_bytes(C / 2 + 3, fresh_seed());
    let chunk = ChunkId::of(&content);
    let first = s.put_file("first.bin", &content).await;
    s.client.delete(&first).await.unwrap();

    let vault = s.vault.clone();
    let (collected, was_collected) = tokio::sync::oneshot::channel();
    s.faulty.after_next_put(Hook::new(async move {
        let report = vault.gc(&gc_now("between")).await.expect("gc");
        let _ = collected.send(report.deleted_unreferenced);
    }));
    let id = s.put_file("second.bin", &content).await;
    let deleted = was_collected.await.expect("the hook ran");
    assert!(
        deleted.contains(&chunk),
        "GC deleted the blob between its write and the file's record: {deleted:?}"
    );
    expect_download(&s, &id, &content, "second.bin", "application/octet-stream").await;
    s.assert_store_converges().await;
    expect_download(&s, &id, &content, "second.bin", "application/octet-stream").await;
}

/// Small files (one chunk, written before they are recorded) uploaded while GC runs, again and
/// again, against content GC wants to delete.
async fn gc_concurrent_with_small_uploads_loses_nothing(backend: Backend) {
    let s = TestServer::start(backend, C).await;
    let contents: Vec<Vec<u8>> = (0..3).map(|i| random_bytes(C - i, fresh_seed())).collect();
    let mut live: Vec<(String, usize)> = Vec::new();
    for round in 0..12 {
        let victims: Vec<String> =
            futures::future::join_all(contents.iter().map(|c| s.put_file("victim.bin", c))).await;
        for id in live.drain(..).map(|(id, _)| id).chain(victims) {
            s.client.delete(&id).await.unwrap();
        }
        let mut tasks = tokio::task::JoinSet::new();
        spawn_two_gcs(&s, &mut tasks);
        for i in 0..6 {
            let client = s.client.clone();
            let which = i % contents.len();
            let data = Bytes::from(contents[which].clone());
            tasks.spawn(async move {
                let info = client
                    .upload_bytes(&format!("r{round}-{i}.bin"), "application/x-r", data)
                    .await
                    .expect("upload beside GC");
                Some((info.id.to_string(), which))
            });
        }
        while let Some(done) = tasks.join_next().await {
            if let Some(file) = done.expect("task") {
                live.push(file);
            }
        }
        for (id, which) in &live {
            let body = s.client.download_bytes(id).await.expect("download");
            assert!(
                body == contents[*which],
                "round {round}: file {id} lost data"
            );
        }
    }
    s.assert_store_converges().await;
    for (id, which) in &live {
        let body = s.client.download_bytes(id).await.expect("download");
        assert!(body == contents[*which], "file {id} lost data after GC");
    }
}

/// GC options that collect everything unreferenced at once.
fn gc_now(holder: &str) -> chunkvault_core::GcOptions {
    chunkvault_core::GcOptions {
        grace: Duration::ZERO,
        holder: holder.into(),
        lease_ttl: Duration::from_secs(60),
    }
}

/// Two GC runs (two holders: one of them finds the lease taken) among `tasks`.
fn spawn_two_gcs<T: Send + 'static>(s: &TestServer, tasks: &mut tokio::task::JoinSet<Option<T>>) {
    for holder in ["gc-1", "gc-2"] {
        let vault = s.vault.clone();
        tasks.spawn(async move {
            vault.gc(&gc_now(holder)).await.expect("gc");
            None
        });
    }
}
