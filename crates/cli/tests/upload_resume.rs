//! `chunkvault upload` against a real server over a socket: the CLI is killed part-way through
//! an upload, and the second run resumes the session, sending only the chunks the server
//! does not have; a copy of the file under another name sends nothing at all (dedup).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chunkvault_client::Client;
use rand::{RngCore, SeedableRng};

mod common;
use common::free_port;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_chunkvault")
}

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start(data: &Path) -> (Server, String) {
    let port = free_port();
    let child = Command::new(bin())
        .args(["--data-dir", &data.display().to_string()])
        .args(["--chunk-size", "64KiB", "serve", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start server");
    let server = Server(child);
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(format!("{url}/healthz")).await
            && r.status().is_success()
        {
            break;
        }
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (server, url)
}

fn upload_cmd(url: &str, state: &Path, file: &Path) -> Command {
    let mut c = Command::new(bin());
    c.args(["upload", "--server", url, "--json", "--parallel", "2"])
        .arg("--state-dir")
        .arg(state)
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn run_json(mut c: Command) -> serde_json::Value {
    let out = c.output().expect("run chunkvault upload");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "upload failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{stdout:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_upload_resumes_sending_only_missing_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, url) = start(&tmp.path().join("server")).await;
    let client = Client::new(&url).unwrap();
    let state = tmp.path().join("state");
    let file = tmp.path().join("big.bin");
    let mut data = vec![0u8; 48 << 20];
    rand::rngs::SmallRng::seed_from_u64(7).fill_bytes(&mut data);
    std::fs::write(&file, &data).unwrap();
    let total = (data.len() as u64).div_ceil(64 << 10);

    // First run: kill it once the server has stored some chunks.
    let mut child = upload_cmd(&url, &state, &file).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let session = loop {
        assert!(Instant::now() < deadline, "no session state file appeared");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the upload finished before it could be interrupted"
        );
        let found = std::fs::read_dir(&state).ok().and_then(|mut d| d.next());
        if let Some(Ok(entry)) = found
            && let Ok(text) = std::fs::read_to_string(entry.path())
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        {
            break v["session"].as_str().unwrap().to_string();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    loop {
        assert!(Instant::now() < deadline, "the upload made no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the upload finished before it could be interrupted"
        );
        if client.session(&session).await.unwrap().stored.len() >= 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Requests the server was still handling settle (a cut-off body stores nothing).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored = client.session(&session).await.unwrap().stored.len() as u64;
    assert!(stored >= 40 && stored < total, "stored {stored} of {total}");
    assert!(client.list(None, None).await.unwrap().files.is_empty());

    // Second run: resumes the same session and sends only what is missing.
    let v = run_json(upload_cmd(&url, &state, &file));
    assert_eq!(v["resumed"], true, "{v}");
    assert_eq!(v["id"], session.as_str(), "{v}");
    assert_eq!(v["chunks_skipped"], stored, "{v}");
    assert_eq!(v["chunks_sent"], total - stored, "{v}");
    let digest = chunkvault_types::FileDigest::blake3_of(&data);
    assert_eq!(v["blake3"], digest.hex());
    let body = client.download_bytes(&session).await.unwrap();
    assert!(body == data, "downloaded bytes differ");
    assert_eq!(
        std::fs::read_dir(&state).unwrap().count(),
        0,
        "state removed"
    );

    // A copy under another name: every chunk is already there, nothing is sent.
    let copy = tmp.path().join("copy.bin");
    std::fs::copy(&file, &copy).unwrap();
    let v = run_json(upload_cmd(&url, &state, &copy));
    assert_eq!(v["resumed"], false, "{v}");
    assert_eq!(v["chunks_sent"], 0, "{v}");
    assert_eq!(v["chunks_skipped"], total, "{v}");
    assert_eq!(v["name"], "copy.bin");
    assert_eq!(v["blake3"], digest.hex());
}

/// `chunkvault download` replaces nothing it was not told to, writes into a device or FIFO
/// it is given instead of replacing it, follows a symlink, and refuses a directory; `upload`
/// refuses what is not a regular file instead of storing it empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_writes_only_where_told_and_upload_takes_regular_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, url) = start(&tmp.path().join("server")).await;
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let file = work.join("named.bin");
    let mut data = vec![0u8; 300_000];
    rand::rngs::SmallRng::seed_from_u64(11).fill_bytes(&mut data);
    std::fs::write(&file, &data).unwrap();
    let id = run_json(upload_cmd(&url, &tmp.path().join("state"), &file))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let download = |out: Option<&Path>| {
        let mut c = Command::new(bin());
        c.current_dir(&work)
            .args(["download", "--server", &url, "--quiet", &id]);
        if let Some(o) = out {
            c.arg("-o").arg(o);
        }
        c.output().expect("run chunkvault download")
    };

    // Its own name exists already: refused, the file untouched.
    std::fs::write(&file, b"precious").unwrap();
    let out = download(None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists"));
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");

    // A symlink given with -o: followed, and still a symlink afterwards.
    let target = work.join("target.bin");
    let link = work.join("link.bin");
    std::fs::write(&target, b"old").unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert!(download(Some(&link)).status.success());
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(std::fs::read(&target).unwrap() == data);

    // A FIFO given with -o: written into, and still a FIFO afterwards.
    let fifo = work.join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    assert!(download(Some(&fifo)).status.success());
    assert!(reader.join().unwrap() == data);
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );

    // A directory: refused, naming it, and nothing left beside it.
    let dir = work.join("somedir");
    std::fs::create_dir(&dir).unwrap();
    let out = download(Some(&dir));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("somedir"));
    assert!(!work.join("somedir.part").exists());

    // Upload of a FIFO: refused, nothing stored.
    let out = upload_cmd(&url, &tmp.path().join("state"), &fifo)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a regular file"));
    let listed = Client::new(&url)
        .unwrap()
        .list(Some(100), None)
        .await
        .unwrap();
    assert_eq!(listed.files.len(), 1, "only the first upload is stored");
}
