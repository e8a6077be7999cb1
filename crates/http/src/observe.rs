//! Observability: a request id on every request, one log line per request, Prometheus
//! metrics. Labels are bounded: the route template (`/download/{id}`), never an id or a name.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chunkvault_core::Stats;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing::Instrument;

use crate::AppState;

pub(crate) const REQUEST_ID: &str = "x-request-id";

/// The target of the one log line per request ([`track`]): a log writer may batch these lines
/// (the binary does), as nothing else in the log is that frequent.
pub const ACCESS_LOG_TARGET: &str = module_path!();

/// The process's Prometheus recorder, installed on first use. `None` if another recorder was
/// installed first (then `/metrics` says so).
fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    300.0,
                ])
                .ok()?
                .install_recorder()
                .ok()
        })
        .as_ref()
}

/// Installs the recorder now, so counters recorded before the first scrape are kept.
pub(crate) fn init() {
    let _ = handle();
}

/// Accepts the client's `X-Request-Id` (if it is a plain token, see [`acceptable_id`]) or
/// makes one, returns it, and logs and counts the request.
pub(crate) async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let id = req
        .headers()
        .get(REQUEST_ID)
        .filter(|v| acceptable_id(v.as_bytes()))
        .cloned()
        .unwrap_or_else(|| {
            // A random (v4) UUID from the thread's generator: no system call per request.
            let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
            let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
            HeaderValue::from_bytes(id.hyphenated().encode_lower(&mut text).as_bytes())
                .expect("uuid is a header value")
        });
    let span = tracing::info_span!("request", id = %id.to_str().unwrap_or(""), %method, %route);
    let mut resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    let secs = start.elapsed().as_secs_f64();
    let length = response_bytes(&resp);
    span.in_scope(|| tracing::info!(target: ACCESS_LOG_TARGET, status, duration_ms = (secs * 1000.0) as u64, response_bytes = %length, "request"));
    let (count, duration) = request_metrics(method, route, status);
    count.increment(1);
    duration.record(secs);
    resp.headers_mut().insert(REQUEST_ID, id);
    resp
}

/// Whether a client's request id is used as it is: 1 to 128 bytes of letters, digits and
/// `-_.:/+=@~`, which covers UUIDs, hex, base64 and the ids proxies make. Anything else (a
/// space, braces, quotes) could make the access line say what the client wants, such as a
/// forged `status=` field, so the server makes an id of its own instead.
fn acceptable_id(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@~".contains(b))
}

/// The response's length for the access line: its Content-Length, or the exact size of a body
/// whose length hyper adds later (a JSON answer's), or `-` for a body of unknown length (a
/// stream without Content-Length).
fn response_bytes(resp: &Response) -> String {
    if let Some(v) = resp
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
    {
        return v.to_string();
    }
    http_body::Body::size_hint(resp.body())
        .exact()
        .map_or_else(|| "-".to_string(), |n| n.to_string())
}

/// The request counter and duration histogram of one method, route and status: registered
/// once and kept, since registering costs label strings and a registry lookup per request.
/// Methods outside the standard ones count as `OTHER`, so clients cannot grow the label set.
fn request_metrics(
    method: Method,
    route: String,
    status: u16,
) -> (metrics::Counter, metrics::Histogram) {
    type Handles = HashMap<(&'static str, String, u16), (metrics::Counter, metrics::Histogram)>;
    let method = standard_method(&method);
    static HANDLES: OnceLock<Mutex<Handles>> = OnceLock::new();
    let mut handles = HANDLES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    handles
        .entry((method, route, status))
        .or_insert_with_key(|(method, route, status)| {
            let labels = [
                ("method", method.to_string()),
                ("route", route.clone()),
                ("status", status.to_string()),
            ];
            (
                metrics::counter!("chunkvault_http_requests_total", &labels),
                metrics::histogram!("chunkvault_http_request_duration_seconds", &labels),
            )
        })
        .clone()
}

fn standard_method(m: &Method) -> &'static str {
    const STANDARD: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
    STANDARD
        .into_iter()
        .find(|s| *s == m.as_str())
        .unwrap_or("OTHER")
}

/// The values of a vault's pipeline counters (`core::Stats`) last added to the process's
/// counters, by metric name.
pub(crate) type Published = std::sync::Arc<std::sync::Mutex<HashMap<&'static str, u64>>>;

/// `GET /metrics`, Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    summary = "Prometheus metrics",
    description = "Prometheus text exposition format 0.0.4. Labels are bounded: route templates, methods, statuses and operation names, never ids.",
    responses(
        (status = 200, description = "The metrics", content_type = "text/plain; version=0.0.4", body = String),
        (status = 503, description = "Another metrics recorder was installed first (plain text)", content_type = "text/plain", body = String),
    )
)]
pub(crate) async fn metrics(State(s): State<AppState>) -> Response {
    let Some(h) = handle() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed\n",
        )
            .into_response();
    };
    let st = s.vault.stats();
    // The recorder is process-wide, the stats are per vault: add what this vault counted since
    // the last scrape, so several vaults in one process (tests) add up instead of overwriting
    // each other (a Prometheus counter's `absolute` never goes down).
    let mut published = s.published.lock().unwrap_or_else(|p| p.into_inner());
    for (name, value) in [
        ("chunkvault_bytes_in_total", &st.bytes_in),
        ("chunkvault_bytes_out_total", &st.bytes_out),
        ("chunkvault_uploads_committed_total", &st.uploads_committed),
        ("chunkvault_uploads_aborted_total", &st.uploads_aborted),
        ("chunkvault_uploads_started_total", &st.uploads_started),
        ("chunkvault_uploads_expired_total", &st.uploads_expired),
        ("chunkvault_chunks_written_total", &st.chunks_written),
        (
            "chunkvault_chunks_deduplicated_total",
            &st.chunks_deduplicated,
        ),
        ("chunkvault_chunks_verified_total", &st.chunks_verified),
        ("chunkvault_chunks_corrupt_total", &st.chunks_corrupt),
        ("chunkvault_chunks_missing_total", &st.chunks_missing),
    ] {
        let now = Stats::get(value);
        let before = published.insert(name, now).unwrap_or(0);
        metrics::counter!(name).increment(now.saturating_sub(before));
    }
    // With several locations: the read path, the writes beyond the quorum and repair.
    if let Some(r) = s.vault.replicas() {
        let rs = r.stats();
        for (name, value) in [
            (
                "chunkvault_replica_read_failovers_total",
                &rs.read_failovers,
            ),
            ("chunkvault_replica_read_hedges_total", &rs.read_hedges),
            (
                "chunkvault_replica_corrupt_copies_seen_total",
                &rs.corrupt_copies_seen,
            ),
            (
                "chunkvault_replica_missing_copies_seen_total",
                &rs.missing_copies_seen,
            ),
            (
                "chunkvault_replica_copies_not_written_total",
                &rs.copies_not_written,
            ),
            (
                "chunkvault_replica_repairs_queued_total",
                &rs.repairs_queued,
            ),
            (
                "chunkvault_replica_copies_restored_total",
                &rs.copies_restored,
            ),
            ("chunkvault_replica_index_errors_total", &rs.index_errors),
        ] {
            let now = Stats::get(value);
            let before = published.insert(name, now).unwrap_or(0);
            metrics::counter!(name).increment(now.saturating_sub(before));
        }
        metrics::gauge!("chunkvault_replica_repair_queue_chunks").set(r.repair_queue_len() as f64);
        metrics::gauge!("chunkvault_replica_chunks_below_policy")
            .set(Stats::get(&st.chunks_below_policy) as f64);
    }
    // Uploads in progress in this process. Saturating: the counters are read one by one while
    // uploads finish.
    let open = Stats::get(&st.uploads_started)
        .saturating_sub(Stats::get(&st.uploads_committed) + Stats::get(&st.uploads_aborted));
    metrics::gauge!("chunkvault_uploads_open").set(open as f64);
    if let Some(rss) = resident_bytes() {
        metrics::gauge!("chunkvault_process_resident_memory_bytes").set(rss as f64);
    }
    drop(published);
    let mut resp = h.render().into_response();
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::acceptable_id;

    #[test]
    fn only_plain_request_ids_are_taken_from_the_client() {
        for ok in [
            "0192e4c5-8f3a-7b4e-9d1c-2a3b4c5d6e7f",
            "abc123",
            "Root=1-5759e988-bd862e3fe1be46a994272793",
            "dGVzdA==",
            "a/b+c@d~e_f.g:h",
        ] {
            assert!(acceptable_id(ok.as_bytes()), "{ok}");
        }
        let long = "a".repeat(129);
        for bad in [
            "",
            long.as_str(),
            "x method=DELETE route=/files/{id}}: request status=204",
            "two words",
            "quote\"",
            "brace}",
            "tab\there",
            "ünïcode",
        ] {
            assert!(!acceptable_id(bad.as_bytes()), "{bad}");
        }
        assert!(acceptable_id("a".repeat(128).as_bytes()));
    }
}
