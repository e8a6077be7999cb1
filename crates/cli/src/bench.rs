//! `chunkvault bench`: measures the service against a plain baseline on the same disk, in the
//! same run, interleaved, and prints figures and ratios.
//!
//! The server runs as a child process (this binary's `serve`, on embedded defaults in a fresh
//! directory); the baseline is nginx with WebDAV PUT (backend `local`) or direct object_store
//! puts and gets to the same Azure container (backend `postgres-azurite`). Both are driven by
//! the same reqwest client code over loopback. Every round uses fresh random content, so
//! chunkvault's deduplication never skips a write.

use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use chunkvault_client::Client;
use chunkvault_types::{FileDigest, FileHasher};
use clap::{Args, ValueEnum};
use futures::{StreamExt, TryStreamExt, stream};
use object_store::{
    ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart, path::Path as ObjPath,
};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use serde_json::{Value, json};

use crate::config::{Config, MetaConfig, ServeArgs, StoreArgs, parse_size};

mod policies;

const MB: f64 = 1e6;
const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;
/// Part size and parts in flight of the object_store baseline's multipart upload.
const BASELINE_PART: usize = 8 << 20;
const BASELINE_PARTS_IN_FLIGHT: usize = 8;
/// The most memory warmed before a phase: more would start write-back (10% of memory here).
const WARM_MAX: u64 = 3 << 29;
/// nginx's worker_processes: `auto` is one per core, the baseline at its best.
const NGINX_WORKERS: &str = "auto";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// SQLite and a local blob directory in a fresh data dir; baseline nginx WebDAV.
    Local,
    /// PostgreSQL and Azure (or Azurite) as configured by the current environment; baseline
    /// direct object_store puts and gets to the same container.
    PostgresAzurite,
}

/// `chunkvault bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Size of the large file, e.g. 1GiB.
    #[arg(long, default_value = "1GiB")]
    pub size: String,
    /// Small files per round.
    #[arg(long, default_value_t = 4000)]
    pub small_count: usize,
    /// Slices each small-file phase is cut into, run turn about with the baseline's (1: one
    /// phase each, back to back).
    #[arg(long, default_value_t = 8)]
    pub small_slices: usize,
    /// Size of each small file.
    #[arg(long, default_value = "4KiB")]
    pub small_size: String,
    /// Concurrent keep-alive requests for the small files (one client, one pool).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Measured rounds; figures are their medians.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Unmeasured warm-up rounds first (this VM's memory is slow on first touch).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Which stores the server uses. postgres-azurite takes the server's configuration
    /// (DATABASE_URL or DB_*, AZURE_* or CHUNKVAULT_BLOB_URL) from the current environment.
    #[arg(long, value_enum, default_value_t = Backend::Local)]
    pub backend: Backend,
    /// Measure chunkvault only.
    #[arg(long)]
    pub no_baseline: bool,
    /// Where the run's directory is made (the data, the baseline's root, the test file).
    #[arg(long, default_value = ".cache/bench")]
    pub work_dir: PathBuf,
    /// Print the results as JSON on stdout (the table then goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Keep the run's directory.
    #[arg(long)]
    pub keep: bool,
    /// An extra argument for the server child, repeatable: --server-arg=--chunk-size=8MiB.
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Compare placement policies instead of chunkvault with a baseline: a comma-separated
    /// list of `single`, `replicas=N` (write quorum N; `replicas=N/W` for W), `ec=D+P`. Each
    /// runs its own server over local directories in the run dir (N+1 for replicas, D+P for
    /// erasure coding), every round, interleaved; figures are printed as ratios to the first
    /// policy's. Implies --no-baseline; --backend local only.
    #[arg(long, value_delimiter = ',', value_name = "POLICY")]
    pub policies: Vec<String>,
}

struct Params {
    size: u64,
    small_size: u64,
    small_count: usize,
    small_slices: usize,
    concurrency: usize,
    rounds: usize,
    warmup: usize,
    backend: Backend,
    baseline: bool,
    clk_tck: f64,
    clk_tck_source: &'static str,
    server_args: Vec<String>,
}

pub async fn run(store: &StoreArgs, args: BenchArgs) -> Result<ExitCode> {
    let size = parse_size(&args.size).context("--size")?;
    let small_size = parse_size(&args.small_size).context("--small-size")?;
    if size == 0 || small_size == 0 {
        bail!("--size and --small-size must be positive");
    }
    if args.rounds == 0 || args.concurrency == 0 || args.small_count == 0 || args.small_slices == 0
    {
        bail!("--rounds, --concurrency, --small-count and --small-slices must be at least 1");
    }
    let (clk_tck, clk_tck_source) = clock_ticks();
    let params = Params {
        size,
        small_size,
        small_count: args.small_count,
        small_slices: args.small_slices,
        concurrency: args.concurrency,
        rounds: args.rounds,
        warmup: args.warmup,
        backend: args.backend,
        baseline: !args.no_baseline,
        clk_tck,
        clk_tck_source,
        server_args: args.server_args.clone(),
    };
    if !args.policies.is_empty() {
        let list = args
            .policies
            .iter()
            .map(|s| policies::BenchPolicy::parse(s))
            .collect::<Result<Vec<_>>>()?;
        let run_dir = RunDir::create(&args.work_dir, args.keep)?;
        tokio::select! {
            r = policies::run(&params, store, &run_dir, &list, args.json) => r?,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        }
        drop(run_dir);
        return Ok(ExitCode::SUCCESS);
    }
    // Fail before creating anything when the baseline cannot run.
    let nginx = if params.baseline && params.backend == Backend::Local {
        Some(NginxBinary::find()?)
    } else {
        None
    };
    let run_dir = RunDir::create(&args.work_dir, args.keep)?;
    let outcome = tokio::select! {
        r = bench(&params, store, &run_dir, nginx) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    // The servers are stopped by now (their guards lived in `bench`); the run dir goes next.
    let report = outcome?;
    let table = report.table(&params);
    if args.json {
        eprint!("{table}");
        println!("{}", serde_json::to_string_pretty(&report.json(&params))?);
    } else {
        print!("{table}");
    }
    drop(run_dir);
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// The run

async fn bench(
    p: &Params,
    store: &StoreArgs,
    dir: &RunDir,
    nginx_bin: Option<NginxBinary>,
) -> Result<Report> {
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(64)
        .no_proxy()
        .build()?;

    let env = server_env(store, p.backend)?;
    let data_dir = dir.path.join("chunkvault");
    std::fs::create_dir_all(&data_dir)?;
    let ours = OursServer::start(&data_dir, &env, &p.server_args, &http).await?;
    progress(format!(
        "chunkvault server pid {} at {} (log {})",
        ours.child.pid(),
        ours.base,
        ours.child.log.display()
    ));

    let mut notes = vec![
        "MB = 10^6 bytes; MiB/GiB = 2^20/2^30 bytes.".to_string(),
        "Each round writes fresh random content (the large file is regenerated with a new seed, \
         the small files too), so chunkvault's deduplication never skips a write."
            .to_string(),
        "Every timed phase starts after `sync`, so no phase pays for another's write-back, and \
         after writing and deleting a scratch file of min(size + 256 MiB, 1.5 GiB) (256 MiB for \
         the small files), so both systems start on the same warm free memory: this VM returns \
         freed memory to the host and the first write into it is several times slower. A phase \
         that allocates more than that runs partly on cold memory, for both systems alike. \
         Reads are served from the page cache for both systems (nothing drops caches)."
            .to_string(),
        format!(
            "Large download: {LARGE_DOWNLOADS} downloads per system and round, turn about \
             (baseline, chunkvault, chunkvault, baseline), each after its own `sync` and \
             warm-up; a round's figure is the mean of its system's downloads."
        ),
        "Small files: each phase (upload, then download) is cut into slices of consecutive \
         files, run turn about with the baseline's (baseline first in even slices, chunkvault \
         first in odd ones), each after its own `sync`, all after one warm-up of 256 MiB; a \
         system's figure is its files over the sum of its slices' times. A phase of a few \
         thousand requests is shorter than this VM's slow spells; sliced, a spell lands on \
         both systems alike."
            .to_string(),
        "Both systems are driven by the same reqwest client (keep-alive pool, TCP_NODELAY); \
         large bodies stream from the file in 1 MiB reads, chunked; downloads are streamed, \
         counted and discarded."
            .to_string(),
        format!(
            "Server CPU = utime+stime from /proc/PID/stat, CLK_TCK = {} ({}); peak RSS = VmHWM \
             from /proc/PID/status, reset per phase by writing 5 to /proc/PID/clear_refs.",
            p.clk_tck, p.clk_tck_source
        ),
    ];
    let baseline = match (p.baseline, p.backend) {
        (false, _) => None,
        (true, Backend::Local) => {
            let bin = nginx_bin.expect("checked before");
            let n = Nginx::start(bin, &dir.path.join("nginx"), &http).await?;
            progress(format!(
                "baseline {} master pid {}, workers {:?} at {}",
                n.bin.version,
                n.child.pid(),
                n.workers,
                n.base
            ));
            notes.push(format!(
                "Baseline: {} WebDAV (dav_methods PUT, create_full_put_path on, \
                 client_max_body_size 0, body temp files in the run dir), worker_processes {} \
                 (= {} workers), sendfile on; its RSS and CPU are summed over master and \
                 workers. Both systems log every request to a file in the run dir, batched \
                 alike: nginx `access_log ... buffer=32k flush=200ms`, chunkvault its access \
                 lines gathered up to 32 KiB or 200 ms (earlier runs had nginx's access_log off; \
                 it costs nginx ~1 µs of CPU per request here).",
                n.bin.version,
                NGINX_WORKERS,
                n.workers.len()
            ));
            Some(Baseline::Nginx(n))
        }
        (true, Backend::PostgresAzurite) => {
            let a = AzureBaseline::open(store, &dir.name).await?;
            notes.push(format!(
                "Baseline: direct object_store puts and gets to the same container ({}), \
                 under {}: multipart put of {} MiB parts, {} in flight, for the large file; \
                 one put per small file. It runs in the bench process: no server RSS/CPU.",
                a.describe,
                a.prefix,
                BASELINE_PART >> 20,
                BASELINE_PARTS_IN_FLIGHT
            ));
            Some(Baseline::Azure(a))
        }
    };
    match p.backend {
        Backend::Local => notes.push(
            "chunkvault: embedded defaults (SQLite + local blob directory) in the run dir. \
             After each round the large files are deleted (ours: DELETE, then \
             `chunkvault gc --grace 0s` collects the chunks), so disk use stays bounded; the \
             small files stay until the run dir is removed, because deleting thousands of \
             files makes ext4 skip their inodes for 30 s and slowed the next round's file \
             creation ~5x for both systems."
                .into(),
        ),
        Backend::PostgresAzurite => notes.push(
            "chunkvault: PostgreSQL + Azure from the current environment. The large files are \
             deleted after each round, the small files at the end; chunks of deleted files are \
             left to the server's own GC (a 0s-grace GC could delete other writers' fresh \
             chunks in a shared store)."
                .into(),
        ),
    }

    let src = dir.path.join("large.bin");
    let mut all_rounds = Vec::new();
    let mut chunk_size = None;
    let total = p.warmup + p.rounds;
    for r in 0..total {
        let warm = r < p.warmup;
        let label = if warm {
            format!("warm-up {}/{}", r + 1, p.warmup)
        } else {
            format!("round {}/{}", r + 1 - p.warmup, p.rounds)
        };
        let rr = one_round(p, &label, r, &src, &ours, baseline.as_ref(), &env).await?;
        chunk_size = Some(rr.chunk_size);
        all_rounds.push(rr);
    }
    notes.push(metrics_check(&http, &ours.base, p, total as u64).await);
    // The small files: the run dir goes anyway with the local backend; a remote store keeps
    // what is not deleted.
    if p.backend == Backend::PostgresAzurite {
        let t = Instant::now();
        for rr in &all_rounds {
            ours.delete_all(&rr.small_ours, p.concurrency).await?;
            if let Some(b) = &baseline {
                b.delete(&rr.small_base, p.concurrency).await?;
            }
        }
        progress(format!(
            "deleted the small files in {:.1} s",
            t.elapsed().as_secs_f64()
        ));
    }
    let rounds: Vec<RoundResult> = all_rounds.into_iter().skip(p.warmup).collect();
    let ours_stopped = ours.stop();
    if let Some(b) = baseline {
        b.stop();
    }
    ours_stopped?;
    Ok(Report {
        rounds,
        notes,
        chunk_size,
        baseline_name: match p.backend {
            _ if !p.baseline => None,
            Backend::Local => Some("nginx".into()),
            Backend::PostgresAzurite => Some("object_store".into()),
        },
    })
}

struct RoundResult {
    ours: SystemRound,
    base: Option<SystemRound>,
    chunk_size: u64,
    /// The small files, deleted at the end of the run.
    small_ours: Vec<String>,
    small_base: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default)]
struct SystemRound {
    large_up: Phase,
    large_down: Phase,
    small_up: Phase,
    small_down: Phase,
}

#[derive(Debug, Clone, Copy, Default)]
struct Phase {
    secs: f64,
    cpu_s: Option<f64>,
    peak_rss: Option<u64>,
}

impl Phase {
    /// One of `n` like runs summed with [`Phase::add`]: time and CPU divided by `n`.
    fn mean_of(self, n: usize) -> Phase {
        let n = n.max(1) as f64;
        Phase {
            secs: self.secs / n,
            cpu_s: self.cpu_s.map(|c| c / n),
            peak_rss: self.peak_rss,
        }
    }

    /// Adds a slice of the same phase: times and CPU add up, the peak RSS is the highest.
    fn add(&mut self, slice: Phase) {
        self.secs += slice.secs;
        self.cpu_s = match (self.cpu_s, slice.cpu_s) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.peak_rss = self.peak_rss.max(slice.peak_rss);
    }
}

/// Large downloads per system and round, turn about with the baseline's.
const LARGE_DOWNLOADS: usize = 2;

/// `count` items cut into at most `slices` consecutive ranges of near-equal size.
fn slice_bounds(count: usize, slices: usize) -> Vec<std::ops::Range<usize>> {
    let slices = slices.clamp(1, count.max(1));
    (0..slices)
        .map(|k| count * k / slices..count * (k + 1) / slices)
        .filter(|r| !r.is_empty())
        .collect()
}

/// The turns of slice `k`, `Some(base)` for the baseline's and `None` for chunkvault's: the
/// baseline first in even slices, chunkvault in odd ones, so neither always runs first (after
/// the other's write-back) or last.
fn turns<T: Copy>(k: usize, base: Option<T>) -> Vec<Option<T>> {
    match base {
        None => vec![None],
        Some(b) if k.is_multiple_of(2) => vec![Some(b), None],
        Some(b) => vec![None, Some(b)],
    }
}

#[allow(clippy::too_many_arguments)]
async fn one_round(
    p: &Params,
    label: &str,
    r: usize,
    src: &Path,
    ours: &OursServer,
    base: Option<&Baseline>,
    env: &[(String, Option<String>)],
) -> Result<RoundResult> {
    let mut o = SystemRound::default();
    let mut b = SystemRound::default();

    // Large file: fresh content, hashed while written, outside the timed part.
    let t = Instant::now();
    let seed: u64 = rand::random();
    let (path, size) = (src.to_path_buf(), p.size);
    let sha = tokio::task::spawn_blocking(move || generate_file(&path, size, seed)).await??;
    progress(format!(
        "{label}: generated {} ({:.1} s)",
        human(p.size),
        t.elapsed().as_secs_f64()
    ));

    let large_key = format!("large-r{r}.bin");
    let scratch = src.with_file_name("warm.tmp");
    let large_warm = (p.size + (256 << 20)).min(WARM_MAX);
    let small_warm = 256 << 20;
    if let Some(base) = base {
        settle(&scratch, large_warm).await;
        let ((), ph) = base
            .measure(base.put_large(src, &large_key, p.size))
            .await
            .context("baseline: large upload")?;
        b.large_up = ph;
        progress_phase(label, base.name(), "large up", p.size, ph);
    }
    settle(&scratch, large_warm).await;
    let (info, ph) = ours
        .measure(async {
            Ok(ours
                .client
                .upload_file(src, &large_key, "application/octet-stream")
                .await?)
        })
        .await
        .context("chunkvault: large upload")?;
    o.large_up = ph;
    progress_phase(label, "chunkvault", "large up", p.size, ph);
    if info.size != p.size {
        bail!(
            "chunkvault stored {} bytes of a {}-byte file",
            info.size,
            p.size
        );
    }
    if info.digest().as_ref() != Some(&sha) {
        bail!(
            "chunkvault reports {:?} but the file's digest is {sha}",
            info.digest()
        );
    }
    let id = info.id.to_string();

    // The large download twice per system, turn about (baseline, ours, ours, baseline): one
    // download takes about a second, as long as one of this VM's slow spells, and each
    // system gets a first and a second turn. A phase is the mean of its two downloads.
    let (mut base_down, mut ours_down) = (Phase::default(), Phase::default());
    for k in 0..LARGE_DOWNLOADS {
        for turn in turns(k, base) {
            settle(&scratch, large_warm).await;
            if let Some(base) = turn {
                let (n, ph) = base
                    .measure(base.get_large(&large_key))
                    .await
                    .context("baseline: large download")?;
                check_count("baseline large download", n, p.size)?;
                base_down.add(ph);
            } else {
                let (n, ph) = ours
                    .measure(async { Ok(ours.client.download_discard(&id).await?) })
                    .await
                    .context("chunkvault: large download")?;
                check_count("chunkvault large download", n, p.size)?;
                ours_down.add(ph);
            }
        }
    }
    if let Some(base) = base {
        b.large_down = base_down.mean_of(LARGE_DOWNLOADS);
        progress_phase(label, base.name(), "large down", p.size, b.large_down);
    }
    o.large_down = ours_down.mean_of(LARGE_DOWNLOADS);
    progress_phase(label, "chunkvault", "large down", p.size, o.large_down);

    // Small files: fresh content, in memory. A phase of a few thousand small requests lasts
    // well under a second, shorter than this VM's slow spells, so each phase is cut into
    // slices run turn about (A B, B A, A B, ...) and each system's slices are summed: a slow
    // spell then lands on both systems alike instead of on one whole phase. Memory is warmed
    // once per phase (enough for both systems' files), and each slice starts after `sync`:
    // warming before every slice kept the host busy taking freed memory back, and stalled
    // vCPUs made nginx's workers spin on a directory lock (5x its CPU per file).
    let small = small_files(p.small_count, p.small_size);
    let small_bytes = p.small_size * p.small_count as u64;
    let slices = slice_bounds(p.small_count, p.small_slices);
    let mut keys = Vec::new();
    let mut ids = Vec::new();
    settle(&scratch, small_warm).await;
    for (k, range) in slices.iter().enumerate() {
        for turn in turns(k, base) {
            let files = &small[range.clone()];
            flush().await;
            if let Some(base) = turn {
                let (got, ph) = base
                    .measure(base.put_small(files, range.start, r, p.concurrency))
                    .await
                    .context("baseline: small uploads")?;
                keys.extend(got);
                b.small_up.add(ph);
            } else {
                let (got, ph) = ours
                    .measure(ours.put_small(files, range.start, r, p.concurrency))
                    .await
                    .context("chunkvault: small uploads")?;
                ids.extend(got);
                o.small_up.add(ph);
            }
        }
    }
    if let Some(base) = base {
        progress_files(label, base.name(), "small up", p.small_count, b.small_up);
    }
    progress_files(label, "chunkvault", "small up", p.small_count, o.small_up);
    let (mut got_base, mut got_ours) = (0, 0);
    settle(&scratch, small_warm).await;
    for (k, range) in slices.iter().enumerate() {
        for turn in turns(k, base) {
            flush().await;
            if let Some(base) = turn {
                let (n, ph) = base
                    .measure(base.get_small(&keys[range.clone()], p.concurrency))
                    .await
                    .context("baseline: small downloads")?;
                got_base += n;
                b.small_down.add(ph);
            } else {
                let (n, ph) = ours
                    .measure(ours.get_small(&ids[range.clone()], p.concurrency))
                    .await
                    .context("chunkvault: small downloads")?;
                got_ours += n;
                o.small_down.add(ph);
            }
        }
    }
    if let Some(base) = base {
        check_count("baseline small downloads", got_base, small_bytes)?;
        progress_files(
            label,
            base.name(),
            "small down",
            p.small_count,
            b.small_down,
        );
    }
    check_count("chunkvault small downloads", got_ours, small_bytes)?;
    progress_files(
        label,
        "chunkvault",
        "small down",
        p.small_count,
        o.small_down,
    );

    // Clean up the large files, untimed, so disk use stays bounded. The small files stay until
    // the end of the run: deleting thousands of files makes ext4 skip their inodes for 30 s
    // ("recently deleted"), which slowed the next round's file creation 5x for both systems.
    let t = Instant::now();
    ours.delete_all(std::slice::from_ref(&id), 1).await?;
    let collected = if p.backend == Backend::Local {
        Some(ours.collect(env).await?)
    } else {
        None
    };
    if let Some(base) = base {
        base.delete(std::slice::from_ref(&large_key), 1).await?;
    }
    progress(format!(
        "{label}: deleted the large files in {:.1} s{}",
        t.elapsed().as_secs_f64(),
        collected
            .map(|n| format!(" ({n} chunks collected)"))
            .unwrap_or_default()
    ));
    Ok(RoundResult {
        ours: o,
        base: base.map(|_| b),
        chunk_size: info.chunk_size,
        small_ours: ids,
        small_base: keys,
    })
}

/// The server's own counters, scraped from `/metrics` after the rounds, beside what this
/// benchmark sent and fetched: every round (warm-ups too) uploads the large file once and
/// downloads it [`LARGE_DOWNLOADS`] times, and uploads and downloads each small file once.
async fn metrics_check(http: &reqwest::Client, base: &str, p: &Params, rounds: u64) -> String {
    let files = rounds * (1 + p.small_count as u64);
    let small = p.small_count as u64 * p.small_size;
    let bytes_in = rounds * (p.size + small);
    let bytes_out = rounds * (LARGE_DOWNLOADS as u64 * p.size + small);
    let text = match http.get(format!("{base}/metrics")).send().await {
        Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
        Ok(r) => return format!("GET /metrics answered {}", r.status()),
        Err(e) => return format!("GET /metrics failed: {e}"),
    };
    let value = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .map(|v| v as u64)
    };
    let mut parts = Vec::new();
    for (name, want) in [
        ("chunkvault_uploads_committed_total", files),
        ("chunkvault_bytes_in_total", bytes_in),
        ("chunkvault_bytes_out_total", bytes_out),
    ] {
        let got = value(name);
        let verdict = if got == Some(want) {
            "matches"
        } else {
            "DIFFERS"
        };
        let got = got.map_or("absent".to_string(), |g| g.to_string());
        parts.push(format!("{name} {got} ({verdict} the benchmark's {want})"));
    }
    for name in [
        "chunkvault_chunks_written_total",
        "chunkvault_chunks_verified_total",
    ] {
        if let Some(v) = value(name) {
            parts.push(format!("{name} {v}"));
        }
    }
    format!("Server /metrics after all rounds: {}.", parts.join("; "))
}

fn check_count(what: &str, got: u64, want: u64) -> Result<()> {
    if got != want {
        bail!("{what}: received {got} bytes, expected {want}");
    }
    Ok(())
}

/// Writes `size` random bytes over `path` in place (rewriting the blocks of the previous
/// round's file is much faster on this thin-provisioned disk than fresh ones), makes them
/// durable, and returns their digest (BLAKE3, as the server computes it).
fn generate_file(path: &Path, size: u64, seed: u64) -> Result<FileDigest> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut digest = FileHasher::new();
    let mut buf = vec![0u8; 8 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        digest.update(&buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.set_len(size)?;
    f.sync_all()?;
    Ok(digest.finish())
}

fn small_files(count: usize, size: u64) -> Vec<Bytes> {
    let size = size as usize;
    let mut all = vec![0u8; count * size];
    SmallRng::seed_from_u64(rand::random()).fill_bytes(&mut all);
    let all = Bytes::from(all);
    (0..count)
        .map(|i| all.slice(i * size..(i + 1) * size))
        .collect()
}

/// Prepares a timed phase: flushes dirty pages, so the phase does not pay for the previous
/// one's write-back, then warms `warm` bytes of free memory (see [`warm_memory`]).
async fn settle(scratch: &Path, warm: u64) {
    flush().await;
    let scratch = scratch.to_path_buf();
    match tokio::task::spawn_blocking(move || warm_memory(&scratch, warm)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => progress(format!("warning: warming memory failed: {e:#}")),
        Err(e) => progress(format!("warning: warming memory failed: {e}")),
    }
}

/// Writes dirty pages back (`sync`), so what follows does not pay for what came before.
async fn flush() {
    match tokio::process::Command::new("sync").status().await {
        Ok(s) if s.success() => {}
        other => progress(format!("warning: sync failed: {other:?}")),
    }
}

/// This VM hands freed memory back to the host, and the first write into such memory is
/// several times slower (a 1 GiB page-cache write: ~2 s cold, ~0.25 s warm). Writing a scratch
/// file and deleting it leaves `bytes` of warm free memory for the page cache of the phase that
/// follows at once. (Touching anonymous memory does not help: the page cache takes large
/// folios.) Stays below the background write-back threshold, so nothing reaches the disk.
fn warm_memory(scratch: &Path, bytes: u64) -> Result<()> {
    use std::io::Write;
    let buf = vec![1u8; 8 << 20];
    let mut f = std::fs::File::create(scratch)
        .with_context(|| format!("cannot create {}", scratch.display()))?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    drop(f);
    std::fs::remove_file(scratch)?;
    Ok(())
}

async fn count_body(resp: reqwest::Response) -> Result<u64> {
    let resp = checked(resp).await?;
    let mut n = 0u64;
    let mut s = resp.bytes_stream();
    while let Some(b) = s.try_next().await? {
        n += b.len() as u64;
    }
    Ok(n)
}

async fn checked(resp: reqwest::Response) -> Result<reqwest::Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let url = resp.url().clone();
    let text = resp.text().await.unwrap_or_default();
    bail!(
        "{url}: {status}: {}",
        text.chars().take(300).collect::<String>()
    )
}

// ---------------------------------------------------------------------------------------------
// Measuring a server process

/// The processes whose CPU and peak RSS a phase reports.
#[derive(Debug, Clone, Default)]
struct Watched {
    pids: Vec<u32>,
    clk_tck: f64,
}

impl Watched {
    fn begin(&self) -> Result<u64> {
        for pid in &self.pids {
            std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
                .with_context(|| format!("cannot reset the peak RSS of pid {pid}"))?;
        }
        self.pids.iter().map(|p| cpu_ticks(*p)).sum()
    }

    fn end(&self, ticks_before: u64) -> Result<(Option<f64>, Option<u64>)> {
        if self.pids.is_empty() {
            return Ok((None, None));
        }
        let ticks: u64 = self
            .pids
            .iter()
            .map(|p| cpu_ticks(*p))
            .sum::<Result<u64>>()?;
        let rss: u64 = self
            .pids
            .iter()
            .map(|p| peak_rss(*p))
            .sum::<Result<u64>>()?;
        Ok((
            Some(ticks.saturating_sub(ticks_before) as f64 / self.clk_tck),
            Some(rss),
        ))
    }

    async fn measure<T>(&self, f: impl Future<Output = Result<T>>) -> Result<(T, Phase)> {
        let before = self.begin()?;
        let t = Instant::now();
        let v = f.await?;
        let secs = t.elapsed().as_secs_f64();
        let (cpu_s, peak_rss) = self.end(before)?;
        Ok((
            v,
            Phase {
                secs,
                cpu_s,
                peak_rss,
            },
        ))
    }
}

/// Fields after the command name in /proc/PID/stat (field 3 onwards).
fn stat_fields(pid: u32) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("/proc/{pid}/stat is malformed"))?;
    Ok(rest.split_whitespace().map(str::to_string).collect())
}

/// utime + stime, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let f = stat_fields(pid)?;
    let get = |i: usize| -> Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("/proc/{pid}/stat has no field {}", i + 3))
    };
    // utime is field 14, stime field 15 (1-based); f[0] is field 3.
    Ok(get(11)? + get(12)?)
}

/// VmHWM, in bytes.
fn peak_rss(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| anyhow!("/proc/{pid}/status has no VmHWM"))
}

/// Children of `pid`, found through the parent field of every /proc/*/stat.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|c| {
            stat_fields(*c)
                .ok()
                .and_then(|f| f.get(1).and_then(|v| v.parse::<u32>().ok()))
                == Some(pid)
        })
        .collect();
    out.sort_unstable();
    out
}

/// Clock ticks per second for /proc/PID/stat, from `getconf CLK_TCK`, else the usual 100.
fn clock_ticks() -> (f64, &'static str) {
    static TICKS: std::sync::OnceLock<(f64, &'static str)> = std::sync::OnceLock::new();
    *TICKS.get_or_init(ask_clock_ticks)
}

fn ask_clock_ticks() -> (f64, &'static str) {
    let out = Command::new("getconf").arg("CLK_TCK").output();
    match out
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|v| *v > 0.0)
    {
        Some(v) => (v, "from getconf CLK_TCK"),
        None => (100.0, "getconf CLK_TCK failed; assumed 100"),
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped, also on errors.
struct ChildGuard {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl ChildGuard {
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, up to 10 s to finish, then SIGKILL.
    fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_none() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    eprintln!("bench: {} did not stop on SIGTERM; killing it", self.name);
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        child.wait()?;
        Ok(())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("bench: stopping {}: {e}", self.name);
        }
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

/// Waits until `url` answers (any HTTP status when `any_status`), or the child exits.
async fn wait_ready(
    child: &mut ChildGuard,
    http: &reqwest::Client,
    url: &str,
    any_status: bool,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.exited() {
            bail!(
                "{} exited during start-up ({status}); the end of its log {}:\n{}",
                child.name,
                child.log.display(),
                child.log_tail()
            );
        }
        if let Ok(resp) = http.get(url).timeout(Duration::from_secs(2)).send().await
            && (any_status || resp.status().is_success())
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not answer {url} within 60 s; the end of its log {}:\n{}",
                child.name,
                child.log.display(),
                child.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Environment variables that name where the server keeps its data: removed for the local
/// backend, so the child runs on embedded defaults whatever the caller's environment holds.
const STORE_LOCATION_ENV: &[&str] = &[
    "CHUNKVAULT_CONFIG",
    "CHUNKVAULT_DATA_DIR",
    "DATABASE_URL",
    "CHUNKVAULT_BLOB_URL",
    "DB_HOST",
    "DB_PORT",
    "DB_USER",
    "DB_PASSWORD",
    "DB_NAME",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_CONTAINER_NAME",
    "AZURE_STORAGE_ENDPOINT",
    "CHUNKVAULT_LISTEN",
    "CHUNKVAULT_LOCATIONS",
    "CHUNKVAULT_REPLICAS",
    "CHUNKVAULT_WRITE_QUORUM",
    "CHUNKVAULT_ERASURE",
];

/// The server child's environment changes: set (Some) or removed (None). Global flags given
/// to `bench` (e.g. `chunkvault bench --chunk-size 8MiB`) reach the child as environment
/// variables, which keeps secrets off its command line.
fn server_env(store: &StoreArgs, backend: Backend) -> Result<Vec<(String, Option<String>)>> {
    let mut env: Vec<(String, Option<String>)> = Vec::new();
    let mut set = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            env.push((k.to_string(), Some(v)));
        }
    };
    set("CHUNKVAULT_CHUNK_SIZE", store.chunk_size.clone());
    set("CHUNKVAULT_FSYNC", store.fsync.map(|b| b.to_string()));
    set("CHUNKVAULT_UPLOAD_TTL", store.upload_ttl.clone());
    set(
        "CHUNKVAULT_DB_MAX_CONNECTIONS",
        store.db_max_connections.map(|n| n.to_string()),
    );
    // The periodic GC would list the store in the middle of a measurement; `--server-arg
    // --gc-interval=...` overrides this.
    set("CHUNKVAULT_GC_INTERVAL", Some("24h".into()));
    match backend {
        Backend::Local => {
            for k in STORE_LOCATION_ENV {
                env.push((k.to_string(), None));
            }
        }
        Backend::PostgresAzurite => {
            let config = Config::load(store, &ServeArgs::default()).context(
                "--backend postgres-azurite takes its configuration from the environment",
            )?;
            let is_pg = matches!(config.meta, MetaConfig::Postgres { .. });
            #[cfg(feature = "azure")]
            let is_azure = matches!(config.blob, chunkvault_blob::BlobConfig::Azure(_));
            #[cfg(not(feature = "azure"))]
            let is_azure = false;
            if !is_pg || !is_azure {
                bail!(
                    "--backend postgres-azurite uses the current environment for the server's \
                     configuration: set DATABASE_URL=postgres://... (or DB_HOST, DB_USER, \
                     DB_PASSWORD, DB_NAME) and AZURE_STORAGE_ACCOUNT_NAME, \
                     AZURE_STORAGE_ACCOUNT_KEY, AZURE_CONTAINER_NAME (plus \
                     AZURE_STORAGE_ENDPOINT=http://127.0.0.1:PORT/devstoreaccount1 for \
                     Azurite); found metadata {} and blobs {:?}",
                    if is_pg {
                        "PostgreSQL"
                    } else {
                        "not PostgreSQL"
                    },
                    config.blob
                );
            }
            let mut set = |k: &str, v: &Option<String>| {
                if let Some(v) = v {
                    env.push((k.to_string(), Some(v.clone())));
                }
            };
            set(
                "CHUNKVAULT_CONFIG",
                &store.config.as_ref().map(|p| p.display().to_string()),
            );
            set("DATABASE_URL", &store.database_url);
            set("CHUNKVAULT_BLOB_URL", &store.blob_url);
            set("DB_HOST", &store.db_host);
            set("DB_PORT", &store.db_port);
            set("DB_USER", &store.db_user);
            set("DB_PASSWORD", &store.db_password);
            set("DB_NAME", &store.db_name);
            set("AZURE_STORAGE_ACCOUNT_NAME", &store.azure_account);
            set("AZURE_STORAGE_ACCOUNT_KEY", &store.azure_key);
            set("AZURE_CONTAINER_NAME", &store.azure_container);
            set("AZURE_STORAGE_ENDPOINT", &store.azure_endpoint);
            env.push(("CHUNKVAULT_DATA_DIR".into(), None));
            env.push(("CHUNKVAULT_LISTEN".into(), None));
        }
    }
    Ok(env)
}

fn apply_env(cmd: &mut Command, env: &[(String, Option<String>)]) {
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
}

// ---------------------------------------------------------------------------------------------
// chunkvault

struct OursServer {
    child: ChildGuard,
    base: String,
    client: Client,
    watched: Watched,
    data_dir: PathBuf,
}

impl OursServer {
    async fn start(
        data_dir: &Path,
        env: &[(String, Option<String>)],
        extra: &[String],
        http: &reqwest::Client,
    ) -> Result<Self> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let log = data_dir.join("server.log");
        let log_file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(&exe);
        cmd.arg("serve")
            .arg("--listen")
            .arg(&addr)
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        apply_env(&mut cmd, env);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {} serve", exe.display()))?;
        let mut child = ChildGuard {
            name: "the chunkvault server",
            child: Some(child),
            log,
        };
        let base = format!("http://{addr}");
        wait_ready(&mut child, http, &format!("{base}/healthz"), false).await?;
        let pid = child.pid();
        Ok(Self {
            client: Client::with_http(&base, http.clone())?,
            base,
            watched: Watched {
                pids: vec![pid],
                clk_tck: clock_ticks().0,
            },
            child,
            data_dir: data_dir.to_path_buf(),
        })
    }

    async fn measure<T>(&self, f: impl Future<Output = Result<T>>) -> Result<(T, Phase)> {
        self.watched.measure(f).await
    }

    /// Uploads `files`, numbered from `first` in round `r`.
    async fn put_small(
        &self,
        files: &[Bytes],
        first: usize,
        r: usize,
        conc: usize,
    ) -> Result<Vec<String>> {
        stream::iter(files.iter().enumerate())
            .map(|(i, data)| async move {
                let info = self
                    .client
                    .upload_bytes(
                        &format!("small-r{r}-{}", first + i),
                        "application/octet-stream",
                        data.clone(),
                    )
                    .await?;
                Ok::<_, anyhow::Error>(info.id.to_string())
            })
            .buffer_unordered(conc)
            .try_collect()
            .await
    }

    async fn get_small(&self, ids: &[String], conc: usize) -> Result<u64> {
        stream::iter(ids)
            .map(
                |id| async move { Ok::<_, anyhow::Error>(self.client.download_discard(id).await?) },
            )
            .buffer_unordered(conc)
            .try_fold(0u64, |a, n| async move { Ok(a + n) })
            .await
    }

    async fn delete_all(&self, ids: &[String], conc: usize) -> Result<()> {
        stream::iter(ids)
            .map(|id| async move { Ok::<_, anyhow::Error>(self.client.delete(id).await?) })
            .buffer_unordered(conc)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Runs `chunkvault gc --grace 0s` on the data dir; returns the chunks it deleted.
    async fn collect(&self, env: &[(String, Option<String>)]) -> Result<usize> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.args(["gc", "--grace", "0s", "--json", "--data-dir"])
            .arg(&self.data_dir)
            .stdin(Stdio::null());
        apply_env(&mut cmd, env);
        let out = tokio::process::Command::from(cmd)
            .output()
            .await
            .context("cannot run chunkvault gc")?;
        if !out.status.success() {
            bail!(
                "chunkvault gc failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let report: Value = serde_json::from_slice(&out.stdout).context("gc's JSON report")?;
        Ok(report["deleted_unreferenced"]
            .as_array()
            .map_or(0, Vec::len))
    }

    fn stop(mut self) -> Result<()> {
        self.child.stop()
    }
}

// ---------------------------------------------------------------------------------------------
// Baselines

enum Baseline {
    Nginx(Nginx),
    Azure(AzureBaseline),
}

impl Baseline {
    fn name(&self) -> &'static str {
        match self {
            Self::Nginx(_) => "nginx",
            Self::Azure(_) => "object_store",
        }
    }

    async fn measure<T>(&self, f: impl Future<Output = Result<T>>) -> Result<(T, Phase)> {
        match self {
            Self::Nginx(n) => n.watched.measure(f).await,
            Self::Azure(_) => Watched::default().measure(f).await,
        }
    }

    async fn put_large(&self, src: &Path, key: &str, size: u64) -> Result<()> {
        match self {
            Self::Nginx(n) => {
                // The same body as `Client::upload_file`: 1 MiB reads, chunked.
                let (_, body) = chunkvault_client::file_body(src).await?;
                let resp = n
                    .http
                    .put(format!("{}/{key}", n.base))
                    .body(reqwest::Body::wrap_stream(body))
                    .send()
                    .await?;
                checked(resp).await?;
                Ok(())
            }
            Self::Azure(a) => {
                let (_, body) = chunkvault_client::file_body(src).await?;
                let mut body = std::pin::pin!(body);
                let upload = a.store.put_multipart(&a.path(key)).await?;
                let mut w = WriteMultipart::new_with_chunk_size(upload, BASELINE_PART);
                let mut sent = 0u64;
                while let Some(b) = body.try_next().await? {
                    sent += b.len() as u64;
                    w.put(b);
                    w.wait_for_capacity(BASELINE_PARTS_IN_FLIGHT).await?;
                }
                w.finish().await?;
                check_count("object_store put", sent, size)
            }
        }
    }

    async fn get_large(&self, key: &str) -> Result<u64> {
        match self {
            Self::Nginx(n) => {
                count_body(n.http.get(format!("{}/{key}", n.base)).send().await?).await
            }
            Self::Azure(a) => {
                let mut s = a.store.get(&a.path(key)).await?.into_stream();
                let mut n = 0u64;
                while let Some(b) = s.try_next().await? {
                    n += b.len() as u64;
                }
                Ok(n)
            }
        }
    }

    /// Stores `files`, numbered from `first` in round `r`.
    async fn put_small(
        &self,
        files: &[Bytes],
        first: usize,
        r: usize,
        conc: usize,
    ) -> Result<Vec<String>> {
        stream::iter(files.iter().enumerate())
            .map(|(i, data)| async move {
                let key = format!("small-r{r}/{}", first + i);
                match self {
                    Self::Nginx(n) => {
                        let resp = n
                            .http
                            .put(format!("{}/{key}", n.base))
                            .body(data.clone())
                            .send()
                            .await?;
                        checked(resp).await?;
                    }
                    Self::Azure(a) => {
                        a.store
                            .put(&a.path(&key), PutPayload::from_bytes(data.clone()))
                            .await?;
                    }
                }
                Ok::<_, anyhow::Error>(key)
            })
            .buffer_unordered(conc)
            .try_collect()
            .await
    }

    async fn get_small(&self, keys: &[String], conc: usize) -> Result<u64> {
        stream::iter(keys)
            .map(|key| async move {
                match self {
                    Self::Nginx(n) => {
                        count_body(n.http.get(format!("{}/{key}", n.base)).send().await?).await
                    }
                    Self::Azure(a) => {
                        Ok(a.store.get(&a.path(key)).await?.bytes().await?.len() as u64)
                    }
                }
            })
            .buffer_unordered(conc)
            .try_fold(0u64, |a, n| async move { Ok(a + n) })
            .await
    }

    /// Deletes stored objects, untimed.
    async fn delete(&self, keys: &[String], conc: usize) -> Result<()> {
        stream::iter(keys)
            .map(|k| async move {
                match self {
                    Self::Nginx(n) => match std::fs::remove_file(n.root.join(k)) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            Err(anyhow::Error::from(e))
                        }
                        _ => Ok(()),
                    },
                    Self::Azure(a) => match a.store.delete(&a.path(k)).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                        Err(e) => Err(anyhow::Error::from(e)),
                    },
                }
            })
            .buffer_unordered(conc)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    fn stop(self) {
        if let Self::Nginx(mut n) = self
            && let Err(e) = n.child.stop()
        {
            eprintln!("bench: stopping nginx: {e}");
        }
    }
}

struct NginxBinary {
    version: String,
    configure: String,
}

impl NginxBinary {
    fn find() -> Result<Self> {
        let out = match Command::new("nginx").arg("-V").output() {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "nginx is not installed, and the baseline needs it: install it with \
                 `apt-get install nginx` (as root; scripts/bench does this), or run with \
                 --no-baseline"
            ),
            Err(e) => bail!("cannot run nginx -V: {e}"),
        };
        let text = String::from_utf8_lossy(&out.stderr).to_string();
        if !text.contains("http_dav_module") {
            bail!(
                "this nginx has no WebDAV module (http_dav_module), which the baseline needs: \
                 install Debian's nginx (`apt-get install nginx`), or run with --no-baseline"
            );
        }
        let version = text
            .lines()
            .find_map(|l| l.strip_prefix("nginx version: "))
            .unwrap_or("nginx")
            .trim()
            .to_string();
        Ok(Self {
            version,
            configure: text,
        })
    }
}

struct Nginx {
    bin: NginxBinary,
    child: ChildGuard,
    base: String,
    root: PathBuf,
    http: reqwest::Client,
    workers: Vec<u32>,
    watched: Watched,
}

impl Nginx {
    async fn start(bin: NginxBinary, prefix: &Path, http: &reqwest::Client) -> Result<Self> {
        let root = prefix.join("root");
        let temp = prefix.join("temp");
        std::fs::create_dir_all(&root)?;
        std::fs::create_dir_all(&temp)?;
        let port = free_port()?;
        let conf = prefix.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&bin, prefix, &root, &temp, port))?;
        let error_log = prefix.join("error.log");
        let out = prefix.join("stdout.log");
        let out_file = std::fs::File::create(&out)?;
        let child = Command::new("nginx")
            .arg("-e")
            .arg(&error_log)
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(prefix)
            .arg("-g")
            .arg("daemon off;")
            .stdin(Stdio::null())
            .stdout(out_file.try_clone()?)
            .stderr(out_file)
            .spawn()
            .context("cannot start nginx")?;
        let mut child = ChildGuard {
            name: "nginx",
            child: Some(child),
            log: error_log,
        };
        let base = format!("http://127.0.0.1:{port}");
        wait_ready(&mut child, http, &format!("{base}/"), true).await?;
        let master = child.pid();
        let mut workers = children_of(master);
        let deadline = Instant::now() + Duration::from_secs(5);
        while workers.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            workers = children_of(master);
        }
        let mut pids = vec![master];
        pids.extend(&workers);
        Ok(Self {
            bin,
            child,
            base,
            root,
            http: http.clone(),
            workers,
            watched: Watched {
                pids,
                clk_tck: clock_ticks().0,
            },
        })
    }
}

fn nginx_conf(bin: &NginxBinary, prefix: &Path, root: &Path, temp: &Path, port: u16) -> String {
    let p = |x: &Path| x.display().to_string();
    let mut temp_paths = format!("    client_body_temp_path {}/body;\n", p(temp));
    // Every compiled-in temp path is created at start-up; keep them all in the run dir.
    for kind in ["proxy", "fastcgi", "uwsgi", "scgi"] {
        if bin.configure.contains(&format!("--http-{kind}-temp-path")) {
            let _ = writeln!(temp_paths, "    {kind}_temp_path {}/{kind};", p(temp));
        }
    }
    // Workers run as root when the bench does, so they can write to the run dir.
    let user = if running_as_root() {
        "user root;\n"
    } else {
        ""
    };
    format!(
        "# Generated by chunkvault bench.\n\
         {user}worker_processes {NGINX_WORKERS};\n\
         pid {pid};\n\
         error_log {err} warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
         \x20   access_log {access} combined buffer=32k flush=200ms;\n\
         \x20   sendfile on;\n\
         \x20   tcp_nopush on;\n\
         \x20   tcp_nodelay on;\n\
         \x20   keepalive_requests 1000000;\n\
         \x20   default_type application/octet-stream;\n\
         {temp_paths}\
         \x20   server {{\n\
         \x20       listen 127.0.0.1:{port};\n\
         \x20       root {root};\n\
         \x20       location / {{\n\
         \x20           dav_methods PUT DELETE;\n\
         \x20           create_full_put_path on;\n\
         \x20           client_max_body_size 0;\n\
         \x20           dav_access user:rw group:r all:r;\n\
         \x20       }}\n\
         \x20   }}\n\
         }}\n",
        pid = p(&prefix.join("nginx.pid")),
        err = p(&prefix.join("error.log")),
        access = p(&prefix.join("access.log")),
        root = p(root),
    )
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

struct AzureBaseline {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    describe: String,
}

impl AzureBaseline {
    async fn open(store: &StoreArgs, run_name: &str) -> Result<Self> {
        let config = Config::load(store, &ServeArgs::default())?;
        let blobs = chunkvault_blob::ObjectStoreBlobs::open(&config.blob, &config.retry)
            .await
            .map_err(|e| anyhow!("cannot open the baseline's blob store: {e}"))?;
        use chunkvault_blob::BlobStore as _;
        Ok(Self {
            describe: blobs.describe(),
            store: blobs.inner().clone(),
            prefix: format!("bench-baseline/{run_name}"),
        })
    }

    fn path(&self, key: &str) -> ObjPath {
        ObjPath::from(format!("{}/{key}", self.prefix))
    }
}

// ---------------------------------------------------------------------------------------------
// The run directory

struct RunDir {
    path: PathBuf,
    name: String,
    keep: bool,
}

impl RunDir {
    fn create(work_dir: &Path, keep: bool) -> Result<Self> {
        std::fs::create_dir_all(work_dir)
            .with_context(|| format!("cannot create the work dir {}", work_dir.display()))?;
        let work_dir = work_dir.canonicalize()?;
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let name = format!("run-{secs}-{}", std::process::id());
        let path = work_dir.join(&name);
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        progress(format!("run directory {}", path.display()));
        Ok(Self { path, name, keep })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("bench: kept {}", self.path.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("bench: cannot remove {}: {e}", self.path.display());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reporting

fn progress(msg: String) {
    eprintln!("bench: {msg}");
}

fn progress_phase(label: &str, who: &str, what: &str, bytes: u64, ph: Phase) {
    progress(format!(
        "{label}: {who:<12} {what:<10} {:>8.1} MB/s  ({:.2} s{}{})",
        bytes as f64 / ph.secs / MB,
        ph.secs,
        ph.cpu_s
            .map(|c| format!(", cpu {c:.2} s"))
            .unwrap_or_default(),
        ph.peak_rss
            .map(|r| format!(", peak RSS {:.1} MiB", r as f64 / MIB))
            .unwrap_or_default()
    ));
}

fn progress_files(label: &str, who: &str, what: &str, n: usize, ph: Phase) {
    progress(format!(
        "{label}: {who:<12} {what:<10} {:>8.0} files/s ({:.2} s{})",
        n as f64 / ph.secs,
        ph.secs,
        ph.cpu_s
            .map(|c| format!(", cpu {c:.2} s"))
            .unwrap_or_default()
    ));
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else if b >= GIB {
        format!("{:.2} GiB", b / GIB)
    } else {
        format!("{bytes} B")
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Agg {
    Median,
    Max,
}

struct Metric {
    key: &'static str,
    label: &'static str,
    agg: Agg,
    /// Higher is better and a ratio ours/baseline is printed.
    ratio: bool,
    decimals: usize,
    get: fn(&SystemRound, &Params) -> Option<f64>,
}

const METRICS: &[Metric] = &[
    Metric {
        key: "large_upload_mb_per_s",
        label: "large upload, MB/s",
        agg: Agg::Median,
        ratio: true,
        decimals: 1,
        get: |s, p| Some(p.size as f64 / s.large_up.secs / MB),
    },
    Metric {
        key: "large_download_mb_per_s",
        label: "large download, MB/s",
        agg: Agg::Median,
        ratio: true,
        decimals: 1,
        get: |s, p| Some(p.size as f64 / s.large_down.secs / MB),
    },
    Metric {
        key: "small_upload_files_per_s",
        label: "small upload, files/s",
        agg: Agg::Median,
        ratio: true,
        decimals: 0,
        get: |s, p| Some(p.small_count as f64 / s.small_up.secs),
    },
    Metric {
        key: "small_download_files_per_s",
        label: "small download, files/s",
        agg: Agg::Median,
        ratio: true,
        decimals: 0,
        get: |s, p| Some(p.small_count as f64 / s.small_down.secs),
    },
    Metric {
        key: "peak_rss_large_upload_mib",
        label: "peak RSS, large upload, MiB",
        agg: Agg::Max,
        ratio: false,
        decimals: 1,
        get: |s, _| s.large_up.peak_rss.map(|r| r as f64 / MIB),
    },
    Metric {
        key: "peak_rss_large_download_mib",
        label: "peak RSS, large download, MiB",
        agg: Agg::Max,
        ratio: false,
        decimals: 1,
        get: |s, _| s.large_down.peak_rss.map(|r| r as f64 / MIB),
    },
    Metric {
        key: "peak_rss_small_upload_mib",
        label: "peak RSS, small upload, MiB",
        agg: Agg::Max,
        ratio: false,
        decimals: 1,
        get: |s, _| s.small_up.peak_rss.map(|r| r as f64 / MIB),
    },
    Metric {
        key: "peak_rss_small_download_mib",
        label: "peak RSS, small download, MiB",
        agg: Agg::Max,
        ratio: false,
        decimals: 1,
        get: |s, _| s.small_down.peak_rss.map(|r| r as f64 / MIB),
    },
    Metric {
        key: "cpu_s_per_gib_large_upload",
        label: "server CPU s/GiB, large upload",
        agg: Agg::Median,
        ratio: false,
        decimals: 2,
        get: |s, p| s.large_up.cpu_s.map(|c| c / (p.size as f64 / GIB)),
    },
    Metric {
        key: "cpu_s_per_gib_large_download",
        label: "server CPU s/GiB, large download",
        agg: Agg::Median,
        ratio: false,
        decimals: 2,
        get: |s, p| s.large_down.cpu_s.map(|c| c / (p.size as f64 / GIB)),
    },
    Metric {
        key: "cpu_us_per_file_small_upload",
        label: "server CPU µs/file, small upload",
        agg: Agg::Median,
        ratio: false,
        decimals: 0,
        get: |s, p| s.small_up.cpu_s.map(|c| c * 1e6 / p.small_count as f64),
    },
    Metric {
        key: "cpu_us_per_file_small_download",
        label: "server CPU µs/file, small download",
        agg: Agg::Median,
        ratio: false,
        decimals: 0,
        get: |s, p| s.small_down.cpu_s.map(|c| c * 1e6 / p.small_count as f64),
    },
];

fn backend_name(b: Backend) -> String {
    b.to_possible_value()
        .map_or_else(|| format!("{b:?}"), |v| v.get_name().to_string())
}

fn aggregate(agg: Agg, mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(match agg {
        Agg::Max => v[v.len() - 1],
        Agg::Median if v.len() % 2 == 1 => v[v.len() / 2],
        Agg::Median => (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0,
    })
}

struct Report {
    rounds: Vec<RoundResult>,
    notes: Vec<String>,
    chunk_size: Option<u64>,
    baseline_name: Option<String>,
}

struct Row {
    metric: &'static Metric,
    ours: Vec<f64>,
    base: Vec<f64>,
    ours_agg: Option<f64>,
    base_agg: Option<f64>,
    ratio: Option<f64>,
}

impl Report {
    fn rows(&self, p: &Params) -> Vec<Row> {
        METRICS
            .iter()
            .map(|m| {
                let ours: Vec<f64> = self
                    .rounds
                    .iter()
                    .filter_map(|r| (m.get)(&r.ours, p))
                    .collect();
                let base: Vec<f64> = self
                    .rounds
                    .iter()
                    .filter_map(|r| r.base.as_ref().and_then(|b| (m.get)(b, p)))
                    .collect();
                let ours_agg = aggregate(m.agg, ours.clone());
                let base_agg = aggregate(m.agg, base.clone());
                let ratio = match (m.ratio, ours_agg, base_agg) {
                    (true, Some(o), Some(b)) if b > 0.0 => Some(o / b),
                    _ => None,
                };
                Row {
                    metric: m,
                    ours,
                    base,
                    ours_agg,
                    base_agg,
                    ratio,
                }
            })
            .collect()
    }

    fn parameters(&self, p: &Params) -> Vec<(&'static str, String)> {
        vec![
            ("backend", backend_name(p.backend)),
            (
                "large file",
                format!("{} ({} bytes)", human(p.size), p.size),
            ),
            (
                "small files",
                format!(
                    "{} x {}, each phase in {} slices run turn about",
                    p.small_count,
                    human(p.small_size),
                    slice_bounds(p.small_count, p.small_slices).len()
                ),
            ),
            (
                "concurrency",
                format!("{} keep-alive requests, one client", p.concurrency),
            ),
            (
                "rounds",
                format!("{} measured after {} warm-up", p.rounds, p.warmup),
            ),
            ("chunk size", self.chunk_size.map_or("?".into(), human)),
            (
                "server args",
                if p.server_args.is_empty() {
                    "(none)".into()
                } else {
                    p.server_args.join(" ")
                },
            ),
            (
                "baseline",
                self.baseline_name.clone().unwrap_or_else(|| "none".into()),
            ),
            ("CLK_TCK", format!("{} ({})", p.clk_tck, p.clk_tck_source)),
        ]
    }

    fn table(&self, p: &Params) -> String {
        let rows = self.rows(p);
        let base_name = self.baseline_name.as_deref().unwrap_or("baseline");
        let mut out = String::new();
        let _ = writeln!(out, "\nchunkvault bench results");
        for (k, v) in self.parameters(p) {
            let _ = writeln!(out, "  {k:<12} {v}");
        }
        let _ = writeln!(
            out,
            "  throughput and CPU: median of rounds; peak RSS: maximum over rounds\n"
        );
        let _ = writeln!(
            out,
            "{:<36} {:>12} {:>12} {:>12}",
            "figure", "chunkvault", base_name, "ours/base"
        );
        let _ = writeln!(out, "{}", "-".repeat(75));
        let fmt = |v: Option<f64>, d: usize| v.map_or("-".into(), |v| format!("{v:.d$}"));
        for r in &rows {
            let _ = writeln!(
                out,
                "{:<36} {:>12} {:>12} {:>12}",
                r.metric.label,
                fmt(r.ours_agg, r.metric.decimals),
                fmt(r.base_agg, r.metric.decimals),
                r.ratio.map_or(String::new(), |x| format!("{x:.2}")),
            );
        }
        let _ = writeln!(out, "\nper round (throughput rows):");
        for r in rows.iter().filter(|r| r.metric.ratio) {
            let list = |v: &[f64]| {
                v.iter()
                    .map(|x| format!("{x:.d$}", d = r.metric.decimals))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = write!(
                out,
                "  {:<26} chunkvault [{}]",
                r.metric.label,
                list(&r.ours)
            );
            if !r.base.is_empty() {
                let _ = write!(out, "  {base_name} [{}]", list(&r.base));
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(out, "\nnotes:");
        for n in &self.notes {
            let _ = writeln!(out, "  - {n}");
        }
        out
    }

    fn json(&self, p: &Params) -> Value {
        let figures: serde_json::Map<String, Value> = self
            .rows(p)
            .into_iter()
            .map(|r| {
                (
                    r.metric.key.to_string(),
                    json!({
                        "chunkvault": r.ours_agg,
                        "baseline": r.base_agg,
                        "ratio": r.ratio,
                        "aggregate": if r.metric.agg == Agg::Max { "max" } else { "median" },
                        "per_round": { "chunkvault": r.ours, "baseline": r.base },
                    }),
                )
            })
            .collect();
        json!({
            "parameters": {
                "backend": backend_name(p.backend),
                "size_bytes": p.size,
                "small_size_bytes": p.small_size,
                "small_count": p.small_count,
                "small_slices": slice_bounds(p.small_count, p.small_slices).len(),
                "concurrency": p.concurrency,
                "rounds": p.rounds,
                "warmup_rounds": p.warmup,
                "chunk_size_bytes": self.chunk_size,
                "server_args": p.server_args,
                "baseline": self.baseline_name,
                "clk_tck": p.clk_tck,
                "clk_tck_source": p.clk_tck_source,
                "mb_bytes": 1_000_000,
            },
            "figures": figures,
            "notes": self.notes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_every_file_once_in_order() {
        for (count, slices) in [(4000, 8), (10, 3), (5, 8), (1, 1), (7, 1), (3, 3)] {
            let bounds = slice_bounds(count, slices);
            assert!(bounds.len() <= slices && !bounds.is_empty());
            assert_eq!(bounds.first().map(|r| r.start), Some(0));
            assert_eq!(bounds.last().map(|r| r.end), Some(count));
            for pair in bounds.windows(2) {
                assert_eq!(pair[0].end, pair[1].start, "{count} in {slices}");
            }
            let (min, max) = bounds.iter().fold((usize::MAX, 0), |(lo, hi), r| {
                (lo.min(r.len()), hi.max(r.len()))
            });
            assert!(max - min <= 1, "{count} in {slices}: sizes {min}..={max}");
        }
        assert_eq!(slice_bounds(5, 8).len(), 5);
    }

    #[test]
    fn the_first_turn_alternates_and_ours_runs_alone_without_a_baseline() {
        assert_eq!(turns(0, Some('b')), [Some('b'), None]);
        assert_eq!(turns(1, Some('b')), [None, Some('b')]);
        assert_eq!(turns(2, Some('b')), [Some('b'), None]);
        assert_eq!(turns::<char>(3, None), [None]);
    }

    #[test]
    fn slices_add_times_and_cpu_and_keep_the_highest_rss() {
        let mut total = Phase::default();
        total.add(Phase {
            secs: 0.5,
            cpu_s: Some(0.25),
            peak_rss: Some(10),
        });
        total.add(Phase {
            secs: 0.25,
            cpu_s: Some(0.5),
            peak_rss: Some(30),
        });
        total.add(Phase {
            secs: 1.0,
            cpu_s: None,
            peak_rss: Some(20),
        });
        assert_eq!(total.secs, 1.75);
        assert_eq!(total.cpu_s, Some(0.75));
        assert_eq!(total.peak_rss, Some(30));
        let mean = total.mean_of(2);
        assert_eq!(mean.secs, 0.875);
        assert_eq!(mean.cpu_s, Some(0.375));
        assert_eq!(mean.peak_rss, Some(30));
    }
}
