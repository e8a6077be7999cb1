//! `chunkvault bench` through the real binary, small and without the baseline: every phase
//! runs (the large download twice, the small files in slices), the figures come out for every
//! round, and the server's own counters match what the benchmark sent and fetched.

use std::process::Command;

use serde_json::Value;

#[test]
fn a_small_run_measures_every_phase_and_the_server_counts_what_it_sent() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chunkvault"))
        .args([
            "bench",
            "--no-baseline",
            "--json",
            "--size",
            "1MiB",
            "--rounds",
            "2",
            "--warmup",
            "0",
            "--small-count",
            "13",
            "--small-slices",
            "4",
            "--work-dir",
        ])
        .arg(dir.path())
        .output()
        .expect("run chunkvault bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed:\n{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report on stdout");

    let params = &report["parameters"];
    assert_eq!(params["small_count"], 13);
    assert_eq!(params["small_slices"], 4, "13 files cut into 4 slices");
    assert_eq!(params["rounds"], 2);
    assert!(params["baseline"].is_null());

    for key in [
        "large_upload_mb_per_s",
        "large_download_mb_per_s",
        "small_upload_files_per_s",
        "small_download_files_per_s",
    ] {
        let figure = &report["figures"][key];
        let rounds = figure["per_round"]["chunkvault"]
            .as_array()
            .unwrap_or_else(|| panic!("{key}: no per-round figures in {figure}"));
        assert_eq!(rounds.len(), 2, "{key}");
        assert!(
            rounds.iter().all(|r| r.as_f64().is_some_and(|v| v > 0.0)),
            "{key}: {figure}"
        );
        assert!(figure["ratio"].is_null(), "{key}: no baseline, no ratio");
    }

    // Two rounds, each one large upload, two large downloads and 13 small files each way:
    // the server's counters say the same.
    let notes: Vec<&str> = report["notes"]
        .as_array()
        .expect("notes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let counters = notes
        .iter()
        .find(|n| n.starts_with("Server /metrics"))
        .unwrap_or_else(|| panic!("no /metrics note in {notes:?}"));
    assert!(!counters.contains("DIFFERS"), "{counters}");
    let files = 2 * (1 + 13);
    let bytes_in = 2 * ((1 << 20) + 13 * 4096);
    let bytes_out = 2 * (2 * (1 << 20) + 13 * 4096);
    for expected in [
        format!("chunkvault_uploads_committed_total {files} (matches"),
        format!("chunkvault_bytes_in_total {bytes_in} (matches"),
        format!("chunkvault_bytes_out_total {bytes_out} (matches"),
    ] {
        assert!(counters.contains(&expected), "{expected:?} in {counters}");
    }
}
