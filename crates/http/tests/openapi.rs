//! Keeps `/openapi.json` true to the router, over a real socket:
//! - every documented path and method answers, with one of the statuses documented for it,
//!   never the `no_route` fallback;
//! - every other method on a documented path is refused with 405 (the router serves no method
//!   the document does not list);
//! - the served document is the one the code generates.
//!
//! The other direction (no route served without a description) holds by construction: routes
//! are only registered through `routes!` in the route table, which adds the description with
//! the handler, and clippy.toml refuses plain `.route(...)`. Paths the document does not list
//! therefore fall through to `no_route`, which the last check confirms for a sample.

#[allow(unused_macros)] // the backend matrix is not needed: routing does not depend on it
mod common;

use common::{Backend, TestServer, expect_error};
use reqwest::{Method, StatusCode};
use serde_json::Value;

const METHODS: [&str; 7] = ["get", "head", "post", "put", "patch", "delete", "options"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_matches_the_router() {
    let server = TestServer::start(Backend::SqliteLocal, common::SMALL_CHUNK).await;

    let resp = server.get("/openapi.json").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let served: Value = resp.json().await.expect("/openapi.json is JSON");
    let generated = serde_json::to_value(chunkvault_http::openapi()).expect("document as JSON");
    assert_eq!(
        served, generated,
        "the served document is the generated one"
    );
    assert!(served["openapi"].as_str().unwrap().starts_with("3."));

    let paths = served["paths"].as_object().expect("paths");
    assert!(paths.len() >= 9, "every endpoint is documented: {paths:?}");
    let mut operations = 0;
    for (template, item) in paths {
        // A valid id that names no file: the route must match, and the handler answer 404.
        let path = template
            .replace("{id}", &uuid::Uuid::now_v7().to_string())
            .replace("{index}", "0");
        assert!(!path.contains('{'), "unfilled parameter in {template}");
        for method in METHODS {
            let documented = item.get(method);
            let m = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
            let resp = server
                .http
                .request(m, format!("{}{path}", server.base))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            let status = resp.status();
            match documented {
                Some(op) => {
                    operations += 1;
                    let text = resp.text().await.unwrap_or_default();
                    let code = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
                    assert!(
                        code.as_deref() != Some("no_route"),
                        "{method} {template} is documented but not routed: {text}"
                    );
                    let statuses = op["responses"].as_object().expect("responses");
                    assert!(
                        statuses.contains_key(status.as_str()),
                        "{method} {template} answered {status}, which the document does not \
                         list ({:?}): {text}",
                        statuses.keys().collect::<Vec<_>>()
                    );
                    assert!(
                        op["operationId"].is_string() && op["summary"].is_string(),
                        "{method} {template} needs an operationId and a summary"
                    );
                }
                // HEAD is implied by GET (RFC 9110 section 9.3.2); axum answers it for every
                // GET route.
                None if method == "head" && item.get("get").is_some() => {}
                // A HEAD answer has no body to carry the code.
                None if method == "head" => {
                    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "HEAD {template}");
                }
                None => {
                    expect_error(resp, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
                }
            }
        }
    }
    assert!(operations >= 12, "{operations} operations documented");

    for path in ["/nope", "/files/x/y", "/openapi.yaml"] {
        expect_error(server.get(path).await, StatusCode::NOT_FOUND, "no_route").await;
    }
}

/// Operation ids are unique (OpenAPI requires it; handlers serving two methods share one).
#[test]
fn operation_ids_are_unique() {
    let doc = serde_json::to_value(chunkvault_http::openapi()).unwrap();
    let mut ids = Vec::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for method in METHODS {
            if let Some(id) = item.get(method).and_then(|op| op["operationId"].as_str()) {
                ids.push(id.to_string());
            }
        }
    }
    let count = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), count, "duplicate operation ids in {ids:?}");
}

/// The error codes the document lists are the ones the server sends; spot-check a few that
/// the scenarios above produce.
#[test]
fn error_codes_are_an_enum() {
    let doc = serde_json::to_value(chunkvault_http::openapi()).unwrap();
    let codes = doc["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["enum"]
        .as_array()
        .expect("ErrorDetail.code is an enum");
    for code in [
        "no_route",
        "method_not_allowed",
        "not_found",
        "missing_name",
    ] {
        assert!(codes.iter().any(|c| c == code), "{code} missing: {codes:?}");
    }
}

/// The API page is served from the binary and loads nothing from elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_page_is_self_contained() {
    let server = TestServer::start(Backend::SqliteLocal, common::SMALL_CHUNK).await;
    let resp = server.get("/docs/").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let html = resp.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    let mut assets = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            let url = part.split('"').next().unwrap_or("");
            assert!(
                !url.contains("//"),
                "the page loads {url} from another origin"
            );
            assets.push(url.trim_start_matches("./").to_string());
        }
    }
    assert!(!assets.is_empty(), "the page references its assets: {html}");
    for asset in assets {
        let resp = server.get(&format!("/docs/{asset}")).await;
        assert_eq!(resp.status(), StatusCode::OK, "/docs/{asset}");
        assert!(!resp.bytes().await.unwrap().is_empty(), "/docs/{asset}");
    }
    let init = server
        .get("/docs/swagger-initializer.js")
        .await
        .text()
        .await
        .unwrap();
    assert!(init.contains("/openapi.json"), "{init}");
    assert!(init.contains("\"validatorUrl\": \"none\""), "{init}");
}

/// What the server sends has the fields the document describes: every key of a real answer
/// is a property of its schema, every required property is there, and only optional ones
/// may be left out (a file's `sha256`, which only files from earlier versions have).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_have_the_documented_fields() {
    let server = TestServer::start(Backend::SqliteLocal, common::SMALL_CHUNK).await;
    let doc = serde_json::to_value(chunkvault_http::openapi()).unwrap();
    let schemas = &doc["components"]["schemas"];
    let check = |schema: &str, body: &Value| {
        let s = &schemas[schema];
        let mut props: Vec<&String> = s["properties"].as_object().expect(schema).keys().collect();
        let mut keys: Vec<&String> = body.as_object().expect("an object").keys().collect();
        props.sort();
        keys.sort();
        let required: Vec<&str> = s["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let undocumented: Vec<_> = keys.iter().filter(|k| !props.contains(k)).collect();
        assert!(
            undocumented.is_empty(),
            "{schema}: {undocumented:?} in {body}"
        );
        let left_out: Vec<_> = props.iter().filter(|p| !keys.contains(p)).collect();
        assert!(
            left_out.iter().all(|p| !required.contains(&p.as_str())),
            "{schema}: required {left_out:?} missing from {body}"
        );
        assert!(
            left_out.len() <= 1,
            "{schema}: {left_out:?} documented but not sent: {body}"
        );
        for r in s["required"].as_array().into_iter().flatten() {
            assert!(
                body.get(r.as_str().unwrap()).is_some(),
                "{schema} requires {r}"
            );
        }
    };
    let data = common::random_bytes(3 * common::SMALL_CHUNK, common::fresh_seed());
    let id = server.put_file("doc.bin", &data).await;
    let list: Value = server.get("/files?limit=1").await.json().await.unwrap();
    check("FileList", &list);
    check("FileInfo", &list["files"][0]);
    let detail: Value = server
        .get(&format!("/files/{id}"))
        .await
        .json()
        .await
        .unwrap();
    check("ChunkEntry", &detail["manifest"][0]);
    let err: Value = server.get("/nope").await.json().await.unwrap();
    check("ErrorBody", &err);
    check("ErrorDetail", &err["error"]);
    let status: Value = server.get("/healthz").await.json().await.unwrap();
    check("Status", &status);
}
