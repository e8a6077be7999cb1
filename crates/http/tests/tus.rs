//! tus 1.0.0 at `/tus` over a real socket, on both backend pairs: discovery, creation (with
//! and without a body), PATCHes that do not align with chunks, offset conflicts, checksums,
//! termination, a restart between PATCHes, and tus-js-client from Node interrupting and
//! resuming a large upload.

#[macro_use]
mod common;

use std::sync::Arc;

use base64::Engine;
use chunkvault_core::{Vault, VaultConfig};
use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use sha1::Digest as _;

backend_tests!(
    discovery_and_cors,
    unaligned_patches_round_trip,
    offset_mismatch_is_409_and_checksum_mismatch_is_460,
    termination,
    offset_survives_a_restart,
    interrupted_patch_keeps_what_arrived,
    tus_js_client_interrupted_and_resumed,
);

const TUS: &str = "1.0.0";

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn create(s: &TestServer, base: &str, len: usize, name: &str) -> String {
    let resp = s
        .http
        .post(format!("{base}/tus"))
        .header("tus-resumable", TUS)
        .header("upload-length", len.to_string())
        .header(
            "upload-metadata",
            format!(
                "filename {},filetype {},empty",
                b64(name.as_bytes()),
                b64(b"application/x-tus")
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(resp.headers(), "tus-resumable"), TUS);
    assert!(!header(resp.headers(), "upload-expires").is_empty());
    let loc = header(resp.headers(), "location");
    assert!(loc.starts_with("/tus/"), "{loc}");
    loc
}

async fn patch(
    s: &TestServer,
    base: &str,
    loc: &str,
    offset: usize,
    body: &[u8],
    checksum: Option<String>,
) -> reqwest::Response {
    let mut req = s
        .http
        .patch(format!("{base}{loc}"))
        .header("tus-resumable", TUS)
        .header("upload-offset", offset.to_string())
        .header("content-type", "application/offset+octet-stream");
    if let Some(c) = checksum {
        req = req.header("upload-checksum", c);
    }
    req.body(body.to_vec()).send().await.unwrap()
}

async fn head(s: &TestServer, base: &str, loc: &str) -> reqwest::Response {
    s.http
        .head(format!("{base}{loc}"))
        .header("tus-resumable", TUS)
        .send()
        .await
        .unwrap()
}

async fn offset_of(s: &TestServer, base: &str, loc: &str) -> u64 {
    let resp = head(s, base, loc).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(resp.headers(), "cache-control"), "no-store");
    header(resp.headers(), "upload-offset").parse().unwrap()
}

fn file_id(loc: &str) -> &str {
    loc.rsplit('/').next().unwrap()
}

async fn discovery_and_cors(backend: Backend) {
    let s = TestServer::start(backend, SMALL_CHUNK).await;
    let resp = s
        .http
        .request(reqwest::Method::OPTIONS, s.url("/tus"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let h = resp.headers();
    assert_eq!(header(h, "tus-resumable"), TUS);
    assert_eq!(header(h, "tus-version"), TUS);
    let ext = header(h, "tus-extension");
    for e in [
        "creation",
        "creation-with-upload",
        "termination",
        "checksum",
        "expiration",
    ] {
        assert!(ext.split(',').any(|x| x == e), "{ext} lacks {e}");
    }
    assert!(header(h, "tus-max-size").parse::<u64>().unwrap() > 0);
    assert!(header(h, "tus-checksum-algorithm").contains("sha1"));
    assert_eq!(header(h, "access-control-allow-origin"), "*");
    let expose = header(h, "access-control-expose-headers");
    for name in [
        "Upload-Offset",
        "Location",
        "Upload-Length",
        "Tus-Resumable",
    ] {
        assert!(expose.contains(name), "{expose} lacks {name}");
    }
    assert!(header(h, "access-control-allow-methods").contains("PATCH"));
    // Errors carry Tus-Resumable too; a request without it is refused with 412.
    let resp = s
        .http
        .post(s.url("/tus"))
        .header("upload-length", "5")
        .send()
        .await
        .unwrap();
    assert_eq!(header(resp.headers(), "tus-resumable"), TUS);
    assert_eq!(header(resp.headers(), "tus-version"), TUS);
    expect_error(
        resp,
        StatusCode::PRECONDITION_FAILED,
        "tus_version_unsupported",
    )
    .await;
    let resp = s
        .http
        .post(s.url("/tus"))
        .header("tus-resumable", TUS)
        .send()
        .await
        .unwrap();
    assert_eq!(header(resp.headers(), "tus-resumable"), TUS);
    expect_error(resp, StatusCode::BAD_REQUEST, "missing_length").await;
    let resp = s
        .http
        .post(s.url("/tus"))
        .header("tus-resumable", TUS)
        .header("upload-length", "5")
        .header("upload-metadata", "filename !!!")
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::BAD_REQUEST, "invalid_metadata").await;
    let unknown = format!("/tus/{}", chunkvault_types::FileId::new());
    assert_eq!(
        head(&s, &s.base, &unknown).await.status(),
        StatusCode::NOT_FOUND
    );
    assert!(s.listed_ids().await.is_empty());
}

async fn unaligned_patches_round_trip(backend: Backend) {
    let s = TestServer::start(backend, SMALL_CHUNK).await;
    let cs = s.chunk_size();
    let data = random_bytes(4 * cs + 777, fresh_seed());
    let loc = create(&s, &s.base, data.len(), "unaligned ü.bin").await;
    assert_eq!(offset_of(&s, &s.base, &loc).await, 0);
    // Cuts inside chunks, across several chunks, a one-byte PATCH, an empty one.
    let cuts = [
        0,
        100,
        cs - 1,
        cs,
        cs + 1,
        3 * cs + 5,
        3 * cs + 5,
        data.len(),
    ];
    for w in cuts.windows(2) {
        let (a, b) = (w[0], w[1]);
        let resp = patch(&s, &s.base, &loc, a, &data[a..b], None).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "PATCH {a}..{b}");
        assert_eq!(header(resp.headers(), "tus-resumable"), TUS);
        assert_eq!(header(resp.headers(), "upload-offset"), b.to_string());
        if b < data.len() {
            assert_eq!(offset_of(&s, &s.base, &loc).await, b as u64);
            assert!(
                s.listed_ids().await.is_empty(),
                "nothing visible before the end"
            );
        }
    }
    let id = file_id(&loc);
    expect_download(&s, id, &data, "unaligned ü.bin", "application/x-tus").await;
    let info: Value = s.get(&format!("/files/{id}")).await.json().await.unwrap();
    assert_eq!(info["blake3"], blake3_hex(&data));
    assert_eq!(info["chunks"], 5);
    // Complete: HEAD says so, further PATCHes are refused.
    assert_eq!(offset_of(&s, &s.base, &loc).await, data.len() as u64);
    let resp = patch(&s, &s.base, &loc, data.len(), b"x", None).await;
    expect_error(resp, StatusCode::CONFLICT, "upload_closed").await;

    // creation-with-upload, then the rest; and an empty upload is a file at once.
    let small = random_bytes(cs + 10, fresh_seed());
    let resp = s
        .http
        .post(s.url("/tus"))
        .header("tus-resumable", TUS)
        .header("upload-length", small.len().to_string())
        .header("upload-metadata", format!("filename {}", b64(b"cwu.bin")))
        .header("content-type", "application/offset+octet-stream")
        .body(small[..cs + 3].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(
        header(resp.headers(), "upload-offset"),
        (cs + 3).to_string()
    );
    let loc2 = header(resp.headers(), "location");
    let resp = patch(&s, &s.base, &loc2, cs + 3, &small[cs + 3..], None).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    expect_download(
        &s,
        file_id(&loc2),
        &small,
        "cwu.bin",
        "application/octet-stream",
    )
    .await;
    let loc3 = create(&s, &s.base, 0, "empty.bin").await;
    expect_download(&s, file_id(&loc3), b"", "empty.bin", "application/x-tus").await;
    // A body longer than what is left is refused.
    let loc4 = create(&s, &s.base, 10, "short.bin").await;
    let resp = patch(&s, &s.base, &loc4, 0, &[7u8; 11], None).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "size_mismatch").await;
    assert_eq!(s.listed_ids().await.len(), 3);
}

async fn offset_mismatch_is_409_and_checksum_mismatch_is_460(backend: Backend) {
    let s = TestServer::start(backend, SMALL_CHUNK).await;
    let cs = s.chunk_size();
    let data = random_bytes(2 * cs + 50, fresh_seed());
    let loc = create(&s, &s.base, data.len(), "sums.bin").await;
    let resp = patch(&s, &s.base, &loc, 5, &data[5..10], None).await;
    assert_eq!(header(resp.headers(), "tus-resumable"), TUS);
    expect_error(resp, StatusCode::CONFLICT, "offset_mismatch").await;
    let sha1 = |d: &[u8]| format!("sha1 {}", b64(&sha1::Sha1::digest(d)));
    // A correct checksum, ending mid-chunk.
    let resp = patch(
        &s,
        &s.base,
        &loc,
        0,
        &data[..cs / 2],
        Some(sha1(&data[..cs / 2])),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    // A wrong one: 460, and the offset has not moved.
    let resp = patch(
        &s,
        &s.base,
        &loc,
        cs / 2,
        &data[cs / 2..cs + 9],
        Some(sha1(b"something else")),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 460);
    assert_eq!(header(resp.headers(), "tus-resumable"), TUS);
    assert_eq!(offset_of(&s, &s.base, &loc).await, (cs / 2) as u64);
    // Unsupported algorithm and garbage: 400.
    let resp = patch(
        &s,
        &s.base,
        &loc,
        cs / 2,
        &data[cs / 2..cs],
        Some("md5 AAAA".into()),
    )
    .await;
    expect_error(resp, StatusCode::BAD_REQUEST, "invalid_checksum").await;
    // Wrong content type: 415.
    let resp = s
        .http
        .patch(format!("{}{loc}", s.base))
        .header("tus-resumable", TUS)
        .header("upload-offset", (cs / 2).to_string())
        .body(data[cs / 2..cs].to_vec())
        .send()
        .await
        .unwrap();
    expect_error(
        resp,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid_content_type",
    )
    .await;
    // sha256 works too; then finish without checksums.
    let sha256 = format!(
        "sha256 {}",
        b64(&<sha2::Sha256 as sha2::Digest>::digest(
            &data[cs / 2..cs + 9]
        ))
    );
    let resp = patch(
        &s,
        &s.base,
        &loc,
        cs / 2,
        &data[cs / 2..cs + 9],
        Some(sha256),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = patch(&s, &s.base, &loc, cs + 9, &data[cs + 9..], None).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    expect_download(&s, file_id(&loc), &data, "sums.bin", "application/x-tus").await;
}

async fn termination(backend: Backend) {
    let s = TestServer::start(backend, SMALL_CHUNK).await;
    let cs = s.chunk_size();
    let data = random_bytes(2 * cs, fresh_seed());
    let loc = create(&s, &s.base, data.len(), "gone.bin").await;
    let resp = patch(&s, &s.base, &loc, 0, &data[..cs + 1], None).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let del = || {
        s.http
            .delete(format!("{}{loc}", s.base))
            .header("tus-resumable", TUS)
            .send()
    };
    let resp = del().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(resp.headers(), "tus-resumable"), TUS);
    assert_eq!(
        head(&s, &s.base, &loc).await.status(),
        StatusCode::NOT_FOUND
    );
    let resp = patch(&s, &s.base, &loc, cs + 1, &data[cs + 1..], None).await;
    expect_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    expect_error(del().await.unwrap(), StatusCode::NOT_FOUND, "not_found").await;
    assert!(s.listed_ids().await.is_empty());
    assert!(s.referenced_chunks().await.is_empty());
}

/// A second server on the same stores, sharing no memory with the first: what a restart
/// between PATCHes looks like to a client.
async fn restarted(s: &TestServer) -> (String, tokio::sync::oneshot::Sender<()>) {
    let vault = Vault::new(
        Arc::clone(s.vault.blobs()),
        Arc::clone(s.vault.meta()),
        VaultConfig {
            chunk_size: s.chunk_size(),
            ..VaultConfig::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(chunkvault_http::serve(
        listener,
        chunkvault_http::router(vault),
        async move {
            let _ = rx.await;
        },
    ));
    (format!("http://{addr}"), tx)
}

async fn offset_survives_a_restart(backend: Backend) {
    let s = TestServer::start(backend, SMALL_CHUNK).await;
    let cs = s.chunk_size();
    let data = random_bytes(3 * cs + 3, fresh_seed());
    let loc = create(&s, &s.base, data.len(), "restart.bin").await;
    let cut = cs + cs / 3;
    let resp = patch(&s, &s.base, &loc, 0, &data[..cut], None).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (base2, stop) = restarted(&s).await;
    let resp = head(&s, &base2, &loc).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(resp.headers(), "upload-offset"), cut.to_string());
    assert_eq!(
        header(resp.headers(), "upload-length"),
        data.len().to_string()
    );
    let resp = patch(&s, &base2, &loc, cut, &data[cut..], None).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let _ = stop.send(());
    expect_download(&s, file_id(&loc), &data, "restart.bin", "application/x-tus").await;
}

/// Size of the interoperability upload in MiB: 20 by default, `CHUNKVAULT_TUS_INTEROP_MIB`
/// to change it (the demonstration uses 100).
fn interop_mib() -> usize {
    std::env::var("CHUNKVAULT_TUS_INTEROP_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

async fn tus_js_client_interrupted_and_resumed(backend: Backend) {
    let tools = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools");
    let script = tools.join("tus-interop.js");
    assert!(
        tools
            .join("node_modules/tus-js-client/package.json")
            .exists(),
        "tus-js-client is not installed: run `npm ci --prefix tools` (scripts/test does)"
    );
    let s = TestServer::start(backend, DEFAULT_CHUNK).await;
    let data = random_bytes(interop_mib() << 20, fresh_seed());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("interop.bin");
    std::fs::write(&path, &data).unwrap();
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .arg(format!("{}/tus", s.base))
        .arg(&path)
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("could not run `node` (Node.js is required for the tus interop test): {e}")
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tus-js-client failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).expect("the script prints JSON");
    eprintln!("tus-js-client: {report}");
    let url = report["url"].as_str().unwrap();
    assert_eq!(
        report["finalUrl"], url,
        "the second Upload resumed the same URL"
    );
    let aborted = report["abortedAt"].as_u64().unwrap();
    let resumed = report["resumedFrom"].as_u64().unwrap();
    assert!(aborted > 0 && resumed > 0, "{report}");
    let ids = s.listed_ids().await;
    assert_eq!(ids.len(), 1, "one file, no duplicate upload");
    let id = url.rsplit('/').next().unwrap();
    assert_eq!(ids[0], id);
    expect_download(&s, id, &data, "interop ünï.bin", "application/x-tus-test").await;
}

async fn interrupted_patch_keeps_what_arrived(backend: Backend) {
    let s = TestServer::start(backend, SMALL_CHUNK).await;
    let cs = s.chunk_size();
    let data = random_bytes(3 * cs, fresh_seed());
    let loc = create(&s, &s.base, data.len(), "cut.bin").await;
    // The client sends a chunk and a half, then its body fails (a dropped connection).
    let sent = cs + cs / 2;
    let first = bytes::Bytes::copy_from_slice(&data[..sent]);
    // The error comes after a pause, so the bytes before it are on the wire (hyper drops
    // what it has buffered when a body fails).
    let body = futures::stream::unfold(0, move |step| {
        let first = first.clone();
        async move {
            match step {
                0 => Some((Ok::<_, std::io::Error>(first), 1)),
                1 => {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    Some((Err(std::io::Error::other("client went away")), 2))
                }
                _ => None,
            }
        }
    });
    let resp = s
        .http
        .patch(format!("{}{loc}", s.base))
        .header("tus-resumable", TUS)
        .header("upload-offset", "0")
        .header("content-type", "application/offset+octet-stream")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await;
    assert!(resp.is_err() || !resp.unwrap().status().is_success());
    // The server stores what arrived, the half chunk included, once the request ends.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let offset = loop {
        let o = offset_of(&s, &s.base, &loc).await;
        if o > 0 || std::time::Instant::now() > deadline {
            break o as usize;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(
        offset > 0 && offset <= sent,
        "offset {offset} after sending {sent}"
    );
    let resp = patch(&s, &s.base, &loc, offset, &data[offset..], None).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    expect_download(&s, file_id(&loc), &data, "cut.bin", "application/x-tus").await;
}
