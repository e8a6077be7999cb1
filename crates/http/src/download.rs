//! `GET|HEAD /download/{id}`: the file in order, with Range, ETag and a safe
//! Content-Disposition. A chunk that fails verification cuts the response off.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chunkvault_meta::{FileRecord, FileStart};
use chunkvault_types::{ByteRange, ErrorBody, RangeRequest, parse_range};
use futures::{StreamExt, stream};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::auth::Caller;
use crate::extract::{FileIdPath, StrictQuery};
use crate::{ApiError, AppState};

/// `GET|HEAD /download/{id}`.
#[utoipa::path(
    method(get, head),
    path = "/download/{id}",
    tag = "files",
    operation_id = "download",
    summary = "Download a file",
    description = "The file's bytes in order, each chunk verified before it is sent. One \
`Range: bytes=a-b` gives 206; `If-None-Match` with the ETag gives 304; `If-Range` is \
honoured. Damage found after the response started cuts the transfer off (fewer bytes than \
Content-Length), never wrong bytes. HEAD answers the same headers without a body.",
    params(
        ("id" = String, Path, format = Uuid, description = "The file id"),
        ("Range" = Option<String>, Header, description = "One byte range, `bytes=a-b`, `bytes=a-` or `bytes=-n`"),
        ("If-None-Match" = Option<String>, Header, description = "ETags; a match gives 304"),
        ("If-Range" = Option<String>, Header, description = "The ETag the client's partial copy has; another one sends the whole file"),
        ("expires" = Option<i64>, Query, description = "Presigned link: expiry, Unix seconds"),
        ("range" = Option<String>, Query, description = "Presigned link: the byte range `a-b` it is limited to (served as 206; a `Range` header is then ignored)"),
        ("sig" = Option<String>, Query, description = "Presigned link: its signature. With it, no key is needed"),
    ),
    responses(
        (status = 200, description = "The whole file", content_type = "application/octet-stream", body = crate::openapi::Binary,
            headers(
                ("ETag" = String, description = "`\"<digest hex>\"` (the file's BLAKE3, or its SHA-256 for files stored by earlier versions)"),
                ("Content-Disposition" = String, description = "`attachment` with the name as an ASCII fallback and as `filename*`, without a path (`/` and `\\` as `_`; a name of only dots is `download`)"),
                ("Content-Length" = u64, description = "Bytes in this response"),
                ("Accept-Ranges" = String, description = "`bytes`"),
                ("Last-Modified" = String, description = "When the upload was committed"),
            )),
        (status = 206, description = "The requested range", content_type = "application/octet-stream", body = crate::openapi::Binary,
            headers(
                ("Content-Range" = String, description = "`bytes a-b/SIZE`"),
                ("ETag" = String, description = "`\"<digest hex>\"` (the file's BLAKE3, or its SHA-256 for files stored by earlier versions)"),
            )),
        (status = 304, description = "Not modified (If-None-Match matched, or without it, the file is not newer than If-Modified-Since)",
            headers(("ETag" = String, description = "`\"<digest hex>\"` (the file's BLAKE3, or its SHA-256 for files stored by earlier versions)"))),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 403, description = "`link_invalid` (tampered, or signed before the secret was rotated), `link_expired`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 412, description = "`precondition_failed`: If-Match names another version, or (without If-Match) the file is newer than If-Unmodified-Since", body = ErrorBody),
        (status = 416, description = "`range_not_satisfiable`", body = ErrorBody,
            headers(("Content-Range" = String, description = "`bytes */SIZE`"))),
        (status = 500, description = "`chunk_damaged` (the first chunk failed verification), `internal`", body = ErrorBody),
        (status = 503, description = "`blob_store_unavailable`, `metadata_store_unavailable`", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds"))),
    )
)]
pub(crate) async fn download(
    State(s): State<AppState>,
    caller: Option<Caller>,
    FileIdPath(id): FileIdPath,
    StrictQuery(query): StrictQuery,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut headers = headers;
    let FileStart {
        file,
        entries: known,
        inline,
    } = match caller {
        // A key wins over a link: the caller's own access applies.
        Some(Caller(who)) => s.vault.file_for_download(&who, id).await?,
        None if query.contains_key("sig") => {
            let link = chunkvault_core::Link {
                file: id,
                expires: query
                    .get("expires")
                    .and_then(|e| e.parse().ok())
                    .unwrap_or(0),
                range: query.get("range").cloned(),
                sig: query.get("sig").cloned().unwrap_or_default(),
            };
            let file = match s.vault.verify_link(&link).await? {
                Ok(file) => file,
                Err(chunkvault_core::LinkFailure::Invalid) => {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "link_invalid",
                        "this link is not valid",
                    ));
                }
                Err(chunkvault_core::LinkFailure::Expired) => {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "link_expired",
                        "this link has expired",
                    ));
                }
            };
            // A link limited to a range serves that range, or a range the client asks for
            // within it (a resumed download); never anything else. If-Range is dropped: its
            // "whole file" fallback would reach outside the range.
            if let Some(r) = &link.range {
                let granted = format!("bytes={r}");
                let asked = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
                let within = match (
                    parse_range(Some(&granted), file.size),
                    parse_range(asked, file.size),
                ) {
                    (RangeRequest::Partial(g), RangeRequest::Partial(a)) => {
                        g.start <= a.start && a.end <= g.end
                    }
                    _ => false,
                };
                headers.remove(header::IF_RANGE);
                if !within {
                    headers.insert(header::RANGE, value(&granted));
                }
            }
            FileStart {
                file,
                entries: Vec::new(),
                inline: None,
            }
        }
        None => return Err(crate::auth::unauthorized()),
    };
    let etag = format!("\"{}\"", file.digest.hex());
    // RFC 9110 13.2.2: If-Match, or else If-Unmodified-Since; then If-None-Match, or else
    // If-Modified-Since. Dates compare in whole seconds, as Last-Modified is sent.
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let date = |name| text(name).and_then(|d| httpdate::parse_http_date(d).ok());
    let modified = file.committed_at.unix_timestamp();
    let secs = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    };
    let holds = match text(header::IF_MATCH) {
        Some(im) => etag_matches_strongly(im, &etag),
        None => date(header::IF_UNMODIFIED_SINCE).is_none_or(|t| modified <= secs(t)),
    };
    if !holds {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            "the file is not the version the request's preconditions name",
        ));
    }
    let not_modified = match text(header::IF_NONE_MATCH) {
        Some(inm) => etag_matches(inm, &etag),
        None => date(header::IF_MODIFIED_SINCE).is_some_and(|t| modified <= secs(t)),
    };
    if not_modified {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        let h = resp.headers_mut();
        h.insert(header::ETAG, value(&etag));
        // What a 200 would have said (RFC 9110 8.6), not the empty body's 0.
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(file.size));
        return Ok(resp);
    }
    let size = file.size;
    // If-Range with another validator: the client's copy is stale, send the whole file.
    let range_header = match headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        Some(ir) if ir.trim() != etag => None,
        _ => headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
    };
    let (status, range) = match parse_range(range_header, size) {
        RangeRequest::Full => (
            StatusCode::OK,
            ByteRange {
                start: 0,
                end: size,
            },
        ),
        RangeRequest::Partial(r) => (StatusCode::PARTIAL_CONTENT, r),
        RangeRequest::Unsatisfiable => {
            let mut resp = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the file has {size} bytes"),
            )
            .into_response();
            resp.headers_mut()
                .insert(header::CONTENT_RANGE, value(&format!("bytes */{size}")));
            return Ok(resp);
        }
    };

    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        let mut bytes = s.vault.read_from(&file, known, inline, range);
        // Read and verify the first chunk before answering: damage found there becomes a clean
        // error status; damage found later can only cut the transfer off.
        let mut first = match bytes.next().await {
            Some(Ok(b)) => Some(b),
            Some(Err(e)) => return Err(e.into()),
            None => None,
        };
        if let Some(whole) = first.take_if(|b| b.len() as u64 == range.len()) {
            // The first chunk is the whole response (a small file): one buffer, no stream.
            return Ok(respond(
                Body::from(whole),
                status,
                range,
                size,
                &file,
                &etag,
            ));
        }
        let rest = bytes.map(|item| {
            item.map_err(|e| {
                // Ending the body in an error makes the server abort the connection, so the
                // client sees a truncated transfer instead of wrong or missing bytes.
                std::io::Error::other(e.to_string())
            })
        });
        Body::from_stream(FlushBeforeError {
            inner: stream::iter(first.map(Ok)).chain(rest),
            held: None,
        })
    };
    Ok(respond(body, status, range, size, &file, &etag))
}

/// The response with every header a download carries.
fn respond(
    body: Body,
    status: StatusCode,
    range: ByteRange,
    size: u64,
    file: &FileRecord,
    etag: &str,
) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(range.len()));
    h.insert(header::CONTENT_TYPE, content_type(file));
    h.insert(
        header::CONTENT_DISPOSITION,
        value(&content_disposition(&file.name)),
    );
    h.insert(header::ETAG, value(etag));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(lm) = HeaderValue::from_str(&httpdate::fmt_http_date(file.committed_at.into())) {
        h.insert(header::LAST_MODIFIED, lm);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(header::CONTENT_RANGE, value(&range.content_range(size)));
    }
    resp
}

/// Holds a body error back for one poll, answering `Pending` (after waking itself) first: hyper
/// then flushes the head and the bytes already sent before it aborts the connection, so the
/// client sees a response cut short (fewer bytes than Content-Length) rather than no response.
struct FlushBeforeError<S> {
    inner: S,
    held: Option<std::io::Error>,
}

impl<S> futures::Stream for FlushBeforeError<S>
where
    S: futures::Stream<Item = std::io::Result<bytes::Bytes>> + Unpin,
{
    type Item = std::io::Result<bytes::Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if let Some(e) = self.held.take() {
            return Poll::Ready(Some(Err(e)));
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Err(e))) => {
                self.held = Some(e);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            other => other,
        }
    }
}

fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn content_type(file: &FileRecord) -> HeaderValue {
    HeaderValue::from_str(&file.content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

/// `If-None-Match` uses weak comparison: `W/"x"` matches `"x"`; `*` matches any file.
fn etag_matches(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/") == etag)
}

/// If-Match's strong comparison: `*`, or an entity tag equal to `etag`; a weak one never
/// matches.
fn etag_matches_strongly(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t == etag)
}

/// RFC 6266: an ASCII fallback in `filename` (quotes, backslashes, controls and non-ASCII
/// replaced) and the name in `filename*`, percent-encoded UTF-8. Neither carries a path: `/`
/// and `\` become `_` in both, and a name of only dots and spaces is `download`, since not
/// every client strips paths or refuses `..` as RFC 6266 asks. The exact name is in the file's
/// JSON (`GET /files/{id}`).
pub(crate) fn content_disposition(name: &str) -> String {
    const ATTR: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let named = disposition_name(name);
    let fallback: String = named
        .chars()
        .map(|c| {
            // No quote (it would end the quoted string; `disposition_name` took out the
            // path separators, backslash included). No percent sign either: some clients
            // percent-decode this parameter, which would turn "%2e%2e%2f" back into "../".
            if c.is_ascii_graphic() && !matches!(c, '"' | '%') || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "attachment; filename=\"{fallback}\"; filename*=UTF-8''{}",
        utf8_percent_encode(&named, ATTR)
    )
}

/// The name a download is offered under: the file's name with no path separator, or
/// `download` for a name of only dots and spaces.
pub(crate) fn disposition_name(name: &str) -> String {
    if name.trim_matches(|c| c == '.' || c == ' ').is_empty() {
        return "download".to_string();
    }
    name.replace(['/', '\\'], "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_disposition_is_safe_for_any_name() {
        let cd = content_disposition("a \"b\"\\c\r\n.txt");
        assert!(
            cd.starts_with("attachment; filename=\"a _b__c__.txt\""),
            "{cd}"
        );
        assert!(
            cd.ends_with("filename*=UTF-8''a%20%22b%22_c%0D%0A.txt"),
            "{cd}"
        );
        assert!(HeaderValue::from_str(&content_disposition("名前 ü ../../x;y=z")).is_ok());
        let cd = content_disposition("%2e%2e%2fx");
        assert!(
            cd.starts_with("attachment; filename=\"_2e_2e_2fx\";"),
            "{cd}"
        );
        assert!(cd.ends_with("filename*=UTF-8''%252e%252e%252fx"), "{cd}");
        for dots in [".", "..", "...", " . ."] {
            let cd = content_disposition(dots);
            assert_eq!(
                cd,
                "attachment; filename=\"download\"; filename*=UTF-8''download"
            );
        }
        let cd = content_disposition("../../etc/passwd");
        assert_eq!(
            cd,
            "attachment; filename=\".._.._etc_passwd\"; filename*=UTF-8''.._.._etc_passwd"
        );
        let cd = content_disposition("..\\..\\x");
        assert!(cd.ends_with("filename*=UTF-8''.._.._x"), "{cd}");
        let cd = content_disposition("rapport été.pdf");
        assert!(
            cd.contains("filename*=UTF-8''rapport%20%C3%A9t%C3%A9.pdf"),
            "{cd}"
        );
    }

    #[test]
    fn etags_compare_weakly() {
        assert!(etag_matches("\"abc\"", "\"abc\""));
        assert!(etag_matches("W/\"abc\"", "\"abc\""));
        assert!(etag_matches("\"x\", \"abc\"", "\"abc\""));
        assert!(etag_matches("*", "\"abc\""));
        assert!(!etag_matches("\"abd\"", "\"abc\""));
        assert!(etag_matches_strongly("\"abc\"", "\"abc\""));
        assert!(etag_matches_strongly("\"x\", \"abc\"", "\"abc\""));
        assert!(etag_matches_strongly("*", "\"abc\""));
        assert!(!etag_matches_strongly("W/\"abc\"", "\"abc\""));
        assert!(!etag_matches_strongly("\"abd\"", "\"abc\""));
    }
}
