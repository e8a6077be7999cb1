//! Authentication and authorization over a real socket, on both backend pairs:
//! - every route of the OpenAPI document, tried with no key, a malformed key, a wrong secret,
//!   a revoked key, an expired key, a disabled account's key and another user's key: refused
//!   with the right status, one body for every refused key, and nothing of the owner's data
//!   in any answer;
//! - presigned links: valid, ranged, expired, tampered (signature, expiry, range), after the
//!   secret is rotated, after the file is deleted;
//! - quotas: exceeded at creation, mid-upload and at commit, nothing visible, `bytes_used`
//!   exact through uploads and deletes;
//! - dedup tells an account only about content it already holds itself;
//! - refused keys are logged with the reason and the key id, never a secret;
//! - the per-address limit on failed authentications, the per-account upload limit and the
//!   limit on header sizes.

#[macro_use]
mod common;

use std::time::Duration;

use chunkvault_core::{Principal, VaultConfig};
use chunkvault_meta::{AccountId, Role};
use chunkvault_types::{ChunkId, ChunkOffer};
use common::{Backend, TestServer, expect_error, header, random_bytes};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use time::OffsetDateTime;

struct User {
    id: AccountId,
    key: String,
}

async fn start(backend: Backend, failures_per_minute: u32) -> TestServer {
    TestServer::start_with_auth(
        backend,
        VaultConfig {
            chunk_size: common::SMALL_CHUNK,
            ..VaultConfig::default()
        },
        chunkvault_http::AuthOptions {
            mode: chunkvault_http::AuthMode::Required,
            failures_per_minute,
        },
    )
    .await
}

async fn user(s: &TestServer, name: &str, role: Role, quota: Option<u64>) -> User {
    let meta = &**s.vault.meta();
    let name = format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let account = chunkvault_core::create_account(meta, &name, role, quota)
        .await
        .unwrap();
    let key = chunkvault_core::create_key(meta, account.id, "test", None)
        .await
        .unwrap();
    User {
        id: account.id,
        key: key.token,
    }
}

fn req(s: &TestServer, method: Method, path: &str, key: Option<&str>) -> reqwest::RequestBuilder {
    let r = s.http.request(method, format!("{}{path}", s.base));
    match key {
        Some(k) => r.bearer_auth(k),
        None => r,
    }
}

async fn upload(s: &TestServer, key: &str, name: &str, data: &[u8]) -> reqwest::Response {
    req(s, Method::POST, "/upload", Some(key))
        .query(&[("fileName", name)])
        .header("fileSize", data.len().to_string())
        .body(data.to_vec())
        .send()
        .await
        .unwrap()
}

async fn upload_ok(s: &TestServer, key: &str, name: &str, data: &[u8]) -> String {
    let resp = upload(s, key, name, data).await;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_string()
}

async fn bytes_used(s: &TestServer, id: AccountId) -> u64 {
    s.vault
        .meta()
        .account(id)
        .await
        .unwrap()
        .unwrap()
        .bytes_used
}

/// One request to `path` (the route `template` filled in) with a body that passes the
/// route's own checks, so what answers is the access check.
async fn attempt(
    s: &TestServer,
    m: &Method,
    template: &str,
    path: &str,
    key: Option<&str>,
) -> (StatusCode, Option<String>, String) {
    let r = req(s, m.clone(), path, key)
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", "0")
        .header("upload-length", "10");
    let r = if template.ends_with("/links") {
        r.json(&serde_json::json!({"expires_in": "1h"}))
    } else if template.ends_with("/chunks") {
        r.json(&serde_json::json!({"chunks": []}))
    } else if template.ends_with("/commit") {
        r.json(&serde_json::json!({}))
    } else if *m == Method::PUT || *m == Method::PATCH || *m == Method::POST {
        r.header("content-type", "application/offset+octet-stream")
            .body(vec![1u8; 10])
    } else {
        r
    };
    let resp = r.send().await.unwrap();
    let status = resp.status();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|c| c.to_str().unwrap_or("").to_string());
    (status, challenge, resp.text().await.unwrap_or_default())
}

const METHODS: [&str; 7] = ["get", "head", "post", "put", "patch", "delete", "options"];

/// Routes anyone may call.
fn open_route(method: &str, template: &str) -> bool {
    matches!(template, "/healthz" | "/readyz" | "/openapi.json")
        || (method == "options" && template.starts_with("/tus"))
}

/// Routes for admin accounts only.
fn admin_route(template: &str) -> bool {
    matches!(template, "/metrics" | "/scrub")
}

async fn every_route_refuses_what_is_not_yours(backend: Backend) {
    let s = start(backend, 100_000).await;
    let alice = user(&s, "alice", Role::User, None).await;
    let bob = user(&s, "bob", Role::User, None).await;
    let meta = s.vault.meta().clone();

    // Keys that must all be refused alike.
    let revoked = chunkvault_core::create_key(&*meta, alice.id, "revoked", None)
        .await
        .unwrap();
    meta.revoke_api_key(&revoked.record.id, OffsetDateTime::now_utc())
        .await
        .unwrap();
    let expired = chunkvault_core::create_key(
        &*meta,
        alice.id,
        "expired",
        Some(OffsetDateTime::now_utc() - Duration::from_secs(1)),
    )
    .await
    .unwrap();
    let carol = user(&s, "carol", Role::User, None).await;
    meta.set_account_disabled(carol.id, true).await.unwrap();
    let (alice_key_id, _) = chunkvault_core::parse_token(&alice.key).unwrap();
    let wrong_secret = format!("cvk_{alice_key_id}_{}", "0".repeat(64));
    let bad_keys: Vec<(&str, Option<String>)> = vec![
        ("no key", None),
        ("malformed", Some("not-a-key".into())),
        ("wrong secret", Some(wrong_secret)),
        ("revoked", Some(revoked.token.clone())),
        ("expired", Some(expired.token.clone())),
        ("disabled account", Some(carol.key.clone())),
    ];

    // Alice's data: a file, an open session with a chunk, a tus upload.
    let secret_name = format!("alice-private-{}.bin", uuid::Uuid::new_v4().simple());
    let data = random_bytes(3 * common::SMALL_CHUNK / 2, common::fresh_seed());
    let file = upload_ok(&s, &alice.key, &secret_name, &data).await;
    let session: Value = req(&s, Method::POST, "/uploads", Some(&alice.key))
        .json(&serde_json::json!({"name": secret_name, "size": 100}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = session["id"].as_str().unwrap().to_string();
    let put = req(
        &s,
        Method::PUT,
        &format!("/uploads/{session}/chunks/0"),
        Some(&alice.key),
    )
    .body(vec![7u8; 100])
    .send()
    .await
    .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let tus = req(&s, Method::POST, "/tus", Some(&alice.key))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "10")
        .send()
        .await
        .unwrap();
    assert_eq!(tus.status(), StatusCode::CREATED);
    let tus_id = tus.headers()["location"]
        .to_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let secrets = [
        file.clone(),
        session.clone(),
        tus_id.clone(),
        secret_name.clone(),
    ];
    let leaks = |body: &str| secrets.iter().find(|x| body.contains(x.as_str())).cloned();

    let doc: Value = req(&s, Method::GET, "/openapi.json", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut tried = 0;
    for (template, item) in doc["paths"].as_object().unwrap() {
        let id = if template.starts_with("/uploads/") {
            &session
        } else if template.starts_with("/tus/") {
            &tus_id
        } else {
            &file
        };
        let path = template.replace("{id}", id).replace("{index}", "1");
        for method in METHODS.iter().filter(|m| item.get(**m).is_some()) {
            let m = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
            tried += 1;
            if open_route(method, template) {
                let (status, _, _) = attempt(&s, &m, template, &path, None).await;
                assert_ne!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {template} is open"
                );
                continue;
            }
            let mut first_body = None;
            for (what, key) in &bad_keys {
                let (status, challenge, body) =
                    attempt(&s, &m, template, &path, key.as_deref()).await;
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {template} with {what}: {body}"
                );
                assert!(
                    challenge.is_some_and(|c| c.starts_with("Bearer")),
                    "{method} {template} with {what}: WWW-Authenticate"
                );
                if *method != "head" {
                    let v: Value = serde_json::from_str(&body).unwrap();
                    assert_eq!(v["error"]["code"], "unauthorized", "{method} {template}");
                }
                assert_eq!(leaks(&body), None, "{method} {template} with {what} leaks");
                // One answer for every refused key: the body does not say which it was.
                match &first_body {
                    None => first_body = Some(body),
                    Some(b) => {
                        assert_eq!(b, &body, "{method} {template}: {what} answers differently")
                    }
                }
            }
            // Another user's key: admin routes are 403; routes naming alice's ids are 404,
            // exactly like an id that does not exist; the others show bob nothing of alice's.
            let (status, _, body) = attempt(&s, &m, template, &path, Some(&bob.key)).await;
            assert_eq!(
                leaks(&body),
                None,
                "{method} {template} with bob's key leaks: {body}"
            );
            if admin_route(template) {
                assert_eq!(status, StatusCode::FORBIDDEN, "{method} {template}");
            } else if template.contains("{id}") {
                assert_eq!(
                    status,
                    StatusCode::NOT_FOUND,
                    "{method} {template} with bob's key: {body}"
                );
                let missing = template
                    .replace("{id}", &uuid::Uuid::now_v7().to_string())
                    .replace("{index}", "1");
                let (other, _, other_body) =
                    attempt(&s, &m, template, &missing, Some(&bob.key)).await;
                assert_eq!(other, status, "{method} {template}: missing vs not yours");
                assert_eq!(
                    other_body, body,
                    "{method} {template}: another user's id answers like a missing one"
                );
            }
        }
    }
    assert!(tried >= 19, "only {tried} operations tried");

    // Bob's listing has none of alice's files; an admin sees them; alice's data is intact.
    let bobs: Value = req(&s, Method::GET, "/files", Some(&bob.key))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!bobs.to_string().contains(&file));
    let admin = user(&s, "admin", Role::Admin, None).await;
    let all: Value = req(&s, Method::GET, "/files?limit=1000", Some(&admin.key))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(all.to_string().contains(&file));
    let metrics = req(&s, Method::GET, "/metrics", Some(&admin.key))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    let got = req(
        &s,
        Method::GET,
        &format!("/download/{file}"),
        Some(&alice.key),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap().as_ref(), data.as_slice());
    let status: Value = req(
        &s,
        Method::GET,
        &format!("/uploads/{session}"),
        Some(&alice.key),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        status["state"], "open",
        "bob could not touch alice's session"
    );
    assert_eq!(status["stored"], serde_json::json!([0]));
}

async fn presigned_links(backend: Backend) {
    let s = start(backend, 100_000).await;
    let alice = user(&s, "alice", Role::User, None).await;
    let bob = user(&s, "bob", Role::User, None).await;
    let name = format!("linked-{}.bin", uuid::Uuid::new_v4().simple());
    let data = random_bytes(100_000, common::fresh_seed());
    let file = upload_ok(&s, &alice.key, &name, &data).await;
    let link = |key: &str, body: Value| {
        let r = req(&s, Method::POST, &format!("/files/{file}/links"), Some(key)).json(&body);
        async move { r.send().await.unwrap() }
    };
    let anonymous = |url: String| {
        let r = s.http.get(format!("{}{url}", s.base));
        async move { r.send().await.unwrap() }
    };

    // Valid: anyone holding it downloads, no key.
    let resp = link(&alice.key, serde_json::json!({"expires_in": "1h"})).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let whole: Value = resp.json().await.unwrap();
    let url = whole["url"].as_str().unwrap().to_string();
    let got = anonymous(url.clone()).await;
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap().as_ref(), data.as_slice());

    // A ranged link serves its range when the client asks for more.
    let ranged: Value = link(
        &alice.key,
        serde_json::json!({"expires_in": "10m", "range": "bytes=10-19"}),
    )
    .await
    .json()
    .await
    .unwrap();
    let ranged = ranged["url"].as_str().unwrap().to_string();
    let got = s
        .http
        .get(format!("{}{ranged}", s.base))
        .header("range", "bytes=0-99999")
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(got.bytes().await.unwrap().as_ref(), &data[10..20]);
    // A range within it is served as asked (a resumed download); one reaching outside it,
    // or a stale If-Range (whose fallback is the whole file), gets the link's range.
    for (asked, if_range, want) in [
        ("bytes=12-14", None, 12..15),
        ("bytes=10-19", None, 10..20),
        ("bytes=15-", None, 10..20),
        ("bytes=-3", None, 10..20),
        ("bytes=5-12", None, 10..20),
        ("bytes=12-14", Some("\"stale\""), 12..15),
    ] {
        let mut req = s
            .http
            .get(format!("{}{ranged}", s.base))
            .header("range", asked);
        if let Some(ir) = if_range {
            req = req.header("if-range", ir);
        }
        let got = req.send().await.unwrap();
        assert_eq!(got.status(), StatusCode::PARTIAL_CONTENT, "{asked}");
        assert_eq!(
            header(got.headers(), "content-range"),
            format!("bytes {}-{}/{}", want.start, want.end - 1, data.len()),
            "{asked}"
        );
        assert_eq!(got.bytes().await.unwrap().as_ref(), &data[want], "{asked}");
    }

    let refused = |resp: reqwest::Response, code: &'static str| {
        let name = name.clone();
        async move {
            let body = expect_error(resp, StatusCode::FORBIDDEN, code).await;
            assert!(!body.contains(&name), "a refused link names the file");
        }
    };
    // One character of the signature changed.
    let sig_at = url.find("sig=").unwrap() + 4;
    let mut tampered = url.clone().into_bytes();
    tampered[sig_at] = if tampered[sig_at] == b'0' { b'1' } else { b'0' };
    refused(
        anonymous(String::from_utf8(tampered).unwrap()).await,
        "link_invalid",
    )
    .await;
    // The expiry extended.
    let expires: i64 = url
        .split("expires=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let extended = url.replace(
        &format!("expires={expires}"),
        &format!("expires={}", expires + 86_400),
    );
    refused(anonymous(extended).await, "link_invalid").await;
    // The range changed, or dropped.
    refused(
        anonymous(ranged.replace("range=10-19", "range=0-99999")).await,
        "link_invalid",
    )
    .await;
    let dropped = ranged
        .split('&')
        .filter(|p| !p.starts_with("range="))
        .collect::<Vec<_>>()
        .join("&");
    refused(anonymous(dropped).await, "link_invalid").await;
    // Another file id with the same signature.
    let other = upload_ok(&s, &alice.key, "other.bin", b"other").await;
    refused(anonymous(url.replace(&file, &other)).await, "link_invalid").await;
    // Expired: correctly signed, past its time.
    let past = s
        .vault
        .sign_link(
            &Principal::User(alice.id),
            file.parse().unwrap(),
            OffsetDateTime::now_utc().unix_timestamp() - 5,
            None,
        )
        .await
        .unwrap();
    refused(
        anonymous(format!(
            "/download/{file}?expires={}&sig={}",
            past.expires, past.sig
        ))
        .await,
        "link_expired",
    )
    .await;

    // Bad requests for a link; another user's file is not found.
    let bad = link(&alice.key, serde_json::json!({"expires_in": "forever"})).await;
    expect_error(bad, StatusCode::BAD_REQUEST, "invalid_expiry").await;
    let bad = link(
        &alice.key,
        serde_json::json!({"expires_in": "1h", "range": "bytes=9-1"}),
    )
    .await;
    expect_error(bad, StatusCode::BAD_REQUEST, "invalid_range").await;
    let theirs = link(&bob.key, serde_json::json!({"expires_in": "1h"})).await;
    expect_error(theirs, StatusCode::NOT_FOUND, "not_found").await;

    // Rotating the secret revokes every link; new ones work.
    chunkvault_core::rotate_link_secret(&**s.vault.meta())
        .await
        .unwrap();
    refused(anonymous(url.clone()).await, "link_invalid").await;
    let fresh: Value = link(&alice.key, serde_json::json!({"expires_in": "1h"}))
        .await
        .json()
        .await
        .unwrap();
    let fresh = fresh["url"].as_str().unwrap().to_string();
    assert_eq!(anonymous(fresh.clone()).await.status(), StatusCode::OK);

    // A link to a deleted file: 404.
    let del = req(
        &s,
        Method::DELETE,
        &format!("/files/{file}"),
        Some(&alice.key),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    expect_error(anonymous(fresh).await, StatusCode::NOT_FOUND, "not_found").await;
}

async fn quota_is_exact_and_nothing_over_it_is_visible(backend: Backend) {
    let s = start(backend, 100_000).await;
    let cs = common::SMALL_CHUNK;
    let quota = (2 * cs) as u64;
    let alice = user(&s, "alice", Role::User, Some(quota)).await;
    let listed = |key: String| {
        let r = req(&s, Method::GET, "/files", Some(&key));
        async move {
            let v: Value = r.send().await.unwrap().json().await.unwrap();
            v["files"].as_array().unwrap().len()
        }
    };

    let first = upload_ok(&s, &alice.key, "first.bin", &random_bytes(cs, 1)).await;
    assert_eq!(bytes_used(&s, alice.id).await, cs as u64);

    // Declared over the remaining quota: refused before any byte is stored.
    let over = upload(&s, &alice.key, "declared.bin", &random_bytes(cs + 1, 2)).await;
    expect_error(over, StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded").await;
    // Undeclared, running over mid-body: refused, nothing visible.
    let resp = req(&s, Method::POST, "/upload", Some(&alice.key))
        .query(&[("fileName", "streamed.bin")])
        .body(reqwest::Body::wrap_stream(futures::stream::iter(
            (0..4).map(move |i| Ok::<_, std::io::Error>(random_bytes(cs / 2, 10 + i))),
        )))
        .send()
        .await
        .unwrap();
    // Refused before the body's end: the answer says the connection closes, so the client
    // does not send its next request on it.
    assert_eq!(common::header(resp.headers(), "connection"), "close");
    expect_error(resp, StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded").await;
    assert_eq!(listed(alice.key.clone()).await, 1);
    assert_eq!(bytes_used(&s, alice.id).await, cs as u64);

    // A session without a declared size passes every chunk, then the commit is refused and
    // the upload aborted.
    let sess: Value = req(&s, Method::POST, "/uploads", Some(&alice.key))
        .json(&serde_json::json!({"name": "session.bin"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sid = sess["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{sess}"))
        .to_string();
    for (i, len) in [(0, cs), (1, 10)] {
        let put = req(
            &s,
            Method::PUT,
            &format!("/uploads/{sid}/chunks/{i}"),
            Some(&alice.key),
        )
        .body(random_bytes(len, 20 + i))
        .send()
        .await
        .unwrap();
        assert_eq!(put.status(), StatusCode::OK);
    }
    let commit = req(
        &s,
        Method::POST,
        &format!("/uploads/{sid}/commit"),
        Some(&alice.key),
    )
    .send()
    .await
    .unwrap();
    expect_error(commit, StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded").await;
    let after: Value = req(
        &s,
        Method::GET,
        &format!("/uploads/{sid}"),
        Some(&alice.key),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(after["state"], "aborted");
    assert_eq!(listed(alice.key.clone()).await, 1);
    assert_eq!(bytes_used(&s, alice.id).await, cs as u64);

    // Declared sizes over the quota: session and tus creation refused.
    let big = req(&s, Method::POST, "/uploads", Some(&alice.key))
        .json(&serde_json::json!({"name": "big.bin", "size": quota}))
        .send()
        .await
        .unwrap();
    expect_error(big, StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded").await;
    let big = req(&s, Method::POST, "/tus", Some(&alice.key))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", quota.to_string())
        .send()
        .await
        .unwrap();
    expect_error(big, StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded").await;

    // Exactly up to the quota fits; deletes credit back exactly.
    let second = upload_ok(&s, &alice.key, "second.bin", &random_bytes(cs, 3)).await;
    assert_eq!(bytes_used(&s, alice.id).await, quota);
    // Full: even a few bytes (a small file is kept inline, and the metadata store's
    // transaction is then the only check) are refused, and nothing of them is visible.
    let tiny = upload(&s, &alice.key, "tiny.bin", b"12345").await;
    expect_error(tiny, StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded").await;
    assert_eq!(listed(alice.key.clone()).await, 2);
    assert_eq!(bytes_used(&s, alice.id).await, quota);
    for id in [&first, &second] {
        let del = req(
            &s,
            Method::DELETE,
            &format!("/files/{id}"),
            Some(&alice.key),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(del.status(), StatusCode::NO_CONTENT);
    }
    assert_eq!(bytes_used(&s, alice.id).await, 0);
    assert_eq!(listed(alice.key.clone()).await, 0);
}

async fn dedup_does_not_reveal_other_accounts_content(backend: Backend) {
    let s = start(backend, 100_000).await;
    let cs = common::SMALL_CHUNK;
    let alice = user(&s, "alice", Role::User, None).await;
    let bob = user(&s, "bob", Role::User, None).await;
    let data = random_bytes(2 * cs, common::fresh_seed());
    upload_ok(&s, &alice.key, "alice.bin", &data).await;
    let offers: Vec<ChunkOffer> = data
        .chunks(cs)
        .enumerate()
        .map(|(i, c)| ChunkOffer {
            index: i as u64,
            length: c.len() as u64,
            hash: ChunkId::of(c),
        })
        .collect();
    let session = |key: String| {
        let r = req(&s, Method::POST, "/uploads", Some(&key))
            .json(&serde_json::json!({"name": "copy.bin", "size": data.len()}));
        async move {
            let v: Value = r.send().await.unwrap().json().await.unwrap();
            v["id"].as_str().unwrap().to_string()
        }
    };
    let offer = |key: String, sid: String| {
        let r = req(
            &s,
            Method::POST,
            &format!("/uploads/{sid}/chunks"),
            Some(&key),
        )
        .json(&serde_json::json!({"chunks": offers}));
        async move { r.send().await.unwrap().json::<Value>().await.unwrap() }
    };

    // Bob offers exactly alice's chunks: all missing, nothing recorded as stored.
    let sid = session(bob.key.clone()).await;
    let answer = offer(bob.key.clone(), sid.clone()).await;
    assert_eq!(answer["present"], serde_json::json!([]), "{answer}");
    assert_eq!(answer["missing"], serde_json::json!([0, 1]));
    let status: Value = req(&s, Method::GET, &format!("/uploads/{sid}"), Some(&bob.key))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["stored"], serde_json::json!([]), "{status}");
    // Sending the bytes: reported written, as for new content.
    let put: Value = req(
        &s,
        Method::PUT,
        &format!("/uploads/{sid}/chunks/0"),
        Some(&bob.key),
    )
    .body(data[..cs].to_vec())
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(put["written"], true, "{put}");
    // The same for a whole tus upload: its offset only moves by what bob sent.
    let tus = req(&s, Method::POST, "/tus", Some(&bob.key))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", data.len().to_string())
        .send()
        .await
        .unwrap();
    let loc = tus.headers()["location"].to_str().unwrap().to_string();
    let head = req(&s, Method::HEAD, &loc, Some(&bob.key))
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(head.headers()["upload-offset"], "0");

    // Alice, who holds the content, is told it is present.
    let sid = session(alice.key.clone()).await;
    let answer = offer(alice.key.clone(), sid.clone()).await;
    assert_eq!(answer["present"], serde_json::json!([0, 1]), "{answer}");
    let commit = req(
        &s,
        Method::POST,
        &format!("/uploads/{sid}/commit"),
        Some(&alice.key),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(commit.status(), StatusCode::CREATED);
    // Bob, once he has sent chunk 0 himself, holds it: offering it again says present.
    let sid2 = session(bob.key.clone()).await;
    let again = offer(bob.key.clone(), sid2).await;
    assert_eq!(again["present"], serde_json::json!([0]), "{again}");
    assert_eq!(again["missing"], serde_json::json!([1]), "{again}");
}

async fn failed_authentication_is_rate_limited(backend: Backend) {
    let s = start(backend, 3).await;
    let alice = user(&s, "alice", Role::User, None).await;
    let wrong = |n: u8| format!("cvk_{}_{}", "a".repeat(12), format!("{n:02}").repeat(32));
    for n in 0..3 {
        let r = req(&s, Method::GET, "/files", Some(&wrong(n)))
            .send()
            .await
            .unwrap();
        expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    let r = req(&s, Method::GET, "/files", Some(&wrong(9)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["retry-after"], "60");
    expect_error(r, StatusCode::TOO_MANY_REQUESTS, "too_many_auth_failures").await;
    // Even a good key waits: the address is throttled, not the key.
    let r = req(&s, Method::GET, "/files", Some(&alice.key))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::TOO_MANY_REQUESTS, "too_many_auth_failures").await;
    // Open endpoints still answer.
    let r = req(&s, Method::GET, "/healthz", None).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

async fn limits_on_headers_and_concurrent_uploads(backend: Backend) {
    let s = TestServer::start_with_auth(
        backend,
        VaultConfig {
            chunk_size: common::SMALL_CHUNK,
            max_uploads_per_account: 1,
            ..VaultConfig::default()
        },
        chunkvault_http::AuthOptions {
            mode: chunkvault_http::AuthMode::Required,
            failures_per_minute: 1000,
        },
    )
    .await;
    let alice = user(&s, "alice", Role::User, None).await;
    let bob = user(&s, "bob", Role::User, None).await;
    let big = "x".repeat(chunkvault_http::MAX_HEADER_BYTES);
    let r = req(&s, Method::GET, "/files", Some(&alice.key))
        .header("x-padding", big)
        .send()
        .await
        .unwrap();
    expect_error(
        r,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
    )
    .await;

    // With the account's one slot taken (as by an upload streaming on this node), its next
    // upload is refused; another account is not affected; once the slot frees, it works.
    let slot = s.vault.upload_slot(&Principal::User(alice.id)).unwrap();
    let r = upload(&s, &alice.key, "second.bin", b"second").await;
    expect_error(r, StatusCode::TOO_MANY_REQUESTS, "too_many_uploads").await;
    upload_ok(&s, &bob.key, "bob.bin", b"bob").await;
    drop(slot);
    upload_ok(&s, &alice.key, "third.bin", b"third").await;
}

/// Everything the process logs, for checking what a log line does and does not contain.
/// Global: the server logs from the runtime's worker threads.
fn captured_logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> =
        std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("one subscriber per test binary");
        buf
    })
    .clone()
}

struct LogSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn refused_keys_are_logged_without_their_secret(backend: Backend) {
    let logs = captured_logs();
    let s = start(backend, 1000).await;
    let alice = user(&s, "alice", Role::User, None).await;
    let (id, secret) = chunkvault_core::parse_token(&alice.key).unwrap();
    // The right id with another secret, and the right key once revoked.
    let wrong_secret: String = secret.chars().rev().collect();
    let wrong = format!("cvk_{id}_{wrong_secret}");
    let r = req(&s, Method::GET, "/files", Some(&wrong))
        .send()
        .await
        .unwrap();
    let wrong_body = expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // Two Authorization headers, the good key first or last: no key at all.
    for pair in [[&alice.key, &wrong], [&wrong, &alice.key]] {
        let mut r = s.http.get(format!("{}/files", s.base));
        for k in pair {
            r = r.header("authorization", format!("Bearer {k}"));
        }
        let r = r.send().await.unwrap();
        expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    s.vault
        .meta()
        .revoke_api_key(id, OffsetDateTime::now_utc())
        .await
        .unwrap();
    let r = req(&s, Method::GET, "/files", Some(&alice.key))
        .send()
        .await
        .unwrap();
    let revoked_body = expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert_eq!(wrong_body, revoked_body, "the answer does not say why");
    let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let ours: Vec<&str> = text.lines().filter(|l| l.contains(id)).collect();
    assert!(
        ours.iter()
            .any(|l| l.contains("authentication failed") && l.contains("wrong secret")),
        "{ours:?}"
    );
    assert!(ours.iter().any(|l| l.contains("revoked key")), "{ours:?}");
    assert!(!text.contains(secret), "a log line holds the key's secret");
    assert!(
        !text.contains(&wrong_secret),
        "a log line holds a presented secret"
    );
}

backend_tests!(
    refused_keys_are_logged_without_their_secret,
    every_route_refuses_what_is_not_yours,
    presigned_links,
    quota_is_exact_and_nothing_over_it_is_visible,
    dedup_does_not_reveal_other_accounts_content,
    failed_authentication_is_rate_limited,
    limits_on_headers_and_concurrent_uploads,
);
