//! Shared harness of the HTTP integration suite: a real server on a real socket, in-process,
//! over either backend pair, plus the helpers the scenarios share.
//!
//! Backend pairs:
//! - [`Backend::SqliteLocal`]: SQLite in a temporary directory, chunks in a local directory.
//! - [`Backend::PostgresAzurite`]: a fresh PostgreSQL database (migrated) and a fresh Azurite
//!   container per test. `CHUNKVAULT_TEST_AZURITE_ENDPOINT` must be set (scripts/test sets it);
//!   there is no skipping.
//!
//! The vault's blob store is a [`FaultyBlobStore`] around the real one, so scenarios can inject
//! faults; [`TestServer::raw`] reaches the real store underneath, to corrupt or delete chunks.

#![allow(dead_code)] // every test binary uses a different part of the harness

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chunkvault_blob::{
    AzureConfig, BlobConfig, BlobStore, FaultyBlobStore, ObjectStoreBlobs, RetryOptions, chunk_key,
};
use chunkvault_core::{GcOptions, GcReport, Stats, Vault, VaultConfig};
use chunkvault_meta::testing::TestDatabase;
use chunkvault_meta::{MetaStore, SqliteMeta, SqliteOptions};
use chunkvault_types::{ChunkId, FileId};
use futures::{StreamExt, TryStreamExt};
use rand::{RngCore, SeedableRng};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The small chunk size most scenarios use, so chunk boundaries are cheap to reach.
pub const SMALL_CHUNK: usize = 64 << 10;
/// The default chunk size (4 MiB), for the large round trips.
pub const DEFAULT_CHUNK: usize = 4 << 20;

/// Which metadata store and blob store a server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    SqliteLocal,
    PostgresAzurite,
}

/// Generates, for each scenario `async fn case(backend: Backend)`, a module `case` with two
/// tests: `case::sqlite_local` and `case::postgres_azurite`.
macro_rules! backend_tests {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite_local() {
                    super::$case(crate::common::Backend::SqliteLocal).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres_azurite() {
                    super::$case(crate::common::Backend::PostgresAzurite).await
                }
            }
        )*
    };
}

/// A server listening on 127.0.0.1 (port 0), serving the vault over a real socket.
pub struct TestServer {
    pub backend: Backend,
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub base: String,
    pub http: reqwest::Client,
    pub client: chunkvault_client::Client,
    pub vault: Vault,
    /// The store the vault uses: faults set here hit the server.
    pub faulty: FaultyBlobStore<ObjectStoreBlobs>,
    /// The real store under the fault wrapper, for corrupting and deleting chunks directly.
    pub raw: ObjectStoreBlobs,
    /// The local blob directory (SQLite + local backend only).
    pub blob_dir: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
    db: Option<TestDatabase>,
    /// The SQLite store (SQLite + local backend only), to drop its memory of recent files.
    sqlite: Option<SqliteMeta>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

fn azurite_endpoint() -> String {
    std::env::var("CHUNKVAULT_TEST_AZURITE_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "CHUNKVAULT_TEST_AZURITE_ENDPOINT is not set: the postgres_azurite tests need Azurite. \
             Run the suite with scripts/test, which starts Azurite and PostgreSQL \
             (or start azurite-blob yourself and set CHUNKVAULT_TEST_AZURITE_ENDPOINT=\
             http://127.0.0.1:PORT/devstoreaccount1, CHUNKVAULT_TEST_AZURITE_ACCOUNT and \
             CHUNKVAULT_TEST_AZURITE_KEY)."
        )
    })
}

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the postgres_azurite tests need Azurite. Run the suite with \
             scripts/test, which starts Azurite and exports it."
        )
    })
}

impl TestServer {
    /// A server with `chunk_size`-byte chunks and otherwise default tunables.
    pub async fn start(backend: Backend, chunk_size: usize) -> Self {
        Self::start_with(
            backend,
            VaultConfig {
                chunk_size,
                ..VaultConfig::default()
            },
        )
        .await
    }

    pub async fn start_with(backend: Backend, config: VaultConfig) -> Self {
        Self::start_with_auth(backend, config, chunkvault_http::AuthOptions::off()).await
    }

    /// A server with authentication configured by `auth`.
    pub async fn start_with_auth(
        backend: Backend,
        config: VaultConfig,
        auth: chunkvault_http::AuthOptions,
    ) -> Self {
        let mut dir = None;
        let mut db = None;
        let mut blob_dir = None;
        let mut sqlite = None;
        let (meta, raw): (Arc<dyn MetaStore>, ObjectStoreBlobs) = match backend {
            Backend::SqliteLocal => {
                let tmp = tempfile::tempdir().expect("temporary directory");
                let meta = SqliteMeta::open(&SqliteOptions {
                    path: tmp.path().join("meta.db"),
                    fsync: false,
                    read_connections: 4,
                })
                .await
                .expect("open SQLite");
                meta.migrate().await.expect("migrate SQLite");
                let root = tmp.path().join("blobs");
                let raw = ObjectStoreBlobs::open(
                    &BlobConfig::Local {
                        root: root.clone(),
                        fsync: false,
                    },
                    &RetryOptions::default(),
                )
                .await
                .expect("open the local blob directory");
                blob_dir = Some(root);
                dir = Some(tmp);
                sqlite = Some(meta.clone());
                (Arc::new(meta), raw)
            }
            Backend::PostgresAzurite => {
                let endpoint = azurite_endpoint();
                let account = required_env("CHUNKVAULT_TEST_AZURITE_ACCOUNT");
                let access_key = required_env("CHUNKVAULT_TEST_AZURITE_KEY");
                let database = TestDatabase::create().await;
                let meta = database.open().await;
                meta.migrate().await.expect("migrate PostgreSQL");
                db = Some(database);
                let container = format!("t{}", uuid::Uuid::new_v4().simple());
                let raw = ObjectStoreBlobs::open(
                    &BlobConfig::Azure(AzureConfig {
                        account,
                        access_key,
                        container: container.clone(),
                        endpoint: Some(endpoint.clone()),
                    }),
                    &RetryOptions::default(),
                )
                .await
                .unwrap_or_else(|e| {
                    panic!("open Azurite container {container} at {endpoint}: {e:?}")
                });
                (Arc::new(meta), raw)
            }
        };
        let faulty = FaultyBlobStore::new(raw.clone());
        let vault = Vault::new(Arc::new(faulty.clone()), meta, config);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let router = chunkvault_http::router_with(vault.clone(), auth);
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.await;
            };
            if let Err(e) = chunkvault_http::serve(listener, router, shutdown).await {
                eprintln!("test server failed: {e}");
            }
        });
        let base = format!("http://{addr}");
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .build()
            .expect("HTTP client");
        let client =
            chunkvault_client::Client::with_http(&base, http.clone()).expect("typed client");
        Self {
            backend,
            base,
            http,
            client,
            vault,
            faulty,
            raw,
            blob_dir,
            _dir: dir,
            db,
            sqlite,
            shutdown: Some(tx),
        }
    }

    pub fn chunk_size(&self) -> usize {
        self.vault.config().chunk_size
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn stats(&self) -> &Stats {
        self.vault.stats()
    }

    /// Uploads with a raw body, name, type and size in headers.
    pub async fn upload_raw(&self, name: &str, ty: &str, data: &[u8]) -> reqwest::Response {
        self.http
            .post(self.url("/upload"))
            .header("fileName", header_bytes(name))
            .header("fileType", ty)
            .header("fileSize", data.len().to_string())
            .body(Bytes::copy_from_slice(data))
            .send()
            .await
            .expect("POST /upload")
    }

    /// Uploads a multipart form (fields before the file part).
    pub async fn upload_form(&self, name: &str, ty: &str, data: &[u8]) -> reqwest::Response {
        let form = Form::new()
            .text("fileName", name)
            .text("fileType", ty)
            .text("fileSize", &data.len().to_string())
            .file("file", Some("ignored-part-name.bin"), None, data);
        self.post_form(form).await
    }

    pub async fn post_form(&self, form: Form) -> reqwest::Response {
        let (content_type, body) = form.finish();
        self.http
            .post(self.url("/upload"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("POST /upload (multipart)")
    }

    /// Uploads raw and asserts success; returns the file id.
    pub async fn put_file(&self, name: &str, data: &[u8]) -> String {
        let resp = self
            .upload_raw(name, "application/octet-stream", data)
            .await;
        let info = expect_created(resp, name, "application/octet-stream", data, self).await;
        info["id"].as_str().unwrap().to_string()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.send(reqwest::Method::GET, path).await
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.send(reqwest::Method::DELETE, path).await
    }

    /// A request without a body; panics if it cannot be sent.
    async fn send(&self, method: reqwest::Method, path: &str) -> reqwest::Response {
        self.http
            .request(method.clone(), self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e:?}"))
    }

    pub async fn download_range(&self, id: &str, range: &str) -> reqwest::Response {
        self.http
            .get(self.url(&format!("/download/{id}")))
            .header("range", range)
            .send()
            .await
            .expect("GET /download with Range")
    }

    /// Ids of every committed file, newest first, through the HTTP listing.
    pub async fn listed_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .client
                .list(Some(1000), after.as_deref())
                .await
                .expect("GET /files");
            ids.extend(page.files.iter().map(|f| f.id.to_string()));
            match page.next {
                Some(n) => after = Some(n),
                None => return ids,
            }
        }
    }

    /// Every chunk blob in the real store.
    pub async fn blob_ids(&self) -> HashSet<ChunkId> {
        self.raw
            .list()
            .map_ok(|m| m.id)
            .try_collect()
            .await
            .expect("list the blob store")
    }

    /// Every chunk a committed file references, from the metadata store (inline files, kept
    /// in the metadata store itself, reference none).
    pub async fn referenced_chunks(&self) -> HashSet<ChunkId> {
        let mut out = HashSet::new();
        let mut before: Option<FileId> = None;
        loop {
            let files = self
                .vault
                .list(&chunkvault_core::Principal::Open, before, 1000)
                .await
                .expect("list files");
            let Some(last) = files.last() else {
                return out;
            };
            before = Some(last.id);
            for f in files.iter().filter(|f| !f.inline) {
                for e in self
                    .vault
                    .manifest(&chunkvault_core::Principal::Open, f.id)
                    .await
                    .expect("manifest")
                {
                    out.insert(e.hash);
                }
            }
        }
    }

    /// Chunk rows of the metadata store that are not being deleted.
    pub async fn chunk_rows(&self) -> HashSet<ChunkId> {
        let mut out = HashSet::new();
        let mut after = None;
        loop {
            let page = self
                .vault
                .meta()
                .chunks(after, 1000)
                .await
                .expect("chunk rows");
            let Some(last) = page.last() else {
                return out;
            };
            after = Some(last.hash);
            out.extend(page.iter().map(|c| c.hash));
        }
    }

    /// One garbage collection with no grace period.
    pub async fn gc(&self, holder: &str) -> GcReport {
        self.vault
            .gc(&GcOptions {
                grace: Duration::ZERO,
                holder: holder.into(),
                lease_ttl: Duration::from_secs(60),
            })
            .await
            .expect("gc")
    }

    /// Waits until nothing but committed files holds a chunk (aborted uploads are aborted in
    /// a spawned task), then runs GC and asserts that the blob store and the chunk rows hold
    /// exactly the chunks committed files reference: nothing leaked, nothing lost.
    pub async fn assert_store_converges(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let referenced = self.referenced_chunks().await;
            let mut holders_ok = true;
            for chunk in self.chunk_rows().await {
                if referenced.contains(&chunk) {
                    continue;
                }
                let holders = self
                    .vault
                    .meta()
                    .files_with_chunk(&chunk, 10)
                    .await
                    .expect("files_with_chunk");
                if !holders.is_empty() {
                    holders_ok = false;
                }
            }
            if holders_ok {
                self.gc("converge").await;
                let blobs = self.blob_ids().await;
                let rows = self.chunk_rows().await;
                if blobs == referenced && rows == referenced {
                    return;
                }
                if tokio::time::Instant::now() > deadline {
                    let leaked: Vec<_> = blobs.difference(&referenced).collect();
                    let lost: Vec<_> = referenced.difference(&blobs).collect();
                    let stray_rows: Vec<_> = rows.difference(&referenced).collect();
                    panic!(
                        "after GC the store does not match the committed files: \
                         leaked blobs {leaked:?}, lost blobs {lost:?}, stray chunk rows {stray_rows:?}"
                    );
                }
            } else if tokio::time::Instant::now() > deadline {
                panic!("an upload that failed still holds chunk references after 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the upload-aborted counter reaches `n`.
    pub async fn wait_aborted(&self, n: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while Stats::get(&self.stats().uploads_aborted) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {n} aborted uploads, the counter says {}",
                Stats::get(&self.stats().uploads_aborted)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Overwrites the stored blob of `id` with `data`, bypassing the vault: on the local
    /// backend by writing the file at chunk_key(id) under the blob directory, on Azurite
    /// through the raw store's put under the same key (the store does not verify content).
    pub async fn overwrite_chunk(&self, id: &ChunkId, data: Bytes) {
        match &self.blob_dir {
            Some(root) => {
                let path = root.join(chunk_key(id));
                assert!(
                    path.is_file(),
                    "the chunk blob is expected at {}",
                    path.display()
                );
                std::fs::write(&path, &data).expect("overwrite the chunk file");
            }
            None => self.raw.put(id, data).await.expect("overwrite the blob"),
        }
    }

    /// Flips one byte of the stored blob of `id`.
    /// Flips a bit of an inline file's content in the database, and makes the server read it
    /// from there next time (not from its memory of recent files).
    pub async fn corrupt_inline(&self, id: &str) {
        let id: FileId = id.parse().expect("file id");
        let url = match (&self.db, &self._dir) {
            (Some(db), _) => db.url.clone(),
            (None, Some(dir)) => format!("sqlite://{}", dir.path().join("meta.db").display()),
            (None, None) => unreachable!("every backend has a database"),
        };
        chunkvault_meta::testing::damage_inline_data(&url, id).await;
        self.forget_recent_files();
    }

    /// Makes the next reads of files go to the database (SQLite keeps recent small files in
    /// memory; PostgreSQL keeps nothing).
    pub fn forget_recent_files(&self) {
        if let Some(sqlite) = &self.sqlite {
            sqlite.forget_recent_files();
        }
    }

    pub async fn corrupt_chunk(&self, id: &ChunkId) {
        let mut bytes = self.raw.get(id).await.expect("read the chunk").to_vec();
        let at = bytes.len() / 3;
        bytes[at] ^= 0x40;
        assert!(!id.matches(&bytes));
        self.overwrite_chunk(id, Bytes::from(bytes)).await;
    }

    /// Deletes the stored blob of `id`, bypassing the vault.
    pub async fn delete_chunk(&self, id: &ChunkId) {
        self.raw.delete(id).await.expect("delete the chunk blob");
        assert!(self.raw.head(id).await.expect("head").is_none());
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Drop the test database even when the test failed. The drop is async; run it on a
        // runtime of its own, on a thread of its own, since this may run inside the test's.
        if let Some(db) = self.db.take() {
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(db.drop_database());
                }
            })
            .join();
        }
    }
}

/// `n` random bytes, deterministic per seed (so failures reproduce), different per seed.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    v
}

/// A seed no other call in this process uses, for distinct contents.
pub fn fresh_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    // Mixed with the time so two test runs do not share content in a long-lived Azurite.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ NEXT
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The file digest the server reports: BLAKE3, what `b3sum` prints.
pub fn blake3_hex(data: &[u8]) -> String {
    chunkvault_types::FileDigest::blake3_of(data)
        .hex()
        .to_string()
}

/// A header value holding a name as UTF-8 bytes (HTTP headers carry bytes; the server reads
/// them as UTF-8).
pub fn header_bytes(s: &str) -> reqwest::header::HeaderValue {
    reqwest::header::HeaderValue::from_bytes(s.as_bytes()).expect("name fits in a header")
}

/// A hand-built `multipart/form-data` body, so tests control part order and headers.
pub struct Form {
    boundary: String,
    body: Vec<u8>,
}

impl Default for Form {
    fn default() -> Self {
        Self::new()
    }
}

impl Form {
    pub fn new() -> Self {
        Self {
            boundary: format!("cv-test-{:016x}", rand::random::<u64>()),
            body: Vec::new(),
        }
    }

    pub fn text(mut self, name: &str, value: &str) -> Self {
        self.body.extend_from_slice(
            format!(
                "--{}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n",
                self.boundary
            )
            .as_bytes(),
        );
        self.body.extend_from_slice(value.as_bytes());
        self.body.extend_from_slice(b"\r\n");
        self
    }

    /// A file part; `filename` and `content_type` are the part's own headers when given.
    pub fn file(
        mut self,
        name: &str,
        filename: Option<&str>,
        content_type: Option<&str>,
        data: &[u8],
    ) -> Self {
        let mut head = format!(
            "--{}\r\nContent-Disposition: form-data; name=\"{name}\"",
            self.boundary
        );
        if let Some(f) = filename {
            head.push_str(&format!("; filename=\"{f}\""));
        }
        head.push_str("\r\n");
        if let Some(t) = content_type {
            head.push_str(&format!("Content-Type: {t}\r\n"));
        }
        head.push_str("\r\n");
        self.body.reserve(head.len() + data.len() + 64);
        self.body.extend_from_slice(head.as_bytes());
        self.body.extend_from_slice(data);
        self.body.extend_from_slice(b"\r\n");
        self
    }

    /// The Content-Type header value and the body.
    pub fn finish(mut self) -> (String, Bytes) {
        self.body
            .extend_from_slice(format!("--{}--\r\n", self.boundary).as_bytes());
        (
            format!("multipart/form-data; boundary={}", self.boundary),
            Bytes::from(self.body),
        )
    }
}

/// Asserts a 201 answer to an upload of `data` named `name` with type `ty`: the Location
/// header and every field of the JSON body. Returns the body.
pub async fn expect_created(
    resp: reqwest::Response,
    name: &str,
    ty: &str,
    data: &[u8],
    server: &TestServer,
) -> Value {
    let status = resp.status();
    let location = resp
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    // The whole body was read: the connection stays open for the next request.
    assert_eq!(
        resp.headers().get("connection"),
        None,
        "a completed upload keeps the connection alive"
    );
    let text = resp.text().await.expect("upload response body");
    assert_eq!(
        status,
        StatusCode::CREATED,
        "upload of {} bytes: {text}",
        data.len()
    );
    let v: Value = serde_json::from_str(&text).expect("upload response is JSON");
    let id = v["id"].as_str().expect("id is a string");
    id.parse::<FileId>().expect("id is a file id");
    assert_eq!(v["fileID"], v["id"], "fileID mirrors id: {text}");
    assert_eq!(location.as_deref(), Some(format!("/files/{id}").as_str()));
    assert_eq!(v["name"], name, "{text}");
    assert_eq!(v["type"], ty, "{text}");
    assert_eq!(v["size"], data.len() as u64, "{text}");
    let chunk = server.chunk_size() as u64;
    assert_eq!(v["chunks"], (data.len() as u64).div_ceil(chunk), "{text}");
    assert_eq!(v["chunk_size"], chunk, "{text}");
    assert_eq!(v["blake3"], blake3_hex(data), "{text}");
    assert!(v.get("sha256").is_none(), "one digest, BLAKE3: {text}");
    v
}

/// Asserts that the file downloads byte-identical, with every header a client relies on.
pub async fn expect_download(server: &TestServer, id: &str, data: &[u8], name: &str, ty: &str) {
    let resp = server.get(&format!("/download/{id}")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(header(&h, "content-length"), data.len().to_string());
    assert_eq!(header(&h, "content-type"), ty);
    assert_eq!(header(&h, "etag"), format!("\"{}\"", blake3_hex(data)));
    assert_eq!(header(&h, "accept-ranges"), "bytes");
    assert_eq!(header(&h, "x-content-type-options"), "nosniff");
    let cd = header(&h, "content-disposition");
    assert!(cd.starts_with("attachment; filename=\""), "{cd}");
    assert_eq!(disposition_name(&cd), name, "{cd}");
    let body = resp.bytes().await.expect("download body");
    assert_eq!(body.len(), data.len(), "downloaded length");
    assert!(
        body == data,
        "downloaded bytes differ from the uploaded ones"
    );
}

pub fn header(h: &reqwest::header::HeaderMap, name: &str) -> String {
    h.get(name)
        .unwrap_or_else(|| panic!("header {name} missing; headers: {h:?}"))
        .to_str()
        .unwrap_or_else(|_| panic!("header {name} is not ASCII"))
        .to_string()
}

/// The exact name a Content-Disposition carries in `filename*=UTF-8''...`.
pub fn disposition_name(cd: &str) -> String {
    let enc = cd
        .split("filename*=UTF-8''")
        .nth(1)
        .unwrap_or_else(|| panic!("no filename* in {cd}"));
    assert!(
        !enc.contains(';') && !enc.contains('"') && !enc.contains(' '),
        "filename* must be one percent-encoded token: {cd}"
    );
    percent_encoding::percent_decode_str(enc)
        .decode_utf8()
        .expect("filename* is UTF-8")
        .into_owned()
}

/// The ASCII fallback in `filename="..."`.
pub fn disposition_fallback(cd: &str) -> String {
    let rest = cd
        .strip_prefix("attachment; filename=\"")
        .unwrap_or_else(|| panic!("unexpected Content-Disposition {cd}"));
    let end = rest
        .find("\"; filename*=")
        .expect("fallback ends before filename*");
    rest[..end].to_string()
}

/// Asserts an error answer: the status, a JSON body of the shape `{"error":{"code","message"}}`
/// with this code and a non-empty message. Returns the message.
pub async fn expect_error(resp: reqwest::Response, status: StatusCode, code: &str) -> String {
    let got = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(got, status, "expected {status} {code}, body: {text}");
    assert!(
        ct.starts_with("application/json"),
        "error bodies are JSON, got content-type {ct:?}: {text}"
    );
    let v: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("error body {text:?}: {e}"));
    let obj = v.as_object().expect("error body is an object");
    assert_eq!(obj.len(), 1, "only `error` at the top level: {text}");
    let err = v["error"].as_object().expect("`error` is an object");
    assert_eq!(err.len(), 2, "error has code and message only: {text}");
    assert_eq!(err["code"], code, "{text}");
    let message = err["message"].as_str().expect("message is a string");
    assert!(!message.is_empty(), "{text}");
    message.to_string()
}

/// What a client got from a download that may be cut off: the status and Content-Length when
/// a response head arrived at all, the bytes received, and whether the transfer failed.
pub struct Partial {
    pub status: Option<StatusCode>,
    pub content_length: Option<u64>,
    pub body: Vec<u8>,
    pub failed: bool,
}

/// Sends a request and reads the body until it ends or fails, keeping what arrived. A server
/// that cuts the connection before its response head was flushed shows as no status at all.
pub async fn fetch_partial(req: reqwest::RequestBuilder) -> Partial {
    let resp = match req.send().await {
        Ok(r) => r,
        Err(_) => {
            return Partial {
                status: None,
                content_length: None,
                body: Vec::new(),
                failed: true,
            };
        }
    };
    let status = Some(resp.status());
    let content_length = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut body = Vec::new();
    let mut failed = false;
    let mut stream = resp.bytes_stream();
    while let Some(item) = stream.next().await {
        match item {
            Ok(b) => body.extend_from_slice(&b),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    Partial {
        status,
        content_length,
        body,
        failed,
    }
}

/// The chunk ids `data` is cut into at `chunk_size`.
pub fn chunk_ids(data: &[u8], chunk_size: usize) -> Vec<ChunkId> {
    data.chunks(chunk_size).map(ChunkId::of).collect()
}
