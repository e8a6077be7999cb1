//! The upload-session API (`/uploads`) over a real socket, on both backend pairs: chunks out
//! of order and in parallel, dedup before transfer, truthful status, server-computed digest,
//! nothing visible before commit, abort, and every bad input a clean 4xx.

#[macro_use]
mod common;

use chunkvault_core::Stats;
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

backend_tests!(
    out_of_order_parallel_chunks_commit_with_server_digest,
    dedup_batch_skips_chunks_the_server_has,
    status_counts_only_written_chunks,
    abort_ends_the_session,
    bad_input_is_a_clean_4xx,
    empty_and_unsized_sessions,
    a_lost_chunk_is_offered_missing_and_written_when_sent,
);

async fn create(s: &TestServer, name: &str, size: Option<usize>) -> Value {
    let mut body = json!({"name": name, "type": "application/x-test"});
    if let Some(n) = size {
        body["size"] = json!(n);
    }
    let resp = s
        .http
        .post(s.url("/uploads"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let loc = header(resp.headers(), "location");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(loc, format!("/uploads/{}", v["id"].as_str().unwrap()));
    assert_eq!(v["state"], "open");
    assert_eq!(v["chunk_size"], s.chunk_size() as u64);
    assert_eq!(v["stored"], json!([]));
    v
}

async fn put_chunk(s: &TestServer, id: &str, index: usize, data: &[u8]) -> reqwest::Response {
    s.http
        .put(s.url(&format!("/uploads/{id}/chunks/{index}")))
        .body(data.to_vec())
        .send()
        .await
        .unwrap()
}

/// Offers every chunk of `data` (index, length, hash) to session `id`; returns the answer.
async fn offer_all(s: &TestServer, id: &str, data: &[u8]) -> Value {
    let offers: Vec<Value> = data
        .chunks(s.chunk_size())
        .enumerate()
        .map(|(i, c)| {
            json!({"index": i, "length": c.len(), "hash": chunkvault_types::ChunkId::of(c).to_hex()})
        })
        .collect();
    let resp = s
        .http
        .post(s.url(&format!("/uploads/{id}/chunks")))
        .json(&json!({ "chunks": offers }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

async fn status(s: &TestServer, id: &str) -> Value {
    let resp = s.get(&format!("/uploads/{id}")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

/// Commits a session, declaring the digests in `declared` (a JSON object) when given.
async fn commit(s: &TestServer, id: &str, declared: Option<Value>) -> reqwest::Response {
    let req = s.http.post(s.url(&format!("/uploads/{id}/commit")));
    let req = match declared {
        Some(d) => req.json(&d),
        None => req,
    };
    req.send().await.unwrap()
}

async fn out_of_order_parallel_chunks_commit_with_server_digest(backend: Backend) {
    let s = TestServer::start(backend, SMALL_CHUNK).await;
    let cs = s.chunk_size();
    let data = random_bytes(7 * cs + 123, fresh_seed());
    let v = create(&s, "parallel.bin", Some(data.len())).await;
    let id = v["id"].as_str().unwrap().to_string();
    // Reverse order, all at once, each with its BLAKE3 hash for the server to check.
    let puts = data.chunks(cs).enumerate().rev().map(|(i, c)| {
        let (s, id) = (&s, &id);
        async move {
            let resp = s
                .http
                .put(s.url(&format!("/uploads/{id}/chunks/{i}")))
                .header("chunk-hash", chunkvault_types::ChunkId::of(c).to_hex())
                .body(c.to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["index"], i);
            assert_eq!(v["length"], c.len());
            assert_eq!(v["written"], true);
        }
    });
    futures::future::join_all(puts).await;
    let st = status(&s, &id).await;
    assert_eq!(st["stored"], json!((0..8).collect::<Vec<_>>()));
    assert_eq!(st["stored_bytes"], data.len());
    // Nothing visible before commit.
    assert!(s.listed_ids().await.is_empty());
    expect_error(
        s.get(&format!("/files/{id}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    expect_error(
        s.get(&format!("/download/{id}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let resp = commit(&s, &id, Some(json!({ "blake3": blake3_hex(&data) }))).await;
    let info = expect_created(resp, "parallel.bin", "application/x-test", &data, &s).await;
    assert_eq!(info["id"], id.as_str());
    expect_download(&s, &id, &data, "parallel.bin", "application/x-test").await;
    assert_eq!(status(&s, &id).await["state"], "committed");
    // Committed: no more chunks, no second commit.
    expect_error(
        put_chunk(&s, &id, 0, &data[..cs]).await,
        StatusCode::CONFLICT,
        "upload_closed",
    )
    .await;
    expect_error(
        commit(&s, &id, None).await,
        StatusCode::CONFLICT,
        "upload_closed",
    )
    .await;
}

async fn dedup_batch_skips_chunks_the_server_has(backend: Backend) {
    let s = TestServer::start(backend, SMALL_CHUNK).await;
    let cs = s.chunk_size();
    let original = random_bytes(5 * cs + 10, fresh_seed());
    s.put_file("original.bin", &original).await;
    // Same file with chunk 2 changed.
    let mut data = original.clone();
    data[2 * cs + 5] ^= 0xff;
    let v = create(&s, "edited.bin", Some(data.len())).await;
    let id = v["id"].as_str().unwrap().to_string();
    let written_before = Stats::get(&s.stats().chunks_written);
    let r = offer_all(&s, &id, &data).await;
    assert_eq!(r["missing"], json!([2]));
    assert_eq!(r["present"], json!([0, 1, 3, 4, 5]));
    assert_eq!(status(&s, &id).await["stored"], json!([0, 1, 3, 4, 5]));
    // Committing before the missing chunk arrives is refused, and shows nothing.
    expect_error(
        commit(&s, &id, None).await,
        StatusCode::BAD_REQUEST,
        "incomplete_upload",
    )
    .await;
    assert_eq!(s.listed_ids().await.len(), 1);
    let resp = put_chunk(&s, &id, 2, &data[2 * cs..3 * cs]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        Stats::get(&s.stats().chunks_written) - written_before,
        1,
        "only the changed chunk was written"
    );
    let resp = commit(&s, &id, None).await;
    expect_created(resp, "edited.bin", "application/x-test", &data, &s).await;
    expect_download(&s, &id, &data, "edited.bin", "application/x-test").await;

    // An offer of content the server does not have, with a hash of something else, records
    // nothing usable: the commit reads back and refuses.
    let v = create(&s, "liar.bin", Some(cs)).await;
    let lid = v["id"].as_str().unwrap().to_string();
    let fake = random_bytes(cs, fresh_seed());
    let resp = s
        .http
        .post(s.url(&format!("/uploads/{lid}/chunks")))
        .json(&json!({"chunks": [{"index": 0, "length": cs, "hash": chunkvault_types::ChunkId::of(&fake).to_hex()}]}))
        .send()
        .await
        .unwrap();
    let r: Value = resp.json().await.unwrap();
    assert_eq!(r["missing"], json!([0]));
    expect_error(
        commit(&s, &lid, None).await,
        StatusCode::BAD_REQUEST,
        "incomplete_upload",
    )
    .await;
    // An offer with the wrong length for a chunk the server has is caught at commit.
    let v = create(&s, "short.bin", None).await;
    let sid = v["id"].as_str().unwrap().to_string();
    let last = &original[5 * cs..];
    let resp = s
        .http
        .post(s.url(&format!("/uploads/{sid}/chunks")))
        .json(&json!({"chunks": [{"index": 0, "length": last.len() + 1, "hash": chunkvault_types::ChunkId::of(last).to_hex()}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    expect_error(
        commit(&s, &sid, None).await,
        StatusCode::BAD_REQUEST,
        "chunk_size_mismatch",
    )
    .await;
    assert_eq!(s.listed_ids().await.len(), 2);
}

async fn status_counts_only_written_chunks(backend: Backend) {
    let s = TestServer::start(backend, SMALL_CHUNK).await;
    let cs = s.chunk_size();
    let data = random_bytes(3 * cs, fresh_seed());
    let v = create(&s, "resume.bin", Some(data.len())).await;
    let id = v["id"].as_str().unwrap().to_string();
    for i in 0..3 {
        let resp = put_chunk(&s, &id, i, &data[i * cs..(i + 1) * cs]).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    // A reference recorded but whose blob never got written (a crash between the two).
    let ids = chunk_ids(&data, cs);
    s.delete_chunk(&ids[1]).await;
    let st = status(&s, &id).await;
    assert_eq!(st["stored"], json!([0, 2]));
    assert_eq!(st["stored_bytes"], 2 * cs);
    expect_error(
        commit(&s, &id, None).await,
        StatusCode::BAD_REQUEST,
        "incomplete_upload",
    )
    .await;
    // Resume: send what status says is missing, then commit.
    let resp = put_chunk(&s, &id, 1, &data[cs..2 * cs]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(status(&s, &id).await["stored"], json!([0, 1, 2]));
    let resp = commit(&s, &id, None).await;
    expect_created(resp, "resume.bin", "application/x-test", &data, &s).await;
}

async fn abort_ends_the_session(backend: Backend) {
    let s = TestServer::start(backend, SMALL_CHUNK).await;
    let cs = s.chunk_size();
    let data = random_bytes(2 * cs, fresh_seed());
    let v = create(&s, "abort.bin", Some(data.len())).await;
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        put_chunk(&s, &id, 0, &data[..cs]).await.status(),
        StatusCode::OK
    );
    let resp = s.delete(&format!("/uploads/{id}")).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(status(&s, &id).await["state"], "aborted");
    expect_error(
        put_chunk(&s, &id, 1, &data[cs..]).await,
        StatusCode::CONFLICT,
        "upload_closed",
    )
    .await;
    expect_error(
        commit(&s, &id, None).await,
        StatusCode::CONFLICT,
        "upload_closed",
    )
    .await;
    assert!(s.listed_ids().await.is_empty());
    // Its chunk is no longer referenced: GC may take it.
    assert!(s.referenced_chunks().await.is_empty());
}

async fn bad_input_is_a_clean_4xx(backend: Backend) {
    let s = TestServer::start(backend, SMALL_CHUNK).await;
    let cs = s.chunk_size();
    let data = random_bytes(2 * cs + 5, fresh_seed());
    let v = create(&s, "bad.bin", Some(data.len())).await;
    let id = v["id"].as_str().unwrap().to_string();
    let bad = StatusCode::BAD_REQUEST;
    // Lengths against the layout.
    expect_error(
        put_chunk(&s, &id, 0, &data[..cs - 1]).await,
        bad,
        "chunk_size_mismatch",
    )
    .await;
    expect_error(
        put_chunk(&s, &id, 0, &data[..cs + 1]).await,
        bad,
        "chunk_size_mismatch",
    )
    .await;
    expect_error(
        put_chunk(&s, &id, 2, &data[..6]).await,
        bad,
        "chunk_size_mismatch",
    )
    .await;
    expect_error(
        put_chunk(&s, &id, 3, &data[..5]).await,
        bad,
        "invalid_index",
    )
    .await;
    expect_error(put_chunk(&s, &id, 0, &[]).await, bad, "chunk_size_mismatch").await;
    // The same index offered twice, at different lengths.
    let resp = s
        .http
        .post(s.url(&format!("/uploads/{id}/chunks")))
        .json(&json!({"chunks": [
            {"index": 0, "length": s.chunk_size(), "hash": chunkvault_types::ChunkId::of(b"abcd").to_hex()},
            {"index": 0, "length": s.chunk_size(), "hash": chunkvault_types::ChunkId::of(b"abc").to_hex()},
        ]}))
        .send()
        .await
        .unwrap();
    expect_error(resp, bad, "invalid_index").await;
    // Hashes.
    let wrong = s
        .http
        .put(s.url(&format!("/uploads/{id}/chunks/0")))
        .header(
            "chunk-hash",
            chunkvault_types::ChunkId::of(b"other").to_hex(),
        )
        .body(data[..cs].to_vec())
        .send()
        .await
        .unwrap();
    expect_error(wrong, bad, "chunk_hash_mismatch").await;
    let garbled = s
        .http
        .put(s.url(&format!("/uploads/{id}/chunks/0")))
        .header("chunk-hash", "xyz")
        .body(data[..cs].to_vec())
        .send()
        .await
        .unwrap();
    expect_error(garbled, bad, "invalid_header").await;
    // Paths.
    expect_error(
        s.http
            .put(s.url(&format!("/uploads/{id}/chunks/-1")))
            .body("x")
            .send()
            .await
            .unwrap(),
        bad,
        "invalid_index",
    )
    .await;
    expect_error(
        s.http
            .put(s.url(&format!("/uploads/{id}/chunks/99999999999999999999999")))
            .body("x")
            .send()
            .await
            .unwrap(),
        bad,
        "invalid_index",
    )
    .await;
    expect_error(put_chunk(&s, "nope", 0, b"x").await, bad, "invalid_id").await;
    expect_error(s.get("/uploads/nope").await, bad, "invalid_id").await;
    let unknown = chunkvault_types::FileId::new().to_string();
    expect_error(
        s.get(&format!("/uploads/{unknown}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    expect_error(
        put_chunk(&s, &unknown, 0, b"x").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // Bodies.
    let post = |path: String, body: &'static str| {
        s.http
            .post(s.url(&path))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    expect_error(
        post("/uploads".into(), "{").await.unwrap(),
        bad,
        "invalid_json",
    )
    .await;
    expect_error(
        post("/uploads".into(), "").await.unwrap(),
        bad,
        "invalid_json",
    )
    .await;
    expect_error(
        post("/uploads".into(), r#"{"name":""}"#).await.unwrap(),
        bad,
        "missing_name",
    )
    .await;
    expect_error(
        post("/uploads".into(), r#"{"name":"a","type":"nope"}"#)
            .await
            .unwrap(),
        bad,
        "invalid_type",
    )
    .await;
    expect_error(
        post(
            format!("/uploads/{id}/chunks"),
            r#"{"chunks":[{"index":0}]}"#,
        )
        .await
        .unwrap(),
        bad,
        "invalid_json",
    )
    .await;
    expect_error(
        post(format!("/uploads/{id}/commit"), r#"{"sha256":"zz"}"#)
            .await
            .unwrap(),
        bad,
        "invalid_sha256",
    )
    .await;
    expect_error(
        post(format!("/uploads/{id}/commit"), r#"{"blake3":"00"}"#)
            .await
            .unwrap(),
        bad,
        "invalid_blake3",
    )
    .await;
    // Digest and completeness at commit.
    for (i, c) in data.chunks(cs).enumerate() {
        assert_eq!(put_chunk(&s, &id, i, c).await.status(), StatusCode::OK);
    }
    // Each declared digest is checked: a right BLAKE3 does not excuse a wrong SHA-256.
    let wrong = [
        (
            json!({ "sha256": sha256_hex(b"something else") }),
            "sha256_mismatch",
        ),
        (
            json!({ "blake3": blake3_hex(b"something else") }),
            "blake3_mismatch",
        ),
        (
            json!({ "blake3": blake3_hex(&data), "sha256": sha256_hex(b"x") }),
            "sha256_mismatch",
        ),
    ];
    for (declared, code) in wrong {
        expect_error(commit(&s, &id, Some(declared)).await, bad, code).await;
    }
    assert!(
        s.listed_ids().await.is_empty(),
        "nothing visible after failures"
    );
    // Both declared, in upper case: hex is compared without case.
    let declared = json!({
        "blake3": blake3_hex(&data).to_uppercase(),
        "sha256": sha256_hex(&data).to_uppercase(),
    });
    let resp = commit(&s, &id, Some(declared)).await;
    expect_created(resp, "bad.bin", "application/x-test", &data, &s).await;
}

async fn empty_and_unsized_sessions(backend: Backend) {
    let s = TestServer::start(backend, SMALL_CHUNK).await;
    let cs = s.chunk_size();
    let v = create(&s, "empty.bin", Some(0)).await;
    let id = v["id"].as_str().unwrap().to_string();
    expect_error(
        put_chunk(&s, &id, 0, b"x").await,
        StatusCode::BAD_REQUEST,
        "invalid_index",
    )
    .await;
    let resp = commit(&s, &id, Some(json!({ "sha256": sha256_hex(b"") }))).await;
    expect_created(resp, "empty.bin", "application/x-test", b"", &s).await;
    // Size unknown: any chunk up to chunk_size; the commit checks the layout.
    let data = random_bytes(2 * cs + 3, fresh_seed());
    let v = create(&s, "unsized.bin", None).await;
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        put_chunk(&s, &id, 2, &data[2 * cs..]).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        put_chunk(&s, &id, 0, &data[..cs]).await.status(),
        StatusCode::OK
    );
    // Chunk 1 short although not last: refused at commit.
    assert_eq!(
        put_chunk(&s, &id, 1, &data[cs..2 * cs - 1]).await.status(),
        StatusCode::OK
    );
    expect_error(
        commit(&s, &id, None).await,
        StatusCode::BAD_REQUEST,
        "chunk_size_mismatch",
    )
    .await;
    assert_eq!(
        put_chunk(&s, &id, 1, &data[cs..2 * cs]).await.status(),
        StatusCode::OK
    );
    let resp = commit(&s, &id, None).await;
    expect_created(resp, "unsized.bin", "application/x-test", &data, &s).await;
}

/// A chunk whose blob was lost behind the metadata's back is not reported present to an
/// offer, and sending it writes it; one damaged at its full length is found by the commit's
/// read-back, and sending it again then writes it.
async fn a_lost_chunk_is_offered_missing_and_written_when_sent(backend: Backend) {
    let s = TestServer::start(backend, SMALL_CHUNK).await;
    let cs = s.chunk_size();
    let data = random_bytes(3 * cs + 9, fresh_seed());
    let chunks = chunk_ids(&data, cs);
    let first = s.put_file("first.bin", &data).await;
    s.delete_chunk(&chunks[1]).await;

    let v = create(&s, "again.bin", Some(data.len())).await;
    let id = v["id"].as_str().unwrap().to_string();
    let r = offer_all(&s, &id, &data).await;
    assert_eq!(r["missing"], json!([1]));
    let resp = put_chunk(&s, &id, 1, &data[cs..2 * cs]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Value>().await.unwrap()["written"], true);

    // Damaged at full length after the offer: the commit's read-back finds it.
    s.corrupt_chunk(&chunks[2]).await;
    let resp = commit(&s, &id, None).await;
    assert!(resp.status().is_server_error(), "{}", resp.status());
    let resp = put_chunk(&s, &id, 2, &data[2 * cs..3 * cs]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Value>().await.unwrap()["written"], true);
    let resp = commit(&s, &id, None).await;
    expect_created(resp, "again.bin", "application/x-test", &data, &s).await;
    expect_download(&s, &id, &data, "again.bin", "application/x-test").await;
    expect_download(&s, &first, &data, "first.bin", "application/octet-stream").await;
}
