//! The server's log through the real binary: access lines, which are written in batches, reach
//! stderr within the flush interval while the server runs, and all of them are written when it
//! stops on SIGTERM.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::free_port;

fn log_has(log: &Path, needle: &str) -> bool {
    std::fs::read_to_string(log).is_ok_and(|s| s.contains(needle))
}

/// Waits up to `within` for `needle` to appear in the log.
async fn appears(log: &Path, needle: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if log_has(log, needle) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    log_has(log, needle)
}

async fn get_with_id(http: &reqwest::Client, url: &str, id: &str) -> reqwest::StatusCode {
    http.get(url)
        .header("x-request-id", id)
        .send()
        .await
        .expect("request")
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_are_written_while_running_and_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_chunkvault"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        // Access lines only: no other line (such as "stopped") writes them out at the end.
        .env("RUST_LOG", "warn,chunkvault_http::observe=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start server");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // While the server runs: an access line is out within the flush interval (200 ms).
    let files = format!("{base}/files");
    assert_eq!(get_with_id(&http, &files, "while-running").await, 200);
    assert!(
        appears(&log, "while-running", Duration::from_secs(5)).await,
        "access line not written while running:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // An unknown path is answered with a request id and logged like any other request.
    let resp = http
        .get(format!("{base}/no/such/route"))
        .header("x-request-id", "unknown-route")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-request-id"], "unknown-route");
    // A request id that would write fields of its own into the access line is replaced.
    let forged = "x status=204 route=/forged";
    let resp = http
        .get(&files)
        .header("x-request-id", forged)
        .send()
        .await
        .unwrap();
    let given = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(given.len(), 36, "a UUID of the server's: {given}");
    assert!(
        appears(&log, "unknown-route", Duration::from_secs(5)).await
            && appears(&log, &given, Duration::from_secs(5)).await,
        "access lines missing:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(!log_has(&log, "route=/forged"));

    // An upload still streaming when SIGTERM comes is finished (graceful shutdown), and its
    // access line, the last line the server logs, is written by the time the process exits.
    let missing = format!("{base}/download/0190d6a0-0000-7000-8000-000000000000");
    assert_eq!(get_with_id(&http, &missing, "before-stop").await, 404);
    let (body_tx, body_rx) = futures::channel::mpsc::unbounded::<Result<Vec<u8>, std::io::Error>>();
    body_tx.unbounded_send(Ok(vec![7u8; 1000])).unwrap();
    let upload = tokio::spawn(
        http.post(format!("{base}/upload"))
            .header("x-request-id", "during-stop")
            .header("fileName", "late.bin")
            .body(reqwest::Body::wrap_stream(body_rx))
            .send(),
    );
    // Time for the server to have read the request head (it is waiting for the body).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    // Past the flush interval: the timer has written what came before.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(log_has(&log, "before-stop"));
    assert!(!log_has(&log, "during-stop"));
    body_tx.unbounded_send(Ok(vec![8u8; 1000])).unwrap();
    drop(body_tx);
    let resp = upload
        .await
        .unwrap()
        .expect("upload finished during shutdown");
    assert_eq!(resp.status(), 201);
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "server exited with {exit}");
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("during-stop"))
        .unwrap_or_else(|| panic!("last access line lost at shutdown:\n{text}"));
    assert!(line.contains("status=201"), "{line}");
    // A JSON answer's length is logged, though hyper adds its Content-Length only later.
    let not_found = text
        .lines()
        .find(|l| l.contains("before-stop"))
        .expect("the 404's access line");
    let bytes = not_found
        .split_once("response_bytes=")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(bytes.is_some_and(|n| n > 20), "{not_found}");
    // Each line whole and once, in order.
    for id in ["while-running", "before-stop", "during-stop"] {
        assert_eq!(text.matches(id).count(), 1, "{id}:\n{text}");
    }
    assert!(
        text.find("before-stop") < text.find("during-stop"),
        "{text}"
    );
}
