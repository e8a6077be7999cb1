//! The real binary over three local-directory locations with replicas = 2: `scrub` reports
//! chunks below policy, `repair` restores them and prints what it did, `location drain` empties
//! a location, and both exit non-zero when something cannot be done.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_chunkvault")
}

fn store_args(root: &Path) -> Vec<String> {
    let loc = |n: &str| format!("{n}=file://{}", root.join(n).display());
    vec![
        "--data-dir".into(),
        root.join("data").display().to_string(),
        "--chunk-size".into(),
        "64KiB".into(),
        "--locations".into(),
        format!("{},{},{}", loc("a"), loc("b"), loc("c")),
        "--replicas".into(),
        "2".into(),
        "--write-quorum".into(),
        "2".into(),
    ]
}

/// Runs a maintenance command; returns (success, stdout, stderr).
fn run(root: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(store_args(root))
        .args(args)
        .output()
        .expect("run chunkvault");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Chunk files (by name) under one location's directory.
fn chunk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join("chunks")];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.to_string_lossy().contains('#') {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_repair_and_drain_through_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(bin())
        .args(store_args(root))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the server");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reqwest::get(format!("{url}/readyz"))
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let http = reqwest::Client::new();
    for n in 0..3u64 {
        let mut data = vec![0u8; 300_000];
        rand::rngs::StdRng::seed_from_u64(n).fill_bytes(&mut data);
        let resp = http
            .post(format!("{url}/upload"))
            .header("fileName", format!("f{n}"))
            .body(data)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
    }
    child.kill().unwrap();
    let _ = child.wait();
    let total: usize = ["a", "b", "c"]
        .iter()
        .map(|n| chunk_files(&root.join(n)).len())
        .sum();
    assert_eq!(total, 3 * 5 * 2, "15 chunks, 2 copies each");

    // Wipe b: scrub reports chunks below policy and fails; repair restores them.
    let on_b = chunk_files(&root.join("b")).len();
    std::fs::remove_dir_all(root.join("b")).unwrap();
    let (ok, out, _) = run(root, &["scrub"]);
    assert!(!ok, "scrub fails while chunks are below policy");
    assert_eq!(out.matches("BELOW_POLICY").count(), on_b, "{out}");
    let (ok, out, err) = run(root, &["repair"]);
    assert!(ok, "{out}{err}");
    assert_eq!(out.matches("restored chunk").count(), on_b, "{out}");
    assert!(out.contains("0 still below policy"), "{out}");
    let (ok, out, _) = run(root, &["scrub"]);
    assert!(ok, "{out}");

    // Drain c: everything moves to a and b.
    let (ok, out, err) = run(root, &["location", "drain", "c"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("holds no chunk now"), "{out}");
    assert!(chunk_files(&root.join("c")).is_empty());
    assert_eq!(chunk_files(&root.join("a")).len(), 15);
    assert_eq!(chunk_files(&root.join("b")).len(), 15);
    let (ok, _, err) = run(root, &["location", "drain", "nowhere"]);
    assert!(!ok);
    assert!(err.contains("no location named"), "{err}");

    // Both copies of one chunk damaged: repair cannot restore it and says so, exit 1.
    let victim = chunk_files(&root.join("a"))[0].clone();
    let rel = victim.strip_prefix(root.join("a")).unwrap().to_path_buf();
    for n in ["a", "b"] {
        let p = root.join(n).join(&rel);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(&p, bytes).unwrap();
    }
    let (ok, out, _) = run(root, &["repair"]);
    assert!(!ok, "repair exits non-zero when a chunk is lost");
    let name = rel.file_name().unwrap().to_string_lossy().into_owned();
    assert!(out.contains(&format!("LOST chunk {name}")), "{out}");
}
