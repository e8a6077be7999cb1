//! The files API, health endpoints, concurrent uploads and deduplication, over a real socket.

#[macro_use]
mod common;

use std::time::Duration;

use bytes::Bytes;
use chunkvault_blob::Fault;
use chunkvault_core::Stats;
use chunkvault_types::ChunkId;
use common::*;
use reqwest::StatusCode;
use serde_json::Value;

backend_tests!(
    listing_is_newest_first_and_pages,
    invalid_limits_are_rejected,
    file_detail_has_the_ordered_manifest,
    delete_hides_the_file_everywhere,
    concurrent_uploads_all_round_trip,
    identical_content_is_stored_once,
    health_and_readiness,
);

const C: usize = SMALL_CHUNK;

async fn list_page(s: &TestServer, query: &str) -> Value {
    let resp = s.get(&format!("/files{query}")).await;
    assert_eq!(resp.status(), StatusCode::OK, "GET /files{query}");
    resp.json().await.expect("listing JSON")
}

fn page_ids(v: &Value) -> Vec<String> {
    v["files"]
        .as_array()
        .expect("files array")
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect()
}

async fn listing_is_newest_first_and_pages(backend: Backend) {
    let s = TestServer::start(backend, C).await;
    let empty = list_page(&s, "").await;
    assert_eq!(page_ids(&empty), Vec::<String>::new());
    assert!(empty["next"].is_null());

    let mut uploaded = Vec::new();
    for i in 0..5 {
        let data = random_bytes(100 + i, fresh_seed());
        uploaded.push(s.put_file(&format!("f{i}.bin"), &data).await);
    }
    let newest_first: Vec<String> = uploaded.iter().rev().cloned().collect();

    let all = list_page(&s, "").await;
    assert_eq!(page_ids(&all), newest_first);
    assert!(all["next"].is_null());
    let first = &all["files"][0];
    assert_eq!(first["name"], "f4.bin");
    assert_eq!(first["size"], 104);
    assert_eq!(first["type"], "application/octet-stream");

    // Pages of two: 2, 2, 1, each `next` the last id of its page.
    let mut seen = Vec::new();
    let mut query = "?limit=2".to_string();
    let mut pages = 0;
    loop {
        let page = list_page(&s, &query).await;
        let ids = page_ids(&page);
        pages += 1;
        seen.extend(ids.clone());
        match page["next"].as_str() {
            Some(next) => {
                assert_eq!(ids.len(), 2);
                assert_eq!(next, ids.last().unwrap());
                query = format!("?limit=2&after={next}");
            }
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, newest_first);

    // The typed client pages the same way.
    let page = s.client.list(Some(3), None).await.unwrap();
    assert_eq!(page.files.len(), 3);
    let rest = s.client.list(Some(3), page.next.as_deref()).await.unwrap();
    let ids: Vec<String> = page
        .files
        .iter()
        .chain(rest.files.iter())
        .map(|f| f.id.to_string())
        .collect();
    assert_eq!(ids, newest_first);
    assert!(rest.next.is_none());

    // `after` an id that is not a file still pages by id order.
    let oldest = chunkvault_types::FileId::new().to_string();
    let after_all = list_page(&s, &format!("?after={oldest}")).await;
    assert_eq!(page_ids(&after_all), newest_first);
    let limit_max = list_page(&s, "?limit=1000").await;
    assert_eq!(page_ids(&limit_max), newest_first);
}

async fn invalid_limits_are_rejected(backend: Backend) {
    let s = TestServer::start(backend, C).await;
    for bad in ["0", "1001", "x", "-1", "", "1.5", "99999999999"] {
        let resp = s
            .http
            .get(s.url("/files"))
            .query(&[("limit", bad)])
            .send()
            .await
            .unwrap();
        expect_error(resp, StatusCode::BAD_REQUEST, "invalid_limit").await;
    }
    for good in ["1", "1000"] {
        let resp = s
            .http
            .get(s.url("/files"))
            .query(&[("limit", good)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "limit={good}");
    }
}

async fn file_detail_has_the_ordered_manifest(backend: Backend) {
    let s = TestServer::start(backend, C).await;
    let data = random_bytes(4 * C + 123, fresh_seed());
    let resp = s
        .upload_raw("detail.bin", "application/x-detail", &data)
        .await;
    let created = expect_created(resp, "detail.bin", "application/x-detail", &data, &s).await;
    let id = created["id"].as_str().unwrap();

    let resp = s.get(&format!("/files/{id}")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    for key in [
        "id",
        "fileID",
        "name",
        "type",
        "size",
        "chunks",
        "chunk_size",
        "blake3",
        "created_at",
    ] {
        assert_eq!(v[key], created[key], "{key}");
    }
    let manifest = v["manifest"].as_array().expect("manifest array");
    let expected = chunk_ids(&data, C);
    assert_eq!(manifest.len(), expected.len());
    for (i, (entry, hash)) in manifest.iter().zip(&expected).enumerate() {
        assert_eq!(entry["index"], i as u64);
        assert_eq!(entry["offset"], (i * C) as u64);
        let len = if i + 1 == expected.len() { 123 } else { C };
        assert_eq!(entry["length"], len as u64);
        assert_eq!(entry["hash"], hash.to_hex());
    }

    // The typed client reads the same thing.
    let detail = s.client.stat(id).await.unwrap();
    assert_eq!(detail.file.blake3, Some(blake3_hex(&data)));
    assert_eq!(detail.file.sha256, None);
    assert_eq!(
        detail.manifest.iter().map(|e| e.hash).collect::<Vec<_>>(),
        expected
    );

    // The empty file has an empty manifest.
    let empty = s.put_file("empty.bin", b"").await;
    let detail = s.client.stat(&empty).await.unwrap();
    assert!(detail.manifest.is_empty());
    assert_eq!(detail.file.chunks, 0);
}

async fn delete_hides_the_file_everywhere(backend: Backend) {
    let s = TestServer::start(backend, C).await;
    let keep_data = random_bytes(C + 1, fresh_seed());
    let keep = s.put_file("keep.bin", &keep_data).await;
    let gone_data = random_bytes(2 * C + 1, fresh_seed());
    let gone = s.put_file("gone.bin", &gone_data).await;

    let resp = s.delete(&format!("/files/{gone}")).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.bytes().await.unwrap().is_empty());

    expect_error(
        s.get(&format!("/download/{gone}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    expect_error(
        s.get(&format!("/files/{gone}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let resp = s.delete(&format!("/files/{gone}")).await;
    expect_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(s.listed_ids().await, vec![keep.clone()]);
    expect_download(
        &s,
        &keep,
        &keep_data,
        "keep.bin",
        "application/octet-stream",
    )
    .await;

    // Through the typed client as well.
    s.client.delete(&keep).await.unwrap();
    assert!(s.listed_ids().await.is_empty());
    let err = s.client.stat(&keep).await.unwrap_err();
    assert_eq!(err.code(), Some("not_found"));
}

async fn concurrent_uploads_all_round_trip(backend: Backend) {
    let s = TestServer::start(backend, C).await;
    let contents: Vec<Vec<u8>> = (0..8)
        .map(|i| random_bytes(i * C / 2 + 3 * C + i, fresh_seed()))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, data) in contents.iter().enumerate() {
        let data = Bytes::from(data.clone());
        let client = s.client.clone();
        let http = s.http.clone();
        let url = s.url("/upload");
        tasks.spawn(async move {
            let name = format!("concurrent-{i}.bin");
            // Three ways in: the typed client, a streamed raw body, a multipart form.
            let info = match i % 3 {
                0 => client
                    .upload_bytes(&name, "application/x-c", data.clone())
                    .await
                    .expect("upload"),
                1 => {
                    let pieces: Vec<Result<Bytes, std::io::Error>> = data
                        .chunks(10_000)
                        .map(|c| Ok(Bytes::copy_from_slice(c)))
                        .collect();
                    client
                        .upload_stream(
                            &name,
                            "application/x-c",
                            Some(data.len() as u64),
                            futures::stream::iter(pieces),
                        )
                        .await
                        .expect("upload stream")
                }
                _ => {
                    let (ct, body) = Form::new()
                        .text("fileName", &name)
                        .text("fileType", "application/x-c")
                        .file("file", Some("x"), None, &data)
                        .finish();
                    let resp = http
                        .post(&url)
                        .header("content-type", ct)
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), StatusCode::CREATED);
                    resp.json::<chunkvault_types::FileInfo>().await.unwrap()
                }
            };
            (i, info)
        });
    }
    let mut ids = vec![String::new(); contents.len()];
    while let Some(done) = tasks.join_next().await {
        let (i, info) = done.expect("upload task");
        assert_eq!(info.size, contents[i].len() as u64);
        assert_eq!(info.blake3, Some(blake3_hex(&contents[i])));
        ids[i] = info.id.to_string();
    }

    // All eight download concurrently, byte-identical.
    let mut downloads = tokio::task::JoinSet::new();
    for (i, id) in ids.iter().enumerate() {
        let client = s.client.clone();
        let id = id.clone();
        downloads.spawn(async move { (i, client.download_bytes(&id).await.expect("download")) });
    }
    while let Some(done) = downloads.join_next().await {
        let (i, body) = done.unwrap();
        assert!(body == contents[i], "file {i} differs");
    }
    for (i, id) in ids.iter().enumerate() {
        expect_download(
            &s,
            id,
            &contents[i],
            &format!("concurrent-{i}.bin"),
            "application/x-c",
        )
        .await;
    }
    let mut listed = s.listed_ids().await;
    listed.sort();
    ids.sort();
    assert_eq!(listed, ids);
}

async fn identical_content_is_stored_once(backend: Backend) {
    let s = TestServer::start(backend, C).await;
    let data = random_bytes(3 * C + 500, fresh_seed());
    let a = s.put_file("a.bin", &data).await;
    let blobs_after_first = s.blob_ids().await;
    assert_eq!(blobs_after_first.len(), 4);
    let expected: std::collections::HashSet<ChunkId> = chunk_ids(&data, C).into_iter().collect();
    assert_eq!(blobs_after_first, expected);
    let written = Stats::get(&s.stats().chunks_written);
    let deduplicated = Stats::get(&s.stats().chunks_deduplicated);

    // The same content again, through the other upload form: a new file, no new blob.
    let resp = s
        .upload_form("b.bin", "application/octet-stream", &data)
        .await;
    let b = expect_created(resp, "b.bin", "application/octet-stream", &data, &s).await;
    let b = b["id"].as_str().unwrap().to_string();
    assert_ne!(a, b);
    assert_eq!(s.blob_ids().await, blobs_after_first);
    assert_eq!(Stats::get(&s.stats().chunks_written), written);
    assert_eq!(Stats::get(&s.stats().chunks_deduplicated), deduplicated + 4);

    // Content sharing its first two chunks: only the two new chunks are written.
    let mut shared = data[..2 * C].to_vec();
    shared.extend(random_bytes(C + 9, fresh_seed()));
    let c = s.put_file("c.bin", &shared).await;
    assert_eq!(s.blob_ids().await.len(), 6);
    assert_eq!(Stats::get(&s.stats().chunks_written), written + 2);

    // A file of one chunk repeated is one blob.
    let block = random_bytes(C, fresh_seed());
    let repeated: Vec<u8> = block.iter().copied().cycle().take(4 * C).collect();
    let d = s.put_file("d.bin", &repeated).await;
    assert_eq!(s.blob_ids().await.len(), 7);
    let detail = s.client.stat(&d).await.unwrap();
    assert_eq!(detail.manifest.len(), 4);
    assert!(
        detail
            .manifest
            .iter()
            .all(|e| e.hash == ChunkId::of(&block))
    );

    for (id, content, name) in [
        (&a, &data, "a.bin"),
        (&b, &data, "b.bin"),
        (&c, &shared, "c.bin"),
        (&d, &repeated, "d.bin"),
    ] {
        expect_download(&s, id, content, name, "application/octet-stream").await;
    }
    // Deleting one of the twins leaves the other whole, also after GC.
    s.client.delete(&a).await.unwrap();
    s.gc("t").await;
    expect_download(&s, &b, &data, "b.bin", "application/octet-stream").await;
    assert_eq!(s.blob_ids().await.len(), 7);
}

async fn health_and_readiness(backend: Backend) {
    let s = TestServer::start(backend, C).await;
    let resp = s.get("/healthz").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Value>().await.unwrap()["status"], "ok");
    let resp = s.get("/readyz").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Value>().await.unwrap()["status"], "ready");

    s.faulty.set(Fault::Down);
    let resp = s.get("/readyz").await;
    assert!(resp.headers().get("retry-after").is_some());
    expect_error(
        resp,
        StatusCode::SERVICE_UNAVAILABLE,
        "blob_store_unavailable",
    )
    .await;
    // Liveness does not depend on the backends.
    assert_eq!(s.get("/healthz").await.status(), StatusCode::OK);
    // Neither does a bad request: it is still a 4xx.
    expect_error(
        s.get("/files?limit=0").await,
        StatusCode::BAD_REQUEST,
        "invalid_limit",
    )
    .await;

    // A store that hangs does not hang the probe.
    s.faulty.set(Fault::Stall(Duration::from_secs(10)));
    let started = std::time::Instant::now();
    expect_error(
        s.get("/readyz").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "backend_timeout",
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(8));

    s.faulty.set(Fault::None);
    assert_eq!(s.get("/readyz").await.status(), StatusCode::OK);
}
