//! `chunkvault bench --policies single,replicas=2,ec=4+2`: the same workload against one server
//! per placement policy, all over local-directory locations in the run directory, in the same
//! run and interleaved (the order rotates every round), with every figure printed as a ratio to
//! the first policy's (the single location).

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use chunkvault_types::FileDigest;
use serde_json::{Value, json};

use super::{
    Agg, Backend, MB, METRICS, OursServer, Params, RunDir, SystemRound, WARM_MAX, aggregate,
    check_count, generate_file, human, progress, progress_files, progress_phase, server_env,
    settle, small_files,
};
use crate::config::StoreArgs;

/// One placement policy to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum BenchPolicy {
    /// One blob directory, the embedded default.
    Single,
    /// `replicas` copies with write quorum `quorum`, over `replicas + 1` directories (so
    /// placement spreads copies, as in a real deployment).
    Replicas { replicas: usize, quorum: usize },
    /// `data + parity` erasure-coded shards over that many directories.
    Erasure { data: usize, parity: usize },
}

impl BenchPolicy {
    /// `single`, `replicas=N`, `replicas=N/W` (write quorum W), `ec=D+P`.
    pub(super) fn parse(s: &str) -> Result<Self> {
        let bad = || {
            anyhow::anyhow!(
                "--policies: {s:?} is not a policy; use single, replicas=N, replicas=N/W or ec=D+P"
            )
        };
        let s = s.trim();
        if s == "single" {
            return Ok(Self::Single);
        }
        if let Some(v) = s.strip_prefix("replicas=") {
            let (n, w) = match v.split_once('/') {
                Some((n, w)) => (n, Some(w)),
                None => (v, None),
            };
            let replicas: usize = n.parse().map_err(|_| bad())?;
            let quorum: usize = w.map_or(Ok(replicas), str::parse).map_err(|_| bad())?;
            if replicas < 2 || quorum == 0 || quorum > replicas {
                bail!("--policies: {s:?} needs 2 or more replicas and 1 <= W <= N");
            }
            return Ok(Self::Replicas { replicas, quorum });
        }
        if let Some(v) = s.strip_prefix("ec=") {
            let (d, p) = v.split_once('+').ok_or_else(bad)?;
            let data: usize = d.parse().map_err(|_| bad())?;
            let parity: usize = p.parse().map_err(|_| bad())?;
            if data == 0 || parity == 0 || data + parity > 32 {
                bail!("--policies: {s:?} needs at least 1 data and 1 parity shard, 32 in all");
            }
            return Ok(Self::Erasure { data, parity });
        }
        Err(bad())
    }

    pub(super) fn name(&self) -> String {
        match self {
            Self::Single => "single".into(),
            Self::Replicas { replicas, quorum } if quorum == replicas => {
                format!("replicas={replicas}")
            }
            Self::Replicas { replicas, quorum } => format!("replicas={replicas}/{quorum}"),
            Self::Erasure { data, parity } => format!("ec={data}+{parity}"),
        }
    }

    fn locations(&self) -> usize {
        match self {
            Self::Single => 1,
            Self::Replicas { replicas, .. } => replicas + 1,
            Self::Erasure { data, parity } => data + parity,
        }
    }

    /// The server's (and its GC's) environment for this policy, locations under `dir`.
    fn env(&self, dir: &std::path::Path) -> Result<Vec<(String, Option<String>)>> {
        let mut env = Vec::new();
        let locations = || -> Result<String> {
            let mut list = Vec::new();
            for i in 0..self.locations() {
                let d = dir.join(format!("loc{i}"));
                std::fs::create_dir_all(&d)?;
                list.push(format!("loc{i}=file://{}", d.display()));
            }
            Ok(list.join(","))
        };
        match self {
            Self::Single => {}
            Self::Replicas { replicas, quorum } => {
                env.push(("CHUNKVAULT_LOCATIONS".into(), Some(locations()?)));
                env.push(("CHUNKVAULT_REPLICAS".into(), Some(replicas.to_string())));
                env.push(("CHUNKVAULT_WRITE_QUORUM".into(), Some(quorum.to_string())));
            }
            Self::Erasure { data, parity } => {
                env.push(("CHUNKVAULT_LOCATIONS".into(), Some(locations()?)));
                env.push((
                    "CHUNKVAULT_ERASURE".into(),
                    Some(format!("{data}+{parity}")),
                ));
            }
        }
        Ok(env)
    }
}

struct Measured {
    policy: BenchPolicy,
    server: OursServer,
    env: Vec<(String, Option<String>)>,
    rounds: Vec<SystemRound>,
}

/// Runs every policy's server, then the rounds; prints the table (or JSON).
pub(super) async fn run(
    p: &Params,
    store: &StoreArgs,
    dir: &RunDir,
    policies: &[BenchPolicy],
    as_json: bool,
) -> Result<()> {
    if p.backend != Backend::Local {
        bail!("--policies runs over local directories: use it with --backend local");
    }
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(64)
        .no_proxy()
        .build()?;
    let base_env = server_env(store, Backend::Local)?;
    let mut measured = Vec::new();
    for (i, policy) in policies.iter().enumerate() {
        let data_dir = dir.path.join(format!("policy{i}"));
        std::fs::create_dir_all(&data_dir)?;
        let mut env = base_env.clone();
        env.extend(policy.env(&data_dir)?);
        let server = OursServer::start(&data_dir, &env, &p.server_args, &http)
            .await
            .with_context(|| format!("starting the server for policy {}", policy.name()))?;
        progress(format!(
            "{}: server pid {} at {} over {} location(s)",
            policy.name(),
            server.child.pid(),
            server.base,
            policy.locations()
        ));
        measured.push(Measured {
            policy: policy.clone(),
            server,
            env,
            rounds: Vec::new(),
        });
    }
    let src = dir.path.join("large.bin");
    let scratch = dir.path.join("warm.tmp");
    let total = p.warmup + p.rounds;
    let mut chunk_size = None;
    for r in 0..total {
        let warm = r < p.warmup;
        let label = if warm {
            format!("warm-up {}/{}", r + 1, p.warmup)
        } else {
            format!("round {}/{}", r + 1 - p.warmup, p.rounds)
        };
        let t = Instant::now();
        let (path, size, seed) = (src.clone(), p.size, rand::random::<u64>());
        let sha = tokio::task::spawn_blocking(move || generate_file(&path, size, seed)).await??;
        progress(format!(
            "{label}: generated {} ({:.1} s)",
            human(p.size),
            t.elapsed().as_secs_f64()
        ));
        let small = small_files(p.small_count, p.small_size);
        // Rotate who goes first: the disk and the page cache favour no policy on average.
        let n = measured.len();
        for k in 0..n {
            let m = &mut measured[(r + k) % n];
            let name = m.policy.name();
            let (round, cs) =
                one_policy_round(p, &label, &name, r, &src, &sha, &small, &scratch, m)
                    .await
                    .with_context(|| format!("policy {name}"))?;
            chunk_size = Some(cs);
            if !warm {
                m.rounds.push(round);
            }
        }
    }
    let mut stop_errors = Vec::new();
    let results: Vec<(BenchPolicy, Vec<SystemRound>)> = measured
        .into_iter()
        .map(|m| {
            if let Err(e) = m.server.stop() {
                stop_errors.push(format!("{}: {e:#}", m.policy.name()));
            }
            (m.policy, m.rounds)
        })
        .collect();
    if !stop_errors.is_empty() {
        bail!("a server did not stop cleanly: {}", stop_errors.join("; "));
    }
    let table = table(p, &results, chunk_size);
    if as_json {
        eprint!("{table}");
        println!(
            "{}",
            serde_json::to_string_pretty(&json_report(p, &results, chunk_size))?
        );
    } else {
        print!("{table}");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn one_policy_round(
    p: &Params,
    label: &str,
    name: &str,
    r: usize,
    src: &std::path::Path,
    sha: &FileDigest,
    small: &[bytes::Bytes],
    scratch: &std::path::Path,
    m: &Measured,
) -> Result<(SystemRound, u64)> {
    let ours = &m.server;
    let mut o = SystemRound::default();
    let large_warm = (p.size + (256 << 20)).min(WARM_MAX);
    let small_warm = 256 << 20;
    settle(scratch, large_warm).await;
    let key = format!("large-r{r}.bin");
    let (info, ph) = ours
        .measure(async {
            Ok(ours
                .client
                .upload_file(src, &key, "application/octet-stream")
                .await?)
        })
        .await
        .context("large upload")?;
    if info.size != p.size || info.digest().as_ref() != Some(sha) {
        bail!(
            "stored {} bytes with digest {:?}, sent {} bytes with {sha}",
            info.size,
            info.digest(),
            p.size
        );
    }
    o.large_up = ph;
    progress_phase(label, name, "large up", p.size, ph);
    let id = info.id.to_string();
    settle(scratch, large_warm).await;
    let (n, ph) = ours
        .measure(async { Ok(ours.client.download_discard(&id).await?) })
        .await
        .context("large download")?;
    check_count("large download", n, p.size)?;
    o.large_down = ph;
    progress_phase(label, name, "large down", p.size, ph);

    settle(scratch, small_warm).await;
    let (ids, ph) = ours
        .measure(ours.put_small(small, 0, r, p.concurrency))
        .await
        .context("small uploads")?;
    o.small_up = ph;
    progress_files(label, name, "small up", p.small_count, ph);
    settle(scratch, small_warm).await;
    let (n, ph) = ours
        .measure(ours.get_small(&ids, p.concurrency))
        .await
        .context("small downloads")?;
    check_count("small downloads", n, p.small_size * p.small_count as u64)?;
    o.small_down = ph;
    progress_files(label, name, "small down", p.small_count, ph);

    // Untimed: the large file goes, and GC (with this policy's locations) collects its chunks
    // from every location, so disk use stays bounded.
    ours.delete_all(std::slice::from_ref(&id), 1).await?;
    let collected = ours.collect(&m.env).await?;
    progress(format!("{label}: {name} collected {collected} chunks"));
    Ok((o, info.chunk_size))
}

/// One throughput figure of every policy (median of rounds), in policy order.
struct Figure {
    key: &'static str,
    label: &'static str,
    decimals: usize,
    values: Vec<Option<f64>>,
}

impl Figure {
    /// `value / first policy's value`.
    fn ratio(&self, value: Option<f64>) -> Option<f64> {
        match (value, self.values.first().copied().flatten()) {
            (Some(v), Some(b)) if b > 0.0 => Some(v / b),
            _ => None,
        }
    }
}

type Results = [(BenchPolicy, Vec<SystemRound>)];

fn figures(p: &Params, results: &Results) -> Vec<Figure> {
    METRICS
        .iter()
        .filter(|m| m.ratio && m.agg == Agg::Median)
        .map(|m| Figure {
            key: m.key,
            label: m.label,
            decimals: m.decimals,
            values: results
                .iter()
                .map(|(_, rounds)| {
                    aggregate(m.agg, rounds.iter().filter_map(|r| (m.get)(r, p)).collect())
                })
                .collect(),
        })
        .collect()
}

fn table(p: &Params, results: &Results, chunk_size: Option<u64>) -> String {
    let mut out = String::new();
    let first = results.first().map_or(String::new(), |(pol, _)| pol.name());
    let _ = writeln!(out, "\nchunkvault bench results: placement policies");
    let _ = writeln!(
        out,
        "  large file {}, small files {} x {}, concurrency {}, {} measured round(s) after {} warm-up",
        human(p.size),
        p.small_count,
        human(p.small_size),
        p.concurrency,
        p.rounds,
        p.warmup
    );
    let _ = writeln!(
        out,
        "  chunk size {}; SQLite + local-directory locations in one run dir (one disk); every policy \
         in every round, order rotating",
        chunk_size.map_or("?".into(), human)
    );
    let _ = writeln!(
        out,
        "  throughput: median of rounds; (x) = ratio to {first} in the same run\n"
    );
    let _ = write!(out, "{:<28}", "figure");
    for (pol, _) in results {
        let _ = write!(out, " {:>22}", pol.name());
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{}", "-".repeat(28 + 23 * results.len()));
    for f in figures(p, results) {
        let _ = write!(out, "{:<28}", f.label);
        for &v in &f.values {
            let d = f.decimals;
            let cell = match (v, f.ratio(v)) {
                (Some(v), Some(x)) => format!("{v:.d$} ({x:.2}x)"),
                (Some(v), None) => format!("{v:.d$}"),
                (None, _) => "-".into(),
            };
            let _ = write!(out, " {cell:>22}");
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "\nper round, large upload / large download MB/s:");
    for (pol, rounds) in results {
        let list: Vec<String> = rounds
            .iter()
            .map(|r| {
                format!(
                    "{:.1}/{:.1}",
                    p.size as f64 / r.large_up.secs / MB,
                    p.size as f64 / r.large_down.secs / MB
                )
            })
            .collect();
        let _ = writeln!(out, "  {:<16} {}", pol.name(), list.join(", "));
    }
    let _ = writeln!(
        out,
        "\nnotes:\n  - replicas=N runs over N+1 directories, ec=D+P over D+P; all on the same disk, so \
         the figures show the cost of writing and reading N copies (or D+P shards) through one \
         server, not the gain of independent devices.\n  - Phase preparation (sync, warm memory) \
         and cleanup (DELETE + `chunkvault gc --grace 0s`) as in the baseline comparison."
    );
    out
}

fn json_report(p: &Params, results: &Results, chunk_size: Option<u64>) -> Value {
    let figures: serde_json::Map<String, Value> = figures(p, results)
        .into_iter()
        .map(|f| {
            let per: serde_json::Map<String, Value> = results
                .iter()
                .zip(&f.values)
                .map(|((pol, _), &v)| {
                    (
                        pol.name(),
                        json!({ "median": v, "ratio_to_first": f.ratio(v) }),
                    )
                })
                .collect();
            (f.key.to_string(), Value::Object(per))
        })
        .collect();
    let per_round: serde_json::Map<String, Value> = results
        .iter()
        .map(|(pol, rounds)| {
            let list: Vec<Value> = rounds
                .iter()
                .map(|r| {
                    json!({
                        "large_up_s": r.large_up.secs,
                        "large_down_s": r.large_down.secs,
                        "small_up_s": r.small_up.secs,
                        "small_down_s": r.small_down.secs,
                    })
                })
                .collect();
            (pol.name(), Value::Array(list))
        })
        .collect();
    json!({
        "parameters": {
            "policies": results.iter().map(|(pol, _)| pol.name()).collect::<Vec<_>>(),
            "size_bytes": p.size,
            "small_size_bytes": p.small_size,
            "small_count": p.small_count,
            "concurrency": p.concurrency,
            "rounds": p.rounds,
            "warmup_rounds": p.warmup,
            "chunk_size_bytes": chunk_size,
            "server_args": p.server_args,
        },
        "figures": figures,
        "per_round_phase_seconds": per_round,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_name_round_trip() {
        for s in ["single", "replicas=2", "replicas=3/1", "ec=4+2"] {
            assert_eq!(BenchPolicy::parse(s).unwrap().name(), s);
        }
        assert_eq!(
            BenchPolicy::parse("replicas=2/1").unwrap(),
            BenchPolicy::Replicas {
                replicas: 2,
                quorum: 1
            }
        );
        assert_eq!(BenchPolicy::parse("ec=4+2").unwrap().locations(), 6);
        assert_eq!(BenchPolicy::parse("replicas=2").unwrap().locations(), 3);
        for bad in [
            "",
            "double",
            "replicas=1",
            "replicas=2/3",
            "ec=4",
            "ec=0+2",
            "ec=4+0",
        ] {
            assert!(BenchPolicy::parse(bad).is_err(), "{bad:?}");
        }
    }
}
