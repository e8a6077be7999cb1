//! `chunkvault admin ...` through the real binary, on the same configuration as a running
//! `serve` (SQLite in a data directory): accounts, keys (printed alone on the last line),
//! revocation, expiry, disabling and quotas take effect on the running server at once; the CLI sends its key from
//! `CHUNKVAULT_TOKEN` or a client file; presigned links from `chunkvault link`; and `serve`
//! refuses `--auth off` on a network address unless told explicitly.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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

/// Runs the binary with `--data-dir data` and `args`; the environment carries no key.
fn run(data: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("CHUNKVAULT_TOKEN")
        .env("XDG_CONFIG_HOME", data.join("no-config"))
        .output()
        .expect("run chunkvault")
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

async fn start(data: &Path, extra: &[&str]) -> (Server, String) {
    let port = free_port();
    let child = Command::new(bin())
        .arg("--data-dir")
        .arg(data)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_drive_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    // Accounts and keys before any server ran (the new SQLite database is migrated).
    let out = ok(&run(
        &data,
        &["admin", "create-user", "alice", "--quota", "1MiB"],
    ));
    assert!(out.contains("alice"), "{out}");
    let again = run(&data, &["admin", "create-user", "alice"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    ok(&run(&data, &["admin", "create-user", "root", "--admin"]));
    let out = ok(&run(
        &data,
        &[
            "admin",
            "create-key",
            "alice",
            "--expires",
            "30d",
            "--name",
            "laptop",
        ],
    ));
    let key = out.lines().last().unwrap().trim().to_string();
    let (key_id, _) = chunkvault_core::parse_token(&key)
        .unwrap_or_else(|| panic!("the last line is the key alone: {out:?}"));
    let key_id = key_id.to_string();
    let listed = ok(&run(&data, &["admin", "list-keys", "alice"]));
    assert!(listed.contains(&key_id) && listed.contains("laptop") && listed.contains("active"));
    assert!(!listed.contains(&key), "listing shows no secret");
    let users = ok(&run(&data, &["admin", "list-users"]));
    assert!(
        users.contains("alice") && users.contains("1048576"),
        "{users}"
    );

    let (_server, url) = start(&data, &["--auth", "required"]).await;
    let http = reqwest::Client::new();
    let files = format!("{url}/files");
    assert_eq!(
        http.get(&files).send().await.unwrap().status(),
        reqwest::StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        http.get(&files)
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .status(),
        reqwest::StatusCode::OK
    );

    // The client commands send the key from CHUNKVAULT_TOKEN, or from a client file.
    let file = dir.path().join("hello.txt");
    std::fs::write(&file, b"hello, keys").unwrap();
    let up = Command::new(bin())
        .args(["upload", "--server", &url, "--json", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg(&file)
        .env("CHUNKVAULT_TOKEN", &key)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_str(ok(&up).trim()).unwrap();
    let id = info["id"].as_str().unwrap().to_string();
    let client_file = dir.path().join("client.toml");
    std::fs::write(
        &client_file,
        format!("token = \"{key}\"\nserver = \"{url}\"\n"),
    )
    .unwrap();
    let link = Command::new(bin())
        .args(["link", &id, "--expires", "1h", "--client-config"])
        .arg(&client_file)
        .env_remove("CHUNKVAULT_TOKEN")
        .env_remove("CHUNKVAULT_SERVER")
        .output()
        .unwrap();
    let link = ok(&link).trim().to_string();
    assert!(link.starts_with(&url) && link.contains("sig="), "{link}");
    let got = reqwest::get(&link).await.unwrap();
    assert_eq!(got.status(), reqwest::StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap().as_ref(), b"hello, keys");
    let no_key = Command::new(bin())
        .args(["ls", "--server", &url])
        .env_remove("CHUNKVAULT_TOKEN")
        .env("XDG_CONFIG_HOME", dir.path().join("none"))
        .output()
        .unwrap();
    assert!(!no_key.status.success());
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("unauthorized"));

    // Rotating the link secret revokes the link on the running server.
    ok(&run(&data, &["admin", "rotate-link-secret"]));
    assert_eq!(
        reqwest::get(&link).await.unwrap().status(),
        reqwest::StatusCode::FORBIDDEN
    );

    // A quota lowered below what the next upload needs refuses it.
    ok(&run(&data, &["admin", "set-quota", "alice", "12"]));
    let put = http
        .post(format!("{url}/upload?fileName=big.txt"))
        .bearer_auth(&key)
        .body(vec![0u8; 100])
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), reqwest::StatusCode::INSUFFICIENT_STORAGE);

    // Disabling the account refuses its keys until it is enabled again; an expired key is
    // refused.
    let out = ok(&run(&data, &["admin", "create-key", "alice"]));
    let key2 = out.lines().last().unwrap().trim().to_string();
    let (key2_id, _) = chunkvault_core::parse_token(&key2).unwrap();
    let status = |k: String| {
        let r = http.get(&files).bearer_auth(k);
        async move { r.send().await.unwrap().status() }
    };
    assert_eq!(status(key2.clone()).await, reqwest::StatusCode::OK);
    ok(&run(&data, &["admin", "disable-user", "alice"]));
    assert_eq!(
        status(key2.clone()).await,
        reqwest::StatusCode::UNAUTHORIZED
    );
    ok(&run(&data, &["admin", "enable-user", "alice"]));
    assert_eq!(status(key2.clone()).await, reqwest::StatusCode::OK);
    ok(&run(&data, &["admin", "expire-key", key2_id]));
    assert_eq!(
        status(key2.clone()).await,
        reqwest::StatusCode::UNAUTHORIZED
    );
    assert!(ok(&run(&data, &["admin", "list-keys", "alice"])).contains("expired"));

    // Revoking the key takes effect at once.
    ok(&run(&data, &["admin", "revoke-key", &key_id]));
    assert_eq!(
        http.get(&files)
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .status(),
        reqwest::StatusCode::UNAUTHORIZED
    );
    let listed = ok(&run(&data, &["admin", "list-keys"]));
    assert!(listed.contains("revoked"), "{listed}");
}

#[test]
fn auth_defaults_follow_the_listen_address() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let check = |listen: &str, extra: &[&str]| {
        let mut args = vec!["config", "check", "--listen", listen];
        args.extend_from_slice(extra);
        run(&data, &args)
    };
    assert!(ok(&check("127.0.0.1:3000", &[])).contains("auth = off"));
    assert!(ok(&check("0.0.0.0:3000", &[])).contains("auth = required"));
    let refused = check("0.0.0.0:3000", &["--auth", "off"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--allow-unauthenticated-network"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let allowed = check(
        "0.0.0.0:3000",
        &["--auth", "off", "--allow-unauthenticated-network"],
    );
    assert!(ok(&allowed).contains("auth = off"));
    let serve = run(&data, &["serve", "--listen", "0.0.0.0:0", "--auth", "off"]);
    assert!(
        !serve.status.success(),
        "serve refuses auth off on a network address"
    );
}
