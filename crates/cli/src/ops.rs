//! Maintenance commands: migrate, gc, scrub, repair, location drain. They use the same configuration as `serve` and
//! talk to the stores directly; no server needs to run.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use chunkvault_core::{GcOptions, ScrubOptions};
use clap::Args;

use crate::config::{Config, ServeArgs, parse_size};
use crate::wiring::{Schema, holder_name, open_meta, open_vault};

#[derive(Args, Debug)]
pub struct GcArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Keep unreferenced chunks and unknown blobs younger than this (overrides gc_grace), e.g. 0s.
    #[arg(long)]
    pub grace: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ScrubArgs {
    /// Read at most this much per second, e.g. 100MiB. Default: unlimited.
    #[arg(long)]
    pub rate: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn migrate(config: &Config) -> Result<ExitCode> {
    let meta = open_meta(config, Schema::Migrate).await?;
    println!("metadata schema is current ({})", meta.describe());
    Ok(ExitCode::SUCCESS)
}

pub async fn gc(config: &Config, args: &GcArgs) -> Result<ExitCode> {
    let grace = match &args.grace {
        Some(g) => humantime::parse_duration(g)
            .map_err(|e| anyhow::anyhow!("invalid --grace {g:?}: {e}"))?,
        None => config.gc_grace,
    };
    let vault = open_vault(config, Schema::Require).await?;
    let report = vault
        .gc(&GcOptions {
            grace,
            holder: holder_name(),
            lease_ttl: Duration::from_secs(300),
        })
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.skipped_lease_held {
        println!("another node is running GC (it holds the lease); nothing done");
    } else {
        for id in &report.expired_uploads {
            println!("expired upload {id}");
        }
        for c in &report.deleted_unreferenced {
            println!("deleted unreferenced chunk {c}");
        }
        for c in &report.deleted_orphans {
            println!("deleted unknown blob {c}");
        }
        for m in &report.missing {
            let files: Vec<String> = m.files.iter().map(|f| f.to_string()).collect();
            println!(
                "MISSING chunk {} referenced by {}",
                m.chunk,
                files.join(", ")
            );
        }
        println!(
            "gc: {} expired uploads, {} unreferenced chunks deleted, {} unknown blobs deleted, {} interrupted writes swept, {} missing chunks",
            report.expired_uploads.len(),
            report.deleted_unreferenced.len(),
            report.deleted_orphans.len(),
            report.swept_incomplete,
            report.missing.len()
        );
    }
    Ok(if report.missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn scrub(config: &Config, args: &ScrubArgs) -> Result<ExitCode> {
    let rate = args.rate.as_deref().map(parse_size).transpose()?;
    let vault = open_vault(config, Schema::Require).await?;
    let report = vault
        .scrub(&ScrubOptions {
            bytes_per_second: rate,
        })
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for f in &report.findings {
            let files: Vec<String> = f.files.iter().map(|f| f.to_string()).collect();
            println!(
                "{} chunk {} in files {}",
                f.problem.to_uppercase(),
                f.chunk,
                files.join(", ")
            );
        }
        println!(
            "scrub: {} chunks ({} bytes) checked, {} damaged",
            report.chunks_checked,
            report.bytes_checked,
            report.findings.len()
        );
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[derive(Args, Debug)]
pub struct RepairArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn print_repair(report: &chunkvault_core::RepairReport, json: bool, what: &str) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    for r in &report.restored {
        println!("restored chunk {} on {}", r.chunk, r.locations.join(", "));
    }
    for u in &report.unrestored {
        let files: Vec<String> = u.files.iter().map(|f| f.to_string()).collect();
        println!(
            "{} chunk {} (still missing on {}) in files {}",
            if u.lost { "LOST" } else { "NOT RESTORED" },
            u.chunk,
            u.locations.join(", "),
            files.join(", ")
        );
    }
    println!(
        "{what}: {} chunks checked, {} restored, {} still below policy",
        report.chunks_checked,
        report.restored.len(),
        report.unrestored.len()
    );
    Ok(())
}

/// Re-creates missing or corrupt copies of every committed chunk; exit 1 if some chunk is
/// still below its policy.
pub async fn repair(config: &Config, args: &RepairArgs) -> Result<ExitCode> {
    let vault = open_vault(config, Schema::Require).await?;
    let report = vault.repair().await?;
    print_repair(&report, args.json, "repair")?;
    Ok(if report.is_complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Moves every copy off one location; exit 1 if some copy could not be moved.
pub async fn drain(config: &Config, name: &str, json: bool) -> Result<ExitCode> {
    let vault = open_vault(config, Schema::Require).await?;
    let report = vault.drain(name).await?;
    print_repair(&report, json, &format!("drain of {name}"))?;
    if report.is_complete() {
        println!("location {name} holds no chunk now: remove it from the configuration");
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}
