//! Client commands: upload, download, ls, stat, rm against a running server. Progress bars on
//! a terminal, quiet and machine-readable (`--json`) otherwise. Every transfer is checked
//! against the file's digest at the end (BLAKE3; SHA-256 for files stored by earlier versions).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use chunkvault_client::Client;
use chunkvault_types::{ChunkId, ChunkOffer, FileHasher, FileInfo, SessionCommit, SessionCreate};
use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// The server to talk to.
    /// (default: `server` in the client configuration file, else http://127.0.0.1:3000)
    #[arg(long, env = "CHUNKVAULT_SERVER", global = true)]
    pub server: Option<String>,
    /// Print JSON (one object per line) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bar.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// The API key to send (`cvk_...`). Default: `token` in the client configuration file.
    #[arg(long, env = "CHUNKVAULT_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Client configuration file with `token = "cvk_..."` (and optionally `server = "..."`)
    /// (default: ~/.config/chunkvault/client.toml, when it exists).
    #[arg(long, env = "CHUNKVAULT_CLIENT_CONFIG", global = true)]
    pub client_config: Option<PathBuf>,
}

/// `client.toml`.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ClientFile {
    token: Option<String>,
    server: Option<String>,
}

impl ClientArgs {
    fn file(&self) -> Result<ClientFile> {
        let (path, required) = match &self.client_config {
            Some(p) => (p.clone(), true),
            None => match default_client_config() {
                Some(p) => (p, false),
                None => return Ok(ClientFile::default()),
            },
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("invalid client configuration {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(ClientFile::default())
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// The server URL: `--server`/`CHUNKVAULT_SERVER`, else the file's, else the default.
    pub fn server(&self) -> Result<String> {
        Ok(match &self.server {
            Some(s) => s.clone(),
            None => self
                .file()?
                .server
                .unwrap_or_else(|| "http://127.0.0.1:3000".into()),
        })
    }

    /// A client with the API key from `--token`/`CHUNKVAULT_TOKEN` or the client file.
    pub fn client(&self) -> Result<Client> {
        let token = match &self.token {
            Some(t) => Some(t.trim().to_string()),
            None => self.file()?.token,
        };
        Ok(Client::with_token(&self.server()?, token.as_deref())?)
    }
}

/// `$XDG_CONFIG_HOME/chunkvault/client.toml` or `~/.config/chunkvault/client.toml`.
fn default_client_config() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|d| d.join("chunkvault/client.toml"))
}

#[derive(Args, Debug)]
pub struct UploadArgs {
    /// Files or directories (uploaded recursively, each file under its path relative to the
    /// directory's parent).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Media type for every file (default: application/octet-stream).
    #[arg(long = "type")]
    pub content_type: Option<String>,
    /// Chunks in flight at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Where interrupted uploads are remembered, to resume them
    /// (default: ~/.cache/chunkvault/uploads).
    #[arg(long, env = "CHUNKVAULT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

struct UploadOpts<'a> {
    server: &'a str,
    content_type: &'a str,
    parallel: usize,
    state_dir: &'a Path,
}

#[derive(Args, Debug)]
pub struct DownloadArgs {
    pub id: String,
    /// Where to write; default: the file's name in the current directory, which must not
    /// exist yet. `-` for stdout. An existing file given here is replaced once the download
    /// is complete and verified; a symlink is followed; a device or FIFO is written into.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

fn bar(args: &ClientArgs, total: u64) -> ProgressBar {
    if args.quiet || args.json {
        return ProgressBar::hidden();
    }
    // indicatif draws nothing when stderr is not a terminal.
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

fn collect_files(paths: &[PathBuf]) -> Result<Vec<(PathBuf, String)>> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<(PathBuf, String)>) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read directory {}", dir.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            if e.file_type()?.is_dir() {
                walk(&p, base, out)?;
            } else if e.file_type()?.is_file() {
                let name = p
                    .strip_prefix(base)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned();
                out.push((p, name));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?;
        if meta.is_dir() {
            let base = p.parent().unwrap_or(Path::new(""));
            walk(p, base, &mut out)?;
        } else if !meta.is_file() {
            // A FIFO, a device or a socket has no length to declare or resume by: uploading
            // one would store whatever its length says (0), not its content.
            bail!(
                "{} is not a regular file (a FIFO, device or socket); copy it to a file first",
                p.display()
            );
        } else {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string());
            out.push((p.clone(), name));
        }
    }
    Ok(out)
}

pub async fn upload(args: &ClientArgs, up: &UploadArgs) -> Result<ExitCode> {
    let client = args.client()?;
    let files = collect_files(&up.paths)?;
    let mut total = 0;
    for (p, _) in &files {
        total += std::fs::metadata(p)?.len();
    }
    let pb = bar(args, total);
    let state_dir = up.state_dir.clone().unwrap_or_else(default_state_dir);
    let server = args.server()?;
    let opts = UploadOpts {
        server: &server,
        content_type: up.content_type.as_deref().unwrap_or(""),
        parallel: up.parallel,
        state_dir: &state_dir,
    };
    let mut failed = 0;
    for (path, name) in &files {
        pb.set_message(name.clone());
        match upload_one(&client, &opts, path, name, &pb).await {
            Ok(u) => pb.suspend(|| print_uploaded(args, &u)),
            Err(e) => {
                failed += 1;
                pb.suspend(|| eprintln!("error: {}: {e:#}", path.display()));
            }
        }
    }
    pb.finish_and_clear();
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What uploading one file did.
struct Uploaded {
    info: FileInfo,
    sent: u64,
    skipped: u64,
    resumed: bool,
}

/// Where the session of an interrupted upload is remembered: one small file per
/// (server, path, size, mtime), so a changed file never resumes a stale session.
fn state_path(dir: &Path, server: &str, path: &Path, meta: &std::fs::Metadata) -> PathBuf {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = Sha256::new();
    h.update(server.as_bytes());
    h.update([0]);
    h.update(canonical.as_os_str().as_encoded_bytes());
    h.update([0]);
    h.update(meta.len().to_le_bytes());
    h.update(mtime.to_le_bytes());
    dir.join(format!("{}.json", &hex::encode(h.finalize())[..32]))
}

/// The default state directory: `$XDG_CACHE_HOME/chunkvault/uploads` or
/// `~/.cache/chunkvault/uploads`.
pub fn default_state_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("chunkvault/uploads")
}

/// Reads chunk `index` of a file.
async fn read_chunk(path: &Path, offset: u64, len: usize) -> Result<Bytes> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(path).await?;
    f.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).await?;
    Ok(Bytes::from(buf))
}

/// Uploads one file through an upload session: hash every chunk and the whole file (BLAKE3)
/// first, resume the session remembered for this file or open one, offer the hashes so the
/// server records what it already has, send only the missing chunks with `parallel` in
/// flight, commit with the local digest declared, and compare the server's with it.
async fn upload_one(
    client: &Client,
    opts: &UploadOpts<'_>,
    path: &Path,
    name: &str,
    pb: &ProgressBar,
) -> Result<Uploaded> {
    let meta = tokio::fs::metadata(path).await?;
    let size = meta.len();
    let state = state_path(opts.state_dir, opts.server, path, &meta);
    let mut resumed = false;
    let mut session = None;
    if let Ok(text) = tokio::fs::read_to_string(&state).await
        && let Ok(id) = serde_json::from_str::<serde_json::Value>(&text)
            .map(|v| v["session"].as_str().unwrap_or_default().to_string())
        && let Ok(s) = client.session(&id).await
        && s.state == "open"
        && s.size == Some(size)
    {
        resumed = true;
        session = Some(s);
    }
    let session = match session {
        Some(s) => s,
        None => {
            let s = client
                .create_session(&SessionCreate {
                    name: name.to_string(),
                    content_type: opts.content_type.to_string(),
                    size: Some(size),
                })
                .await?;
            tokio::fs::create_dir_all(opts.state_dir).await?;
            tokio::fs::write(
                &state,
                serde_json::json!({"session": s.id, "path": path, "size": size}).to_string(),
            )
            .await
            .with_context(|| format!("cannot write {}", state.display()))?;
            s
        }
    };
    let id = session.id.to_string();
    let cs = session.chunk_size;

    // Hash pass: one chunk in memory at a time.
    let mut hashes = Vec::with_capacity(size.div_ceil(cs) as usize);
    let mut whole = FileHasher::new();
    {
        use tokio::io::AsyncReadExt;
        let mut f = tokio::fs::File::open(path).await?;
        let mut buf = vec![0u8; cs as usize];
        let mut left = size;
        while left > 0 {
            let n = left.min(cs) as usize;
            f.read_exact(&mut buf[..n]).await?;
            let chunk = Bytes::copy_from_slice(&buf[..n]);
            let (id, h) = tokio::task::spawn_blocking(move || {
                whole.update(&chunk);
                (ChunkId::of(&chunk), whole)
            })
            .await?;
            whole = h;
            hashes.push(id);
            left -= n as u64;
        }
    }
    let local = whole.finish();
    let length = |i: u64| cs.min(size - i * cs);

    // Dedup before transfer: offer what the server does not list as stored.
    let stored: std::collections::HashSet<u64> = session.stored.iter().copied().collect();
    let offers: Vec<ChunkOffer> = hashes
        .iter()
        .enumerate()
        .map(|(i, h)| (i as u64, h))
        .filter(|(i, _)| !stored.contains(i))
        .map(|(i, h)| ChunkOffer {
            index: i,
            length: length(i),
            hash: *h,
        })
        .collect();
    let mut missing = Vec::new();
    for batch in offers.chunks(chunkvault_core::MAX_OFFERS) {
        missing.extend(client.offer_chunks(&id, batch.to_vec()).await?.missing);
    }
    let total = hashes.len() as u64;
    let sent = missing.len() as u64;
    pb.inc(size - missing.iter().map(|i| length(*i)).sum::<u64>());

    let mut puts = futures::stream::iter(missing)
        .map(|i| {
            let hash = hashes[i as usize];
            let id = id.clone();
            async move {
                let data = read_chunk(path, i * cs, length(i) as usize).await?;
                client.put_chunk(&id, i, data, &hash).await?;
                pb.inc(length(i));
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(opts.parallel.max(1));
    while let Some(r) = puts.next().await {
        r?;
    }
    let declared = SessionCommit {
        blake3: local.blake3().map(str::to_string),
        sha256: None,
    };
    let info = client.commit_session(&id, &declared).await?;
    let _ = tokio::fs::remove_file(&state).await;
    if info.digest().as_ref() != Some(&local) {
        bail!(
            "the server's digest ({}) differs from the file's ({local})",
            digest_text(&info)
        );
    }
    Ok(Uploaded {
        info,
        sent,
        skipped: total - sent,
        resumed,
    })
}

fn print_uploaded(args: &ClientArgs, u: &Uploaded) {
    if args.json {
        let mut v = serde_json::to_value(&u.info).unwrap_or_default();
        v["chunks_sent"] = u.sent.into();
        v["chunks_skipped"] = u.skipped.into();
        v["resumed"] = u.resumed.into();
        println!("{v}");
    } else {
        print_info(args, &u.info);
        eprintln!(
            "  {} chunks sent, {} skipped (already on the server){}",
            u.sent,
            u.skipped,
            if u.resumed { ", resumed" } else { "" }
        );
    }
}

/// A file's digest as `ALGORITHM HEX`, or a note that the server sent none.
fn digest_text(info: &FileInfo) -> String {
    info.digest()
        .map_or_else(|| "no digest".to_string(), |d| d.to_string())
}

fn print_info(args: &ClientArgs, info: &FileInfo) {
    if args.json {
        println!("{}", serde_json::to_string(info).unwrap_or_default());
    } else {
        println!(
            "{}  {:>12}  {}  {}",
            info.id,
            info.size,
            digest_text(info),
            info.name
        );
    }
}

/// A safe local name for a stored name: its last path component, never `..` or empty.
fn local_name(name: &str, id: &str) -> PathBuf {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String = last
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect();
    if clean.is_empty() || clean == "." || clean == ".." {
        PathBuf::from(id)
    } else {
        PathBuf::from(clean)
    }
}

/// Where a download goes, and whether it is written straight into it (`true`: a device or a
/// FIFO, which a finished `.part` file must not replace, and stdout) rather than through a
/// `.part` file renamed at the end. Without `-o`, the file's own name, which must not exist:
/// a download never replaces a file nobody named. With `-o`, a symlink is followed to what it
/// names, so the link stays; a directory is refused.
async fn output_path(given: Option<&Path>, name: &str, id: &str) -> Result<(PathBuf, bool)> {
    let Some(given) = given else {
        let out = local_name(name, id);
        if tokio::fs::symlink_metadata(&out).await.is_ok() {
            bail!(
                "{} exists; pass -o {} to replace it, or -o another path",
                out.display(),
                out.display()
            );
        }
        return Ok((out, false));
    };
    if given == Path::new("-") {
        return Ok((given.to_path_buf(), true));
    }
    let mut out = given.to_path_buf();
    if tokio::fs::symlink_metadata(&out)
        .await
        .is_ok_and(|m| m.file_type().is_symlink())
    {
        out = tokio::fs::canonicalize(&out)
            .await
            .with_context(|| format!("{} is a symlink to nothing that exists", given.display()))?;
    }
    match tokio::fs::metadata(&out).await {
        Ok(m) if m.is_dir() => bail!("{} is a directory; give a file path", out.display()),
        Ok(m) if !m.is_file() => Ok((out, true)),
        _ => Ok((out, false)),
    }
}

pub async fn download(args: &ClientArgs, dl: &DownloadArgs) -> Result<ExitCode> {
    let client = args.client()?;
    let detail = client.stat(&dl.id).await?;
    let info = detail.file;
    let (out, direct) = output_path(dl.output.as_deref(), &info.name, &dl.id).await?;
    let to_stdout = dl.output.as_deref() == Some(Path::new("-"));
    let part = PathBuf::from(format!("{}.part", out.display()));
    let pb = bar(args, info.size);
    pb.set_message(info.name.clone());

    // Resume: a `.part` file from an interrupted download continues with Range, provided the
    // file has not changed (If-Range with the ETag).
    let have = if to_stdout || direct {
        0
    } else {
        tokio::fs::metadata(&part)
            .await
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let mut req = client
        .http()
        .get(client.url(&format!("download/{}", dl.id)));
    if have > 0 && have < info.size {
        req = req
            .header("Range", format!("bytes={have}-"))
            .header("If-Range", info.etag());
    }
    let resp = chunkvault_client::check(req.send().await?).await?;
    let resumed = resp.status() == reqwest::StatusCode::PARTIAL_CONTENT;
    let Some(expected) = info.digest() else {
        bail!("the server sent no digest for file {}", info.id);
    };
    let mut whole = FileHasher::like(&expected);
    let mut sink: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = if to_stdout {
        Box::new(tokio::io::stdout())
    } else if direct {
        Box::new(
            tokio::fs::OpenOptions::new()
                .write(true)
                .open(&out)
                .await
                .with_context(|| format!("cannot write to {}", out.display()))?,
        )
    } else if resumed {
        // Hash what is already there first, so the end-to-end check covers the whole file.
        let existing = tokio::fs::read(&part).await?;
        whole.update(&existing);
        pb.set_position(have);
        Box::new(
            tokio::fs::OpenOptions::new()
                .append(true)
                .open(&part)
                .await?,
        )
    } else {
        Box::new(
            tokio::fs::File::create(&part)
                .await
                .with_context(|| format!("cannot create {}", part.display()))?,
        )
    };
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("the download was cut off (the server found damaged data, or the connection failed); run the same command again to resume")?;
        whole.update(&chunk);
        sink.write_all(&chunk)
            .await
            .with_context(|| format!("writing {}", out.display()))?;
        pb.inc(chunk.len() as u64);
    }
    sink.flush().await?;
    drop(sink);
    pb.finish_and_clear();
    let digest = whole.finish();
    if digest != expected {
        if !to_stdout && !direct {
            let _ = tokio::fs::remove_file(&part).await;
        }
        bail!(
            "{} mismatch: got {}, the file's is {}; the partial download was removed (or, \
             written into a device or FIFO, must not be trusted)",
            digest.algorithm(),
            digest.hex(),
            expected.hex()
        );
    }
    if !to_stdout {
        if !direct {
            tokio::fs::rename(&part, &out)
                .await
                .with_context(|| format!("cannot move {} to {}", part.display(), out.display()))?;
        }
        if args.json {
            println!(
                "{}",
                serde_json::json!({"id": info.id, "path": out, "size": info.size, digest.algorithm(): digest.hex(), "resumed": resumed})
            );
        } else if !args.quiet {
            eprintln!(
                "{} -> {} ({} bytes, {}{})",
                info.id,
                out.display(),
                info.size,
                digest,
                if resumed { ", resumed" } else { "" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn ls(args: &ClientArgs, limit: u32) -> Result<ExitCode> {
    let client = args.client()?;
    let mut after: Option<String> = None;
    let mut shown = 0u32;
    loop {
        let page = client.list(Some(limit.min(1000)), after.as_deref()).await?;
        for f in &page.files {
            print_info(args, f);
            shown += 1;
            if shown >= limit {
                return Ok(ExitCode::SUCCESS);
            }
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(ExitCode::SUCCESS),
        }
    }
}

pub async fn stat(args: &ClientArgs, id: &str) -> Result<ExitCode> {
    let client = args.client()?;
    let d = client.stat(id).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        println!(
            "id       {}\nname     {}\ntype     {}\nsize     {}\ndigest   {}\nchunks   {} x {} bytes\ncreated  {}",
            d.file.id,
            d.file.name,
            d.file.content_type,
            d.file.size,
            digest_text(&d.file),
            d.file.chunks,
            d.file.chunk_size,
            d.file.created_at
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn rm(args: &ClientArgs, ids: &[String]) -> Result<ExitCode> {
    let client = args.client()?;
    let mut failed = false;
    for id in ids {
        match client.delete(id).await {
            Ok(()) => {
                if !args.quiet {
                    eprintln!("deleted {id}");
                }
            }
            Err(e) => {
                failed = true;
                eprintln!("error: {id}: {e}");
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `chunkvault link ID --expires 1h [--range bytes=0-99]`: prints a presigned download URL.
pub async fn link(
    args: &ClientArgs,
    id: &str,
    expires: &str,
    range: Option<String>,
) -> Result<ExitCode> {
    let client = args.client()?;
    let link = client
        .create_link(
            id,
            &chunkvault_types::LinkCreate {
                expires_in: expires.to_string(),
                range,
            },
        )
        .await?;
    let url = client.url(&link.url);
    if args.json {
        println!(
            "{}",
            serde_json::json!({"url": url.as_str(), "expires_at": link.expires_at.format(&time::format_description::well_known::Rfc3339)?})
        );
    } else {
        println!("{url}");
    }
    Ok(ExitCode::SUCCESS)
}
