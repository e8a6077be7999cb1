//! Client commands: upload, download, ls, stat, rm against a running server. Progress bars on
//! a terminal, quiet and machine-readable (`--json`) otherwise. Every transfer is checked
//! against the file's SHA-256 at the end.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use chunkvault_client::Client;
use chunkvault_types::FileInfo;
use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// The server to talk to.
    #[arg(
        long,
        env = "CHUNKVAULT_SERVER",
        default_value = "http://127.0.0.1:3000",
        global = true
    )]
    pub server: String,
    /// Print JSON (one object per line) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bar.
    #[arg(long, short, global = true)]
    pub quiet: bool,
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
}

#[derive(Args, Debug)]
pub struct DownloadArgs {
    pub id: String,
    /// Where to write; default: the file's name in the current directory. `-` for stdout.
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
    let client = Client::new(&args.server)?;
    let files = collect_files(&up.paths)?;
    let mut total = 0;
    for (p, _) in &files {
        total += std::fs::metadata(p)?.len();
    }
    let pb = bar(args, total);
    let mut failed = 0;
    for (path, name) in &files {
        pb.set_message(name.clone());
        match upload_one(
            &client,
            path,
            name,
            up.content_type.as_deref().unwrap_or(""),
            &pb,
        )
        .await
        {
            Ok(info) => pb.suspend(|| print_info(args, &info)),
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

async fn upload_one(
    client: &Client,
    path: &Path,
    name: &str,
    content_type: &str,
    pb: &ProgressBar,
) -> Result<FileInfo> {
    let file = tokio::fs::File::open(path).await?;
    let size = file.metadata().await?.len();
    // Hash what is sent, as it is sent, and compare with what the server computed.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<[u8; 32]>(1);
    let pb2 = pb.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 << 10).map(move |chunk| {
        let chunk = chunk?;
        pb2.inc(chunk.len() as u64);
        Ok::<Bytes, std::io::Error>(chunk)
    });
    let stream = HashOnEnd {
        inner: Box::pin(stream),
        sha: Some(Sha256::new()),
        tx: Some(tx),
    };
    let info = client
        .upload_stream(name, content_type, Some(size), stream)
        .await?;
    let local = rx
        .recv()
        .await
        .ok_or_else(|| anyhow!("the upload ended before the whole file was read"))?;
    if hex::encode(local) != info.sha256 {
        bail!(
            "the server's SHA-256 {} differs from the file's {}",
            info.sha256,
            hex::encode(local)
        );
    }
    Ok(info)
}

/// Passes a byte stream through and sends its SHA-256 when it ends.
struct HashOnEnd<S> {
    inner: std::pin::Pin<Box<S>>,
    sha: Option<Sha256>,
    tx: Option<tokio::sync::mpsc::Sender<[u8; 32]>>,
}

impl<S: futures::Stream<Item = std::io::Result<Bytes>>> futures::Stream for HashOnEnd<S> {
    type Item = std::io::Result<Bytes>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.inner.as_mut().poll_next(cx) {
            std::task::Poll::Ready(Some(Ok(b))) => {
                if let Some(h) = this.sha.as_mut() {
                    h.update(&b);
                }
                std::task::Poll::Ready(Some(Ok(b)))
            }
            std::task::Poll::Ready(None) => {
                if let (Some(h), Some(tx)) = (this.sha.take(), this.tx.take()) {
                    let _ = tx.try_send(h.finalize().into());
                }
                std::task::Poll::Ready(None)
            }
            other => other,
        }
    }
}

fn print_info(args: &ClientArgs, info: &FileInfo) {
    if args.json {
        println!("{}", serde_json::to_string(info).unwrap_or_default());
    } else {
        println!(
            "{}  {:>12}  {}  {}",
            info.id, info.size, info.sha256, info.name
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

pub async fn download(args: &ClientArgs, dl: &DownloadArgs) -> Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let detail = client.stat(&dl.id).await?;
    let info = detail.file;
    let to_stdout = dl.output.as_deref() == Some(Path::new("-"));
    let out = dl
        .output
        .clone()
        .unwrap_or_else(|| local_name(&info.name, &dl.id));
    let part = PathBuf::from(format!("{}.part", out.display()));
    let pb = bar(args, info.size);
    pb.set_message(info.name.clone());

    // Resume: a `.part` file from an interrupted download continues with Range, provided the
    // file has not changed (If-Range with the ETag).
    let have = if to_stdout {
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
    let mut sha = Sha256::new();
    let mut sink: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = if to_stdout {
        Box::new(tokio::io::stdout())
    } else if resumed {
        // Hash what is already there first, so the end-to-end check covers the whole file.
        let existing = tokio::fs::read(&part).await?;
        sha.update(&existing);
        pb.set_position(have);
        Box::new(
            tokio::fs::OpenOptions::new()
                .append(true)
                .open(&part)
                .await?,
        )
    } else {
        Box::new(tokio::fs::File::create(&part).await?)
    };
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("the download was cut off (the server found damaged data, or the connection failed); run the same command again to resume")?;
        sha.update(&chunk);
        sink.write_all(&chunk).await?;
        pb.inc(chunk.len() as u64);
    }
    sink.flush().await?;
    drop(sink);
    pb.finish_and_clear();
    let digest = hex::encode(sha.finalize());
    if digest != info.sha256 {
        if !to_stdout {
            let _ = tokio::fs::remove_file(&part).await;
        }
        bail!(
            "SHA-256 mismatch: got {digest}, the file's is {}; the partial download was removed",
            info.sha256
        );
    }
    if !to_stdout {
        tokio::fs::rename(&part, &out).await?;
        if args.json {
            println!(
                "{}",
                serde_json::json!({"id": info.id, "path": out, "size": info.size, "sha256": digest, "resumed": resumed})
            );
        } else if !args.quiet {
            eprintln!(
                "{} -> {} ({} bytes, sha256 {}{})",
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
    let client = Client::new(&args.server)?;
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
    let client = Client::new(&args.server)?;
    let d = client.stat(id).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        println!(
            "id       {}\nname     {}\ntype     {}\nsize     {}\nsha256   {}\nchunks   {} x {} bytes\ncreated  {}",
            d.file.id,
            d.file.name,
            d.file.content_type,
            d.file.size,
            d.file.sha256,
            d.file.chunks,
            d.file.chunk_size,
            d.file.created_at
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn rm(args: &ClientArgs, ids: &[String]) -> Result<ExitCode> {
    let client = Client::new(&args.server)?;
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
