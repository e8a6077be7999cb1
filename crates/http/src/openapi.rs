//! The OpenAPI document (`GET /openapi.json`) and the interactive page that renders it
//! (`GET /docs`).
//!
//! The document is generated from the `#[utoipa::path]` attributes on the handlers, collected by
//! the route table in `lib.rs` (`api()`), which registers each handler and its description in
//! one call: a route cannot be served without being described. Swagger UI's files are compiled
//! into the binary (`utoipa-swagger-ui` with its `vendored` feature), so neither the build nor
//! the page fetches anything from the network.

use std::sync::OnceLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chunkvault_core::ScrubReport;
use chunkvault_types::{ChunkEntry, ErrorBody, ErrorDetail, FileDetail, FileInfo, FileList};
use utoipa::OpenApi;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::error::ERROR_CODES;

/// What the generated paths are merged into: the document's header, tags and the schemas no
/// path names directly.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "chunkvault",
        description = "Chunked, content-addressed, verified file storage.\n\n\
Every error is `{\"error\": {\"code\": \"...\", \"message\": \"...\"}}`; clients match on \
`code` (the full list is the `code` enum of `ErrorDetail`). Any path not listed here answers \
404 `no_route`; a listed path with a method not listed answers 405 `method_not_allowed`. \
Every 503 carries `Retry-After`. Every response carries `X-Request-Id` (the client's, when it \
sent 1 to 128 letters, digits or `-_.:/+=@~`)."
    ),
    tags(
        (name = "files", description = "Upload, download, list and delete files"),
        (name = "sessions", description = "Upload sessions: chunks in any order and in parallel, dedup before transfer, resume, commit"),
        (name = "tus", description = "The tus 1.0.0 resumable upload protocol (creation, creation-with-upload, termination, checksum, expiration)"),
        (name = "operations", description = "Health, readiness, metrics, scrub reports and this document"),
    ),
    components(schemas(ErrorBody, ErrorDetail, FileInfo, FileList, FileDetail, ChunkEntry, ScrubReport))
)]
pub(crate) struct ApiDoc;

/// Fixes up what the attributes cannot say. Applied once to the merged document.
pub(crate) fn finish(doc: &mut utoipa::openapi::OpenApi) {
    unique_operation_ids(doc);
    error_code_enum(doc);
    auth_responses(doc);
}

/// The answers authentication adds, from the one access table (`auth::access`): 401 and 429
/// on every endpoint that needs a key, 403 on admin ones, 431 everywhere.
fn auth_responses(doc: &mut utoipa::openapi::OpenApi) {
    use crate::auth::{Access, access};
    use axum::http::Method;
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let error = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build(),
        )
    };
    let add = |op: &mut utoipa::openapi::path::Operation, status: &str, text: &str| match op
        .responses
        .responses
        .get_mut(status)
    {
        Some(RefOr::T(r)) => r.description = format!("{}; {text}", r.description),
        Some(RefOr::Ref(_)) => {}
        None => {
            op.responses
                .responses
                .insert(status.to_string(), error(text));
        }
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let ops = [
            (Method::GET, &mut item.get),
            (Method::HEAD, &mut item.head),
            (Method::POST, &mut item.post),
            (Method::PUT, &mut item.put),
            (Method::PATCH, &mut item.patch),
            (Method::DELETE, &mut item.delete),
            (Method::OPTIONS, &mut item.options),
        ];
        for (method, op) in ops {
            let Some(op) = op else { continue };
            add(
                op,
                "431",
                "`headers_too_large`: the request headers total over 32 KiB",
            );
            let needs = access(&method, path);
            if needs == Access::Open {
                continue;
            }
            op.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new::<
                &str,
                [&str; 0],
                &str,
            >("bearer", [])]);
            add(
                op,
                "401",
                "`unauthorized`: no API key, or an unknown, wrong, revoked or expired one (with `WWW-Authenticate: Bearer`)",
            );
            add(
                op,
                "429",
                "`too_many_auth_failures`: too many failed authentications from this address (with `Retry-After`)",
            );
            if needs == Access::Admin {
                add(op, "403", "`forbidden`: admin accounts only");
            }
        }
    }
    let components = doc.components.get_or_insert_with(Default::default);
    components.security_schemes.insert(
        "bearer".into(),
        RefOr::T(utoipa::openapi::security::SecurityScheme::Http(
            utoipa::openapi::security::HttpBuilder::new()
                .scheme(utoipa::openapi::security::HttpAuthScheme::Bearer)
                .bearer_format("cvk_<id>_<secret>")
                .description(Some(
                    "An API key from `chunkvault admin create-key`. Not needed when the server runs with auth off.",
                ))
                .build(),
        )),
    );
}

/// A handler serving several methods (`GET` and `HEAD` of a download, `POST` and `PUT` of an
/// upload) is one operation with one id; OpenAPI requires operation ids to be unique, so every
/// method after the first gets its name appended (`download_head`).
fn unique_operation_ids(doc: &mut utoipa::openapi::OpenApi) {
    let mut seen = std::collections::HashSet::new();
    for item in doc.paths.paths.values_mut() {
        let ops = [
            ("get", &mut item.get),
            ("head", &mut item.head),
            ("post", &mut item.post),
            ("put", &mut item.put),
            ("patch", &mut item.patch),
            ("delete", &mut item.delete),
            ("options", &mut item.options),
            ("trace", &mut item.trace),
        ];
        for (method, op) in ops {
            let Some(op) = op else { continue };
            let Some(id) = op.operation_id.clone() else {
                continue;
            };
            if !seen.insert(id.clone()) {
                let unique = format!("{id}_{method}");
                seen.insert(unique.clone());
                op.operation_id = Some(unique);
            }
        }
    }
}

/// `ErrorDetail.code` is a `String` in Rust (core adds codes of its own); in the document it is
/// the closed list of codes clients may see, from the one table in `error.rs`.
fn error_code_enum(doc: &mut utoipa::openapi::OpenApi) {
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    let Some(RefOr::T(Schema::Object(detail))) = components.schemas.get_mut("ErrorDetail") else {
        return;
    };
    let mut description = String::from(
        "Stable, machine-readable: clients match on this, never on the message.\n\n| code | status | meaning |\n|---|---|---|\n",
    );
    for (code, status, meaning) in ERROR_CODES {
        description.push_str(&format!("| `{code}` | {status} | {meaning} |\n"));
    }
    let code = ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(ERROR_CODES.iter().map(|(code, _, _)| *code)))
        .description(Some(description))
        .build();
    detail
        .properties
        .insert("code".into(), RefOr::T(Schema::Object(code)));
}

/// The document, rendered once: it cannot change while the process runs.
fn rendered() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        crate::openapi()
            .to_pretty_json()
            // Serialising a tree of strings and maps cannot fail; an empty object keeps the
            // endpoint answering JSON if it ever did.
            .unwrap_or_else(|_| "{}".into())
    })
}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "openapi",
    summary = "This document (OpenAPI 3.1)",
    responses((status = 200, description = "The OpenAPI document of this server", content_type = "application/json", body = Object))
)]
pub(crate) async fn document() -> Response {
    let mut resp = rendered().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Swagger UI at `/docs`, reading `/openapi.json`. The online validator badge is off: it would
/// send the document to validator.swagger.io.
pub(crate) fn docs_ui() -> SwaggerUi {
    SwaggerUi::new("/docs").config(Config::new(["/openapi.json"]).validator_url("none"))
}

/// Raw bytes in a request or response body (a file's content), for the document only.
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub(crate) struct Binary(Vec<u8>);
