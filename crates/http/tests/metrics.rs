//! `/metrics` over a real socket: the text parses strictly as the Prometheus exposition format,
//! and the counters move as the server works (bytes, chunks, uploads, store calls, corruption,
//! GC), on both backend pairs.

#[macro_use]
mod common;

use std::collections::BTreeMap;

use chunkvault_blob::Fault;
use common::{Backend, SMALL_CHUNK, TestServer, chunk_ids, expect_error, fresh_seed, random_bytes};
use reqwest::StatusCode;

/// One sample: metric name and its labels, sorted.
type Key = (String, BTreeMap<String, String>);

/// A strict parser of the Prometheus text format 0.0.4: every line is a comment, blank, or a
/// sample; names and label names are valid; label values are quoted with only the three
/// escapes the format allows; values are floats; every sample belongs to a family whose TYPE
/// came first; histograms have cumulative buckets ending in `+Inf` equal to `_count`. Panics
/// with the line on anything else.
fn parse(text: &str) -> BTreeMap<Key, f64> {
    fn valid_name(n: &str) -> bool {
        let mut c = n.chars();
        matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
    }
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let at = || format!("line {}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(ty)) => {
                    assert!(valid_name(name), "{}", at());
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty),
                        "{}",
                        at()
                    );
                    assert!(
                        types.insert(name.into(), ty.into()).is_none(),
                        "TYPE given twice, {}",
                        at()
                    );
                }
                (Some("HELP"), Some(name), _) => assert!(valid_name(name), "{}", at()),
                _ => {} // other comments are allowed
            }
            continue;
        }
        assert!(!line.starts_with('#'), "{}", at());
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("no value, {}", at()));
        let name = &line[..name_end];
        assert!(valid_name(name), "bad metric name, {}", at());
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let end = loop {
                let (start, c) = chars
                    .next()
                    .unwrap_or_else(|| panic!("open labels, {}", at()));
                if c == '}' {
                    break start;
                }
                let eq = body[start..]
                    .find('=')
                    .unwrap_or_else(|| panic!("label without '=', {}", at()));
                let label = &body[start..start + eq];
                assert!(
                    valid_name(label) && !label.contains(':'),
                    "bad label name {label:?}, {}",
                    at()
                );
                while chars.peek().is_some_and(|(i, _)| *i < start + eq + 1) {
                    chars.next();
                }
                assert_eq!(chars.next().map(|x| x.1), Some('"'), "{}", at());
                let mut value = String::new();
                loop {
                    match chars.next().map(|x| x.1) {
                        Some('\\') => match chars.next().map(|x| x.1) {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            other => panic!("bad escape {other:?}, {}", at()),
                        },
                        Some('"') => break,
                        Some('\n') | None => panic!("unterminated label value, {}", at()),
                        Some(c) => value.push(c),
                    }
                }
                assert!(
                    labels.insert(label.to_string(), value).is_none(),
                    "label repeated, {}",
                    at()
                );
                match chars.peek().map(|x| x.1) {
                    Some(',') => {
                        chars.next();
                    }
                    Some('}') => {}
                    _ => panic!("expected ',' or '}}', {}", at()),
                }
            };
            rest = &body[end + 1..];
        }
        let mut fields = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("{}", at()))
            .split(' ');
        let value = fields.next().unwrap_or_else(|| panic!("{}", at()));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("bad value, {}", at())),
        };
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .unwrap_or_else(|_| panic!("bad timestamp, {}", at()));
        }
        assert!(fields.next().is_none(), "trailing fields, {}", at());
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s).filter(|f| {
                    types
                        .get(*f)
                        .is_some_and(|t| t == "histogram" || t == "summary")
                })
            })
            .unwrap_or(name);
        assert!(
            types.contains_key(family),
            "sample before its TYPE, {}",
            at()
        );
        assert!(
            samples.insert((name.to_string(), labels), value).is_none(),
            "sample repeated, {}",
            at()
        );
    }
    // Histograms: buckets cumulative, `+Inf` present and equal to `_count`.
    for (family, ty) in &types {
        if ty != "histogram" {
            continue;
        }
        let bucket = format!("{family}_bucket");
        let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for ((name, labels), v) in &samples {
            if *name == bucket {
                let mut rest = labels.clone();
                let le = rest.remove("le").expect("bucket has le");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("le is a number")
                };
                series.entry(rest).or_default().push((le, *v));
            }
        }
        for (labels, mut buckets) in series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{family} {labels:?} buckets are not cumulative"
            );
            let last = buckets.last().expect("some bucket");
            assert!(
                last.0.is_infinite(),
                "{family} {labels:?} has no +Inf bucket"
            );
            let count = samples[&(format!("{family}_count"), labels.clone())];
            assert_eq!(last.1, count, "{family} {labels:?}: +Inf bucket != _count");
        }
    }
    samples
}

async fn scrape(server: &TestServer) -> BTreeMap<Key, f64> {
    let resp = server.get("/metrics").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    parse(&resp.text().await.unwrap())
}

/// The value of `name` with exactly `labels`, 0 when absent (a counter not yet incremented).
fn value(m: &BTreeMap<Key, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    m.get(&(name.to_string(), labels)).copied().unwrap_or(0.0)
}

/// The recorder is process-wide: the two backend cases take turns, so neither publishes its
/// counters between the other's scrapes and the deltas below are exact.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn counters_move(backend: Backend) {
    let _turn = TURN.lock().await;
    let server = TestServer::start(backend, SMALL_CHUNK).await;
    let before = scrape(&server).await;

    // Three chunks, uploaded twice: written once, deduplicated once.
    let data = random_bytes(3 * SMALL_CHUNK, fresh_seed());
    let id = server.put_file("a.bin", &data).await;
    server.put_file("b.bin", &data).await;
    let body = server
        .get(&format!("/download/{id}"))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len(), data.len());

    let after = scrape(&server).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    let len = data.len() as f64;
    assert_eq!(delta("chunkvault_bytes_in_total", &[]), 2.0 * len);
    assert_eq!(delta("chunkvault_bytes_out_total", &[]), len);
    assert_eq!(delta("chunkvault_chunks_written_total", &[]), 3.0);
    assert_eq!(delta("chunkvault_chunks_deduplicated_total", &[]), 3.0);
    assert_eq!(delta("chunkvault_chunks_verified_total", &[]), 3.0);
    assert_eq!(delta("chunkvault_uploads_committed_total", &[]), 2.0);
    assert_eq!(delta("chunkvault_uploads_started_total", &[]), 2.0);
    assert_eq!(value(&after, "chunkvault_uploads_open", &[]), 0.0);
    let uploads = [("method", "POST"), ("route", "/upload"), ("status", "201")];
    assert_eq!(delta("chunkvault_http_requests_total", &uploads), 2.0);
    let downloads = [
        ("method", "GET"),
        ("route", "/download/{id}"),
        ("status", "200"),
    ];
    assert_eq!(
        delta("chunkvault_http_request_duration_seconds_count", &downloads),
        1.0
    );
    // Store calls are recorded as they happen, process-wide, and work spawned by the other
    // case (an abort, say) may land in this window: at least the calls these requests made.
    let put = [("op", "put")];
    assert!(delta("chunkvault_blob_store_call_duration_seconds_count", &put) >= 3.0);
    let get = [("op", "get")];
    assert!(delta("chunkvault_blob_store_call_duration_seconds_count", &get) >= 3.0);
    for op in [
        "create_upload_with_chunks",
        "add_chunks",
        "commit_upload",
        "file_with_manifest",
    ] {
        let l = [("op", op)];
        assert!(
            delta("chunkvault_metadata_store_call_duration_seconds_count", &l) >= 1.0,
            "metadata store op {op}"
        );
    }
    assert!(value(&after, "chunkvault_process_resident_memory_bytes", &[]) > 1e6);

    // A corrupt chunk is counted when a download finds it.
    let chunks = chunk_ids(&data, SMALL_CHUNK);
    server.corrupt_chunk(&chunks[0]).await;
    let resp = server.get(&format!("/download/{id}")).await;
    expect_error(resp, StatusCode::INTERNAL_SERVER_ERROR, "chunk_damaged").await;
    let m = scrape(&server).await;
    assert_eq!(
        value(&m, "chunkvault_chunks_corrupt_total", &[])
            - value(&after, "chunkvault_chunks_corrupt_total", &[]),
        1.0
    );

    // Scrub: progress and findings.
    let report = server
        .vault
        .scrub(&chunkvault_core::ScrubOptions::default())
        .await
        .expect("scrub");
    assert_eq!(report.findings.len(), 1);
    let after_scrub = scrape(&server).await;
    let scrub_delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after_scrub, name, labels) - value(&m, name, labels)
    };
    assert!(scrub_delta("chunkvault_scrub_chunks_checked_total", &[]) >= 3.0);
    assert!(scrub_delta("chunkvault_scrub_findings_total", &[("problem", "corrupt")]) >= 1.0);
    assert_eq!(scrub_delta("chunkvault_chunks_corrupt_total", &[]), 1.0);
    assert_eq!(
        value(&after_scrub, "chunkvault_scrub_last_findings", &[]),
        1.0
    );
    let m = after_scrub;

    // Blob store errors are counted by operation and kind.
    let down = [("op", "get"), ("kind", "unavailable")];
    server.faulty.set(Fault::Down);
    let resp = server.get(&format!("/download/{id}")).await;
    expect_error(
        resp,
        StatusCode::SERVICE_UNAVAILABLE,
        "blob_store_unavailable",
    )
    .await;
    server.faulty.set(Fault::None);
    let m2 = scrape(&server).await;
    assert!(
        value(&m2, "chunkvault_blob_store_call_errors_total", &down)
            > value(&m, "chunkvault_blob_store_call_errors_total", &down)
    );

    // GC runs are counted.
    let ok = [("result", "ok")];
    server.gc("metrics-test").await;
    let m3 = scrape(&server).await;
    assert!(
        value(&m3, "chunkvault_gc_runs_total", &ok) > value(&m2, "chunkvault_gc_runs_total", &ok)
    );
    assert!(value(&m3, "chunkvault_gc_last_success_timestamp_seconds", &[]) > 1.6e9);
}

backend_tests!(counters_move);

#[test]
fn the_parser_is_strict() {
    let good = "# HELP x_total Things.\n# TYPE x_total counter\nx_total{a=\"q\\\"\\\\\\n\"} 3\n\
                # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3.5\nh_count 2\n";
    let m = parse(good);
    assert_eq!(value(&m, "x_total", &[("a", "q\"\\\n")]), 3.0);
    assert_eq!(value(&m, "h_count", &[]), 2.0);
    for bad in [
        "x 1\n",                                                                          // no TYPE
        "# TYPE x counter\nx{a=b} 1\n",       // unquoted
        "# TYPE x counter\nx{a=\"\\t\"} 1\n", // bad escape
        "# TYPE x counter\nx one\n",          // not a number
        "# TYPE x counter\n1x 1\n",           // bad name
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n", // not cumulative
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 3\n", // +Inf != count
    ] {
        assert!(
            std::panic::catch_unwind(|| parse(bad)).is_err(),
            "accepted {bad:?}"
        );
    }
}
