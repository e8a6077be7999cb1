//! Crash safety: the real binary is killed with SIGKILL at random moments while uploads are in
//! flight, then restarted. After every restart no partial file is visible and every committed
//! file downloads byte-identical; every few rounds, after `chunkvault gc`, the blob store holds
//! exactly the chunks committed files reference: nothing orphaned, nothing referenced lost.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chunkvault_client::Client;
use rand::{Rng, SeedableRng};

mod common;
use common::free_port;

const ROUNDS: usize = 25;
const GC_EVERY: usize = 5;
const UPLOAD_TTL: &str = "2s";

struct Server {
    child: Child,
    url: String,
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_chunkvault")
}

fn base_args(data: &Path) -> Vec<String> {
    vec![
        "--data-dir".into(),
        data.display().to_string(),
        "--chunk-size".into(),
        "64KiB".into(),
        "--upload-ttl".into(),
        UPLOAD_TTL.into(),
    ]
}

async fn start(data: &Path) -> Server {
    let port = free_port();
    let mut args = base_args(data);
    args.extend([
        "serve".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--gc-interval".into(),
        "1h".into(),
    ]);
    let child = Command::new(bin())
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start server");
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
    Server { child, url }
}

fn kill9(mut s: Server) {
    // Child::kill sends SIGKILL on Unix: no shutdown path runs.
    s.child.kill().expect("kill -9");
    s.child.wait().expect("reap");
}

/// Payloads share chunks (a common 128 KiB prefix for some), so dedup runs during crashes too.
fn payload(rng: &mut rand::rngs::StdRng, shared: &Bytes) -> Bytes {
    let size = match rng.random_range(0..10) {
        0 => 0,
        1 => rng.random_range(1..100),
        _ => rng.random_range(1..(1 << 20)),
    };
    let mut v = vec![0u8; size];
    rng.fill(&mut v[..]);
    if size > shared.len() && rng.random_bool(0.5) {
        v[..shared.len()].copy_from_slice(shared);
    }
    Bytes::from(v)
}

/// The file digest the server computes (BLAKE3).
fn digest(data: &[u8]) -> String {
    chunkvault_types::FileDigest::blake3_of(data)
        .hex()
        .to_string()
}

fn blob_files(data: &Path) -> HashSet<String> {
    fn walk(dir: &Path, out: &mut HashSet<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                // object_store stages writes as `<name>#<n>` before renaming; a kill can leave
                // one behind. It is not a chunk (never listed as one) but we count it too.
                out.insert(name.to_string());
            }
        }
    }
    let mut out = HashSet::new();
    walk(&data.join("blobs").join("chunks"), &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_during_uploads_loses_nothing_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("data");
    let seed = rand::random::<u64>();
    eprintln!("crash test seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut shared = vec![0u8; 128 << 10];
    rng.fill(&mut shared[..]);
    let shared = Bytes::from(shared);

    // digest -> content, for everything ever sent; and the ids we saw committed.
    let mut sent: HashMap<String, Bytes> = HashMap::new();
    let mut committed: HashMap<String, String> = HashMap::new(); // id -> digest
    let (mut partial_seen, mut lost, mut orphans_after_gc, mut missing_after_gc) = (0, 0, 0, 0);

    for round in 1..=ROUNDS {
        let server = start(&data).await;
        let client = Client::new(&server.url).unwrap();

        // Everything visible is whole: a committed id we know, or an upload whose response the
        // kill swallowed, and then its content is one we sent, complete.
        let mut after = None;
        let mut visible = Vec::new();
        loop {
            let page = client.list(Some(1000), after.as_deref()).await.unwrap();
            visible.extend(page.files.iter().cloned());
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let visible_ids: HashSet<String> = visible.iter().map(|f| f.id.to_string()).collect();
        for (id, want) in &committed {
            if !visible_ids.contains(id) {
                lost += 1;
                eprintln!("round {round}: committed file {id} is gone");
                continue;
            }
            let got = client.download_bytes(id).await.unwrap();
            if digest(&got) != *want {
                lost += 1;
                eprintln!("round {round}: committed file {id} changed");
            }
        }
        for f in &visible {
            let got = client.download_bytes(&f.id.to_string()).await.unwrap();
            let d = digest(&got);
            if !sent.contains_key(&d) || Some(&d) != f.blake3.as_ref() || got.len() as u64 != f.size
            {
                partial_seen += 1;
                eprintln!("round {round}: visible file {} is not a whole upload", f.id);
            }
            committed.insert(f.id.to_string(), d);
        }

        // Uploads in flight, then SIGKILL at a random moment.
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let client = client.clone();
            let mut bodies = Vec::new();
            for _ in 0..6 {
                let p = payload(&mut rng, &shared);
                sent.insert(digest(&p), p.clone());
                bodies.push(p);
            }
            tasks.push(tokio::spawn(async move {
                let mut done = Vec::new();
                for (i, b) in bodies.into_iter().enumerate() {
                    match client
                        .upload_bytes(&format!("f{i}.bin"), "application/octet-stream", b.clone())
                        .await
                    {
                        Ok(info) => done.push((info.id.to_string(), digest(&b))),
                        Err(_) => break,
                    }
                }
                done
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..400))).await;
        kill9(server);
        for t in tasks {
            for (id, digest) in t.await.unwrap() {
                committed.insert(id, digest);
            }
        }

        if round % GC_EVERY == 0 {
            // Let the killed uploads expire, collect, and compare the store with the manifests.
            tokio::time::sleep(Duration::from_millis(2100)).await;
            let mut args = base_args(&data);
            args.extend(["gc".into(), "--grace".into(), "0s".into()]);
            let out = Command::new(bin()).args(&args).output().expect("run gc");
            assert!(
                out.status.success(),
                "gc failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!(
                "round {round}: {}",
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            let server = start(&data).await;
            let client = Client::new(&server.url).unwrap();
            let mut referenced = HashSet::new();
            let list = client.list(Some(1000), None).await.unwrap();
            assert!(list.next.is_none(), "test keeps fewer than 1000 files");
            // Inline files (small ones, kept in the database) have no blob.
            for f in list.files.iter().filter(|f| !f.inline) {
                for c in client.stat(&f.id.to_string()).await.unwrap().manifest {
                    referenced.insert(c.hash.to_hex());
                }
            }
            let stored = blob_files(&data);
            orphans_after_gc += stored.difference(&referenced).count();
            missing_after_gc += referenced.difference(&stored).count();
            for o in stored.difference(&referenced) {
                eprintln!("round {round}: orphan blob {o}");
            }
            kill9(server);
        }
    }
    eprintln!(
        "crash test: {ROUNDS} rounds, {} committed files, {partial_seen} partial visible, {lost} lost, {orphans_after_gc} orphans and {missing_after_gc} missing after gc",
        committed.len()
    );
    assert!(
        !committed.is_empty(),
        "some uploads committed between kills"
    );
    assert_eq!(partial_seen, 0, "no partial file is ever visible");
    assert_eq!(lost, 0, "no committed file is lost or changed");
    assert_eq!(orphans_after_gc, 0, "gc leaves no unreferenced blob");
    assert_eq!(missing_after_gc, 0, "no referenced blob is missing");
}
