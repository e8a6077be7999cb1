//! GET|HEAD /download/{id} over a real socket: ranges across chunk boundaries, conditional
//! requests, and damaged or missing chunks, which must never reach the client.

#[macro_use]
mod common;

use chunkvault_core::{Stats, VaultConfig};
use common::*;
use reqwest::StatusCode;

backend_tests!(
    ranges_across_chunk_boundaries,
    unsatisfiable_and_ignored_ranges,
    head_and_conditional_requests,
    corrupt_first_chunk_is_an_error_status,
    corrupt_later_chunk_cuts_the_transfer_off,
    missing_chunk_behaves_like_a_corrupt_one,
    blob_store_read_failure_is_503,
    small_files_are_kept_inline_and_verified,
    uploading_the_content_again_restores_lost_and_damaged_chunks,
);

const C: usize = SMALL_CHUNK;

/// Four chunks, the last one short.
fn four_chunk_file() -> Vec<u8> {
    random_bytes(3 * C + 1000, fresh_seed())
}

async fn expect_range(
    s: &TestServer,
    id: &str,
    data: &[u8],
    range: &str,
    start: usize,
    end: usize,
) {
    let resp = s.download_range(id, range).await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{range}");
    let h = resp.headers().clone();
    assert_eq!(
        header(&h, "content-range"),
        format!("bytes {start}-{}/{}", end - 1, data.len()),
        "{range}"
    );
    assert_eq!(header(&h, "content-length"), (end - start).to_string());
    assert_eq!(header(&h, "etag"), format!("\"{}\"", blake3_hex(data)));
    assert_eq!(header(&h, "accept-ranges"), "bytes");
    let body = resp.bytes().await.expect("range body");
    assert_eq!(body.len(), end - start, "{range}");
    assert!(body == data[start..end], "{range}: wrong bytes");
}

async fn ranges_across_chunk_boundaries(backend: Backend) {
    let s = TestServer::start(backend, C).await;
    let data = four_chunk_file();
    let n = data.len();
    let id = s.put_file("ranges.bin", &data).await;

    expect_range(&s, &id, &data, "bytes=0-0", 0, 1).await;
    expect_range(
        &s,
        &id,
        &data,
        &format!("bytes={}-{}", n - 1, n - 1),
        n - 1,
        n,
    )
    .await;
    expect_range(&s, &id, &data, &format!("bytes={}-", n - 1), n - 1, n).await;
    // The last byte of one chunk and the first of the next.
    expect_range(
        &s,
        &id,
        &data,
        &format!("bytes={}-{}", C - 1, C),
        C - 1,
        C + 1,
    )
    .await;
    // Exactly one whole chunk.
    expect_range(
        &s,
        &id,
        &data,
        &format!("bytes={}-{}", C, 2 * C - 1),
        C,
        2 * C,
    )
    .await;
    // Spanning three chunks: the end of chunk 0, all of chunk 1, the start of chunk 2.
    expect_range(
        &s,
        &id,
        &data,
        &format!("bytes={}-{}", C - 10, 2 * C + 9),
        C - 10,
        2 * C + 10,
    )
    .await;
    // Suffix ranges: inside the last chunk, and reaching back across a boundary.
    expect_range(&s, &id, &data, "bytes=-100", n - 100, n).await;
    expect_range(&s, &id, &data, "bytes=-1500", n - 1500, n).await;
    expect_range(&s, &id, &data, &format!("bytes=-{}", n + 10), 0, n).await;
    // Open ranges from inside a chunk and from a boundary.
    expect_range(&s, &id, &data, &format!("bytes={}-", C + 5), C + 5, n).await;
    expect_range(&s, &id, &data, &format!("bytes={}-", 2 * C), 2 * C, n).await;
    // An end past the file is clamped.
    expect_range(
        &s,
        &id,
        &data,
        &format!("bytes={}-{}", 3 * C, n + 5000),
        3 * C,
        n,
    )
    .await;
    expect_range(&s, &id, &data, "bytes=0-", 0, n).await;
}

async fn unsatisfiable_and_ignored_ranges(backend: Backend) {
    let s = TestServer::start(backend, C).await;
    let data = four_chunk_file();
    let n = data.len();
    let id = s.put_file("ranges.bin", &data).await;

    for range in [
        format!("bytes={n}-"),
        format!("bytes={}-{}", n + 10, n + 20),
        "bytes=-0".to_string(),
    ] {
        let resp = s.download_range(&id, &range).await;
        let cr = resp
            .headers()
            .get("content-range")
            .map(|v| v.to_str().unwrap().to_string());
        expect_error(
            resp,
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range_not_satisfiable",
        )
        .await;
        assert_eq!(
            cr.as_deref(),
            Some(format!("bytes */{n}").as_str()),
            "{range}"
        );
    }

    // Ranges the server does not serve are ignored: 200 with the whole file.
    for range in [
        "bytes=0-1,5-6",
        "bytes=0-0, -1",
        "items=0-5",
        "bytes=5-1",
        "bytes=x-y",
    ] {
        let resp = s.download_range(&id, range).await;
        assert_eq!(resp.status(), StatusCode::OK, "{range}");
        assert!(resp.headers().get("content-range").is_none(), "{range}");
        assert_eq!(header(resp.headers(), "content-length"), n.to_string());
        assert!(resp.bytes().await.unwrap() == data, "{range}");
    }

    // An empty file has no satisfiable range.
    let empty = s.put_file("empty.bin", b"").await;
    let resp = s.download_range(&empty, "bytes=0-").await;
    let cr = header(resp.headers(), "content-range");
    expect_error(
        resp,
        StatusCode::RANGE_NOT_SATISFIABLE,
        "range_not_satisfiable",
    )
    .await;
    assert_eq!(cr, "bytes */0");
}

async fn head_and_conditional_requests(backend: Backend) {
    let s = TestServer::start(backend, C).await;
    let data = four_chunk_file();
    let n = data.len();
    let id = s.put_file("cond.bin", &data).await;
    let etag = format!("\"{}\"", blake3_hex(&data));
    let url = s.url(&format!("/download/{id}"));

    // HEAD: the GET headers, no body.
    let resp = s.http.head(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(header(&h, "content-length"), n.to_string());
    assert_eq!(header(&h, "content-type"), "application/octet-stream");
    assert_eq!(header(&h, "etag"), etag);
    assert_eq!(
        disposition_name(&header(&h, "content-disposition")),
        "cond.bin"
    );
    assert!(h.get("last-modified").is_some());
    assert!(resp.bytes().await.unwrap().is_empty());

    // HEAD with a range: 206 headers, no body.
    let resp = s
        .http
        .head(&url)
        .header("range", format!("bytes={}-{}", C - 1, 2 * C))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(resp.headers(), "content-range"),
        format!("bytes {}-{}/{n}", C - 1, 2 * C)
    );
    assert_eq!(
        header(resp.headers(), "content-length"),
        (C + 2).to_string()
    );
    assert!(resp.bytes().await.unwrap().is_empty());

    // If-None-Match: 304 without a body for the current ETag, in its strong and weak forms,
    // in a list, and as `*`.
    for inm in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"other\", {etag}"),
        "*".to_string(),
    ] {
        for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
            let resp = s
                .http
                .request(method.clone(), &url)
                .header("if-none-match", &inm)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::NOT_MODIFIED, "{method} {inm}");
            assert_eq!(header(resp.headers(), "etag"), etag);
            // Content-Length, when sent, is what a 200 would have said (RFC 9110 8.6).
            if let Some(cl) = resp.headers().get("content-length") {
                assert_eq!(cl.to_str().unwrap(), n.to_string(), "{method} {inm}");
            }
            assert!(resp.bytes().await.unwrap().is_empty());
        }
    }

    // If-Match (strong comparison) and If-Unmodified-Since: 412 when they do not hold,
    // the file when they do. If-Modified-Since: 304 unless the file is newer.
    let last_modified = header(&h, "last-modified");
    let long_ago = "Sat, 01 Jan 2000 00:00:00 GMT";
    let later = "Fri, 01 Jan 2100 00:00:00 GMT";
    let cases: [(&str, &str, StatusCode); 10] = [
        ("if-match", &etag, StatusCode::OK),
        ("if-match", "*", StatusCode::OK),
        ("if-match", "\"other\"", StatusCode::PRECONDITION_FAILED),
        (
            "if-match",
            &format!("W/{etag}"),
            StatusCode::PRECONDITION_FAILED,
        ),
        ("if-unmodified-since", &last_modified, StatusCode::OK),
        ("if-unmodified-since", later, StatusCode::OK),
        (
            "if-unmodified-since",
            long_ago,
            StatusCode::PRECONDITION_FAILED,
        ),
        (
            "if-modified-since",
            &last_modified,
            StatusCode::NOT_MODIFIED,
        ),
        ("if-modified-since", long_ago, StatusCode::OK),
        ("if-modified-since", "not a date", StatusCode::OK),
    ];
    for (name, value, status) in cases {
        for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
            let resp = s
                .http
                .request(method.clone(), &url)
                .header(name, value)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), status, "{method} {name}: {value}");
            if status == StatusCode::PRECONDITION_FAILED && method == reqwest::Method::GET {
                expect_error(resp, status, "precondition_failed").await;
            } else if status == StatusCode::OK && method == reqwest::Method::GET {
                assert!(resp.bytes().await.unwrap() == data);
            }
        }
    }
    // If-None-Match wins over If-Modified-Since, If-Match over If-Unmodified-Since.
    for [(a, av), (b, bv)] in [
        [("if-none-match", "\"other\""), ("if-modified-since", later)],
        [
            ("if-match", etag.as_str()),
            ("if-unmodified-since", long_ago),
        ],
    ] {
        let resp = s
            .http
            .get(&url)
            .header(a, av)
            .header(b, bv)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{a} with {b}");
    }
    // Another ETag: the file.
    let resp = s
        .http
        .get(&url)
        .header("if-none-match", "\"0000\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.bytes().await.unwrap() == data);

    // If-Range: the range when the ETag matches, the whole file when it does not.
    let resp = s
        .http
        .get(&url)
        .header("range", "bytes=10-19")
        .header("if-range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert!(resp.bytes().await.unwrap() == data[10..20]);
    let resp = s
        .http
        .get(&url)
        .header("range", "bytes=10-19")
        .header("if-range", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.bytes().await.unwrap() == data);

    // The empty file: 200, Content-Length 0, no body.
    let empty = s.put_file("empty.txt", b"").await;
    expect_download(&s, &empty, b"", "empty.txt", "application/octet-stream").await;
}

/// Asserts that a cut-off transfer delivered only an undamaged prefix that stops before the
/// damaged chunk, which starts at `damaged_at` in the response body. `ok` is the status the
/// response has when its head arrived: the server may also cut the connection before the head
/// was flushed (damage found while the first bytes were still buffered), which a client sees
/// as a failed request.
fn assert_cut_off(p: &Partial, ok: StatusCode, expected: &[u8], damaged_at: usize) {
    if let Some(status) = p.status {
        assert_eq!(status, ok, "headers were sent before the damage was found");
        assert_eq!(p.content_length, Some(expected.len() as u64));
    }
    assert!(
        p.failed && p.body.len() < expected.len(),
        "the client must see a failed, short transfer ({} of {} bytes, failed: {})",
        p.body.len(),
        expected.len(),
        p.failed
    );
    assert!(
        p.body.len() <= damaged_at,
        "received {} bytes, past the damaged chunk at {damaged_at}",
        p.body.len()
    );
    assert!(
        p.body[..] == expected[..p.body.len()],
        "the received bytes must be an undamaged prefix"
    );
}

async fn corrupt_first_chunk_is_an_error_status(backend: Backend) {
    let s = TestServer::start(backend, C).await;
    let data = four_chunk_file();
    let id = s.put_file("damaged.bin", &data).await;
    let chunks = chunk_ids(&data, C);

    s.corrupt_chunk(&chunks[0]).await;
    let resp = s.get(&format!("/download/{id}")).await;
    expect_error(resp, StatusCode::INTERNAL_SERVER_ERROR, "chunk_damaged").await;
    // A range that starts in the damaged chunk fails the same way...
    let resp = s.download_range(&id, "bytes=100-200").await;
    expect_error(resp, StatusCode::INTERNAL_SERVER_ERROR, "chunk_damaged").await;
    // ...while ranges that avoid it are served.
    expect_range_ok(&s, &id, &data, C, 3 * C).await;
    assert!(Stats::get(&s.stats().chunks_corrupt) >= 2);

    // Damage in a middle chunk is an error status for a range starting in it.
    s.corrupt_chunk(&chunks[2]).await;
    let resp = s
        .download_range(&id, &format!("bytes={}-{}", 2 * C + 5, 2 * C + 50))
        .await;
    expect_error(resp, StatusCode::INTERNAL_SERVER_ERROR, "chunk_damaged").await;
}

async fn expect_range_ok(s: &TestServer, id: &str, data: &[u8], start: usize, end: usize) {
    let resp = s
        .download_range(id, &format!("bytes={start}-{}", end - 1))
        .await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert!(resp.bytes().await.unwrap() == data[start..end]);
}

async fn corrupt_later_chunk_cuts_the_transfer_off(backend: Backend) {
    let s = TestServer::start(backend, C).await;
    // An intact file beside the damaged ones.
    let data = random_bytes(8 * C + 77, fresh_seed());
    let id = s.put_file("intact.bin", &data).await;

    // Damage right behind the first chunk (inside the read-ahead window), and far enough in
    // that the undamaged part outgrows any buffering between server and client.
    for damaged in [1usize, 20] {
        // A fresh copy of the file each round, so earlier damage does not interfere.
        let content = random_bytes(24 * C + 77, fresh_seed());
        let id = s.put_file("damaged.bin", &content).await;
        let ids = chunk_ids(&content, C);
        s.corrupt_chunk(&ids[damaged]).await;

        let req = s.http.get(s.url(&format!("/download/{id}")));
        let p = fetch_partial(req).await;
        assert_cut_off(&p, StatusCode::OK, &content, damaged * C);
        if damaged > 3 {
            // The head and undamaged chunks got out before the damage was reached.
            assert_eq!(p.status, Some(StatusCode::OK));
            assert!(p.body.len() >= 8 * C, "only {} bytes arrived", p.body.len());
        }

        // A range that starts before the damage is cut off too.
        let start = C / 2;
        let req = s
            .http
            .get(s.url(&format!("/download/{id}")))
            .header("range", format!("bytes={start}-"));
        let p = fetch_partial(req).await;
        assert_cut_off(
            &p,
            StatusCode::PARTIAL_CONTENT,
            &content[start..],
            damaged * C - start,
        );
    }

    // The file whose chunks are intact still downloads, on a fresh connection.
    expect_download(&s, &id, &data, "intact.bin", "application/octet-stream").await;
}

async fn missing_chunk_behaves_like_a_corrupt_one(backend: Backend) {
    let s = TestServer::start(backend, C).await;
    let data = random_bytes(6 * C + 3, fresh_seed());
    let id = s.put_file("missing.bin", &data).await;
    let chunks = chunk_ids(&data, C);

    s.delete_chunk(&chunks[4]).await;
    let p = fetch_partial(s.http.get(s.url(&format!("/download/{id}")))).await;
    assert_cut_off(&p, StatusCode::OK, &data, 4 * C);
    let resp = s
        .download_range(&id, &format!("bytes={}-{}", 4 * C, 4 * C + 9))
        .await;
    expect_error(resp, StatusCode::INTERNAL_SERVER_ERROR, "chunk_damaged").await;
    expect_range_ok(&s, &id, &data, 0, 4 * C).await;
    assert!(Stats::get(&s.stats().chunks_missing) >= 2);

    s.delete_chunk(&chunks[0]).await;
    let resp = s.get(&format!("/download/{id}")).await;
    expect_error(resp, StatusCode::INTERNAL_SERVER_ERROR, "chunk_damaged").await;

    // GC reports the missing chunks with the file that needs them.
    let report = s.gc("t").await;
    let mut missing: Vec<_> = report.missing.iter().map(|m| m.chunk).collect();
    missing.sort();
    let mut expected = vec![chunks[0], chunks[4]];
    expected.sort();
    assert_eq!(missing, expected);
    for m in &report.missing {
        assert_eq!(m.files.len(), 1);
        assert_eq!(m.files[0].to_string(), id);
    }
}

async fn blob_store_read_failure_is_503(backend: Backend) {
    let s = TestServer::start(backend, C).await;
    let data = four_chunk_file();
    let id = s.put_file("unavailable.bin", &data).await;
    s.faulty.set(chunkvault_blob::Fault::FailGets);
    let resp = s.get(&format!("/download/{id}")).await;
    let retry_after = resp.headers().get("retry-after").cloned();
    expect_error(
        resp,
        StatusCode::SERVICE_UNAVAILABLE,
        "blob_store_unavailable",
    )
    .await;
    assert!(retry_after.is_some(), "503 carries Retry-After");
    // Reads through the fault wrapper never count as damage.
    assert_eq!(Stats::get(&s.stats().chunks_corrupt), 0);
    assert_eq!(Stats::get(&s.stats().chunks_missing), 0);
    s.faulty.set(chunkvault_blob::Fault::None);
    expect_download(
        &s,
        &id,
        &data,
        "unavailable.bin",
        "application/octet-stream",
    )
    .await;
}

/// A file uploaded whole of at most `inline_max` bytes is kept in the metadata store: no blob,
/// the same API (one chunk, ranges, ETag), verified against its digest on every read, gone
/// with its file.
async fn small_files_are_kept_inline_and_verified(backend: Backend) {
    let s = TestServer::start(backend, C).await;
    let max = VaultConfig::default().inline_max;
    assert!(max > 0 && max < C, "the default keeps small files inline");
    let ty = "application/x-test";
    for (size, inline) in [(1, true), (777, true), (max, true), (max + 1, false)] {
        let data = random_bytes(size, fresh_seed());
        let blobs_before = s.blob_ids().await.len();
        let v = expect_created(
            s.upload_raw("i.bin", ty, &data).await,
            "i.bin",
            ty,
            &data,
            &s,
        )
        .await;
        let id = v["id"].as_str().unwrap().to_string();
        assert_eq!(v["inline"].as_bool().unwrap_or(false), inline, "{v}");
        assert_eq!(
            s.blob_ids().await.len(),
            blobs_before + usize::from(!inline),
            "{size} bytes: a blob is written only past inline_max"
        );
        expect_download(&s, &id, &data, "i.bin", ty).await;
        // From the database as well as from what the server keeps of recent files.
        s.forget_recent_files();
        expect_download(&s, &id, &data, "i.bin", ty).await;
        let detail: serde_json::Value = s.get(&format!("/files/{id}")).await.json().await.unwrap();
        assert_eq!(detail["chunks"], 1);
        assert_eq!(detail["manifest"][0]["length"], size as u64);
        assert_eq!(
            detail["manifest"][0]["hash"],
            chunk_ids(&data, C)[0].to_hex(),
            "the manifest names the content's chunk hash"
        );
        if size > 100 {
            expect_range_ok(&s, &id, &data, 10, 100).await;
            expect_range_ok(&s, &id, &data, size - 5, size).await;
        }
        let resp = s.download_range(&id, &format!("bytes={size}-")).await;
        assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    }

    // Damage in the database: an error status and never a byte of it, for ranges too.
    let data = random_bytes(5000, fresh_seed());
    let id = s.put_file("damaged.bin", &data).await;
    let corrupt_before = Stats::get(&s.stats().chunks_corrupt);
    s.corrupt_inline(&id).await;
    let resp = s.get(&format!("/download/{id}")).await;
    expect_error(resp, StatusCode::INTERNAL_SERVER_ERROR, "chunk_damaged").await;
    let resp = s.download_range(&id, "bytes=1000-1999").await;
    expect_error(resp, StatusCode::INTERNAL_SERVER_ERROR, "chunk_damaged").await;
    let resp = s.get(&format!("/files/{id}")).await;
    expect_error(resp, StatusCode::INTERNAL_SERVER_ERROR, "chunk_damaged").await;
    assert!(Stats::get(&s.stats().chunks_corrupt) >= corrupt_before + 3);
    // Scrub checks inline content too, and names the file.
    let scrub = s
        .vault
        .scrub(&chunkvault_core::ScrubOptions::default())
        .await
        .unwrap();
    let damaged: Vec<_> = scrub
        .findings
        .iter()
        .map(|f| {
            (
                f.problem,
                f.files.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
            )
        })
        .collect();
    assert_eq!(damaged, vec![("corrupt", vec![id.clone()])], "{scrub:?}");
    assert!(
        scrub.chunks_checked >= 4,
        "the intact inline files were checked: {scrub:?}"
    );

    // Deleting the file deletes its content.
    let resp = s.delete(&format!("/files/{id}")).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = s.get(&format!("/download/{id}")).await;
    expect_error(resp, StatusCode::NOT_FOUND, "not_found").await;
}

/// Deduplication never makes a file out of a blob that is gone: an upload of content whose
/// blob was lost or cut short behind the metadata's back writes it again (raw body and
/// multipart form alike), and a blob damaged at its full length is written again by the first
/// upload after a read found the damage. Every file with that content then reads whole.
async fn uploading_the_content_again_restores_lost_and_damaged_chunks(backend: Backend) {
    const TY: &str = "application/octet-stream";
    let s = TestServer::start(backend, C).await;
    let data = random_bytes(3 * C + 5, fresh_seed());
    let chunks = chunk_ids(&data, C);
    let first = s.put_file("first.bin", &data).await;

    // Lost, and nothing has read it since: the next upload looks, finds it gone, writes it.
    s.delete_chunk(&chunks[1]).await;
    let written = Stats::get(&s.stats().chunks_written);
    let again = s.put_file("again.bin", &data).await;
    assert_eq!(
        Stats::get(&s.stats().chunks_written) - written,
        1,
        "only the lost chunk"
    );
    expect_download(&s, &first, &data, "first.bin", TY).await;

    // Cut short, then a multipart upload of the same content.
    s.overwrite_chunk(
        &chunks[2],
        bytes::Bytes::copy_from_slice(&data[2 * C..2 * C + 7]),
    )
    .await;
    let resp = s.upload_form("form.bin", TY, &data).await;
    let form = expect_created(resp, "form.bin", TY, &data, &s).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    expect_download(&s, &first, &data, "first.bin", TY).await;

    // Damaged at its full length: one look cannot tell, so the upload right after still
    // deduplicates; the download that finds the damage records the chunk lost, and the
    // upload after that writes it again.
    s.corrupt_chunk(&chunks[0]).await;
    let unseen = s.put_file("unseen.bin", &data).await;
    let resp = s.get(&format!("/download/{first}")).await;
    expect_error(resp, StatusCode::INTERNAL_SERVER_ERROR, "chunk_damaged").await;
    let written = Stats::get(&s.stats().chunks_written);
    let healed = s.put_file("healed.bin", &data).await;
    assert_eq!(
        Stats::get(&s.stats().chunks_written) - written,
        1,
        "only the damaged chunk"
    );
    for (id, name) in [
        (&first, "first.bin"),
        (&again, "again.bin"),
        (&form, "form.bin"),
        (&unseen, "unseen.bin"),
        (&healed, "healed.bin"),
    ] {
        expect_download(&s, id, &data, name, TY).await;
    }
    // Healed for good: the chunk is live again, so the next upload writes nothing.
    let written = Stats::get(&s.stats().chunks_written);
    s.put_file("dedup.bin", &data).await;
    assert_eq!(Stats::get(&s.stats().chunks_written), written);
}
