//! `/readyz` follows the blob store: against a real Azurite process this test starts itself,
//! the probe is ready, answers 503 within a few seconds once Azurite is killed, and is ready
//! again once Azurite is back on the same port with the same data directory; and a frozen
//! (SIGSTOP) Azurite makes it answer 503 `backend_timeout` in bounded time.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chunkvault_blob::{AzureConfig, BlobConfig, ObjectStoreBlobs, RetryOptions};
use chunkvault_core::{Vault, VaultConfig};
use chunkvault_meta::{MetaStore, SqliteMeta, SqliteOptions};
use reqwest::StatusCode;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known development key, published in Microsoft's documentation.
const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn azurite_bin() -> PathBuf {
    let bin =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/node_modules/.bin/azurite-blob");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/test once (it installs Azurite with npm ci into tools/)",
        bin.display()
    );
    bin
}

/// Starts Azurite's blob service on `port` (0: any free port) with its data in `location`;
/// returns the process and the port it listens on, read from its log line
/// "listens on http://127.0.0.1:NNNN".
async fn start_azurite(location: &Path, port: u16) -> (Child, u16) {
    let mut child = Command::new(azurite_bin())
        .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
        .arg("--location")
        .arg(location)
        .args(["--skipApiVersionCheck", "--loose", "--disableTelemetry"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start azurite-blob");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let port = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read Azurite's log") {
            if let Some(rest) = line.split("listens on http://127.0.0.1:").nth(1) {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                return digits.parse::<u16>().expect("a port in Azurite's log line");
            }
        }
        panic!("Azurite exited before it listened");
    })
    .await
    .expect("Azurite listens within 30 s");
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, port)
}

/// Waits until some file Azurite keeps in `location` mentions `needle`.
async fn wait_persisted(location: &Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = std::fs::read_dir(location)
            .expect("list Azurite's location")
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .any(|e| {
                std::fs::read(e.path())
                    .map(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
                    .unwrap_or(false)
            });
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Azurite did not save {needle:?} under {} within 30 s",
            location.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn readyz(http: &reqwest::Client, base: &str) -> (StatusCode, String) {
    let resp = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("GET /readyz");
    let status = resp.status();
    (status, resp.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_a_real_azurite() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let location = dir.path().join("azurite");
    std::fs::create_dir_all(&location).unwrap();
    let (mut azurite, port) = start_azurite(&location, 0).await;

    let meta = SqliteMeta::open(&SqliteOptions {
        path: dir.path().join("meta.db"),
        fsync: false,
        read_connections: 2,
    })
    .await
    .expect("open SQLite");
    meta.migrate().await.expect("migrate");
    let blobs = ObjectStoreBlobs::open(
        &BlobConfig::Azure(AzureConfig {
            account: ACCOUNT.into(),
            access_key: KEY.into(),
            container: "readyz".into(),
            endpoint: Some(format!("http://127.0.0.1:{port}/{ACCOUNT}")),
        }),
        &RetryOptions::default(),
    )
    .await
    .expect("open the Azurite container");
    let vault = Vault::new(Arc::new(blobs), Arc::new(meta), VaultConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(chunkvault_http::serve(
        listener,
        chunkvault_http::router(vault.clone()),
        async move {
            let _ = stopped.await;
        },
    ));
    let http = reqwest::Client::new();

    let (status, body) = readyz(&http, &base).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Azurite writes its metadata to disk every few seconds; a container created since the last
    // save would be lost by the kill below (and the store rightly report `ContainerMissing`).
    // Wait until the container and the store's marker blob (which `check` reads) are on disk,
    // as they always are on real Azure.
    wait_persisted(&location, "readyz").await;
    wait_persisted(&location, "chunkvault-store").await;
    azurite.kill().await.expect("kill Azurite");
    let killed = Instant::now();
    let (status, body) = readyz(&http, &base).await;
    let took = killed.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body.contains("blob_store_unavailable") || body.contains("backend_timeout"),
        "{body}"
    );
    // The probe is bounded (3 s) whatever the store's retry policy does.
    assert!(took < Duration::from_secs(5), "readyz took {took:?}");

    let (azurite, again) = start_azurite(&location, port).await;
    assert_eq!(again, port);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = readyz(&http, &base).await;
        if status == StatusCode::OK {
            break;
        }
        if Instant::now() > deadline {
            // What the store itself says, for the failure message.
            let check = vault.blobs().check().await;
            panic!("readyz still {status} 30 s after Azurite came back: {body}; check: {check:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A backend that hangs (accepts connections, never answers) must not hang the probe:
    // freeze Azurite with SIGSTOP.
    let pid = azurite.id().expect("Azurite runs").to_string();
    signal("STOP", &pid);
    let frozen = Instant::now();
    let (status, body) = readyz(&http, &base).await;
    let took = frozen.elapsed();
    signal("CONT", &pid);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("backend_timeout"), "{body}");
    assert!(
        took < Duration::from_secs(5),
        "readyz took {took:?} against a hung store"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while readyz(&http, &base).await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline, "not ready 30 s after SIGCONT");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop.send(());
}

fn signal(name: &str, pid: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}");
}
