//! `chunkvault serve`: wiring, background tasks, graceful shutdown.

use std::time::Duration;

use anyhow::{Context, Result};
use chunkvault_core::{GcOptions, Vault};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::wiring::{Schema, holder_name, open_vault};

pub async fn run(config: Config) -> Result<()> {
    let vault = open_vault(&config, Schema::Serve).await?;
    let listener = TcpListener::bind(config.listen).await.with_context(|| {
        format!(
            "cannot listen on {} (setting listen, CHUNKVAULT_LISTEN, --listen)",
            config.listen
        )
    })?;
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        metadata = %vault.meta().describe(),
        blobs = %vault.blobs().describe(),
        chunk_size = config.vault.chunk_size,
        auth = config.auth.as_str(),
        "chunkvault listening on http://{addr}"
    );
    match config.auth {
        chunkvault_http::AuthMode::Required => {
            tracing::info!("authentication required: requests need Authorization: Bearer <key>");
            if vault
                .meta()
                .list_accounts()
                .await
                .map(|a| a.is_empty())
                .unwrap_or(false)
            {
                tracing::warn!(
                    "no accounts exist yet: create one with `chunkvault admin create-user NAME --admin` and a key with `chunkvault admin create-key NAME`"
                );
            }
        }
        chunkvault_http::AuthMode::Off if addr.ip().is_loopback() => tracing::info!(
            "authentication off: listening on loopback only, every local request has full access"
        ),
        chunkvault_http::AuthMode::Off => tracing::warn!(
            "authentication OFF on a network address (allowed explicitly): anyone who can reach {addr} can read, overwrite and delete every file"
        ),
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let gc = tokio::spawn(gc_loop(vault.clone(), config.clone(), stop_rx.clone()));
    let repair = vault
        .replicas()
        .is_some()
        .then(|| tokio::spawn(repair_loop(vault.clone(), config.repair_interval, stop_rx)));
    let router = chunkvault_http::router_with(
        vault,
        chunkvault_http::AuthOptions {
            mode: config.auth,
            failures_per_minute: config.auth_failures_per_minute,
        },
    );
    chunkvault_http::serve(listener, router, shutdown_signal())
        .await
        .context("server failed")?;
    let _ = stop_tx.send(true);
    let _ = gc.await;
    if let Some(r) = repair {
        let _ = r.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

/// Runs GC every `gc_interval`: expires abandoned uploads and collects unreferenced chunks,
/// so nothing needs to be run by hand. Several nodes may run it; the lease picks one.
async fn gc_loop(vault: Vault, config: Config, mut stop: watch::Receiver<bool>) {
    let opts = GcOptions {
        grace: config.gc_grace,
        holder: holder_name(),
        lease_ttl: Duration::from_secs(300),
    };
    let mut tick = tokio::time::interval(config.gc_interval);
    tick.tick().await; // the first tick is immediate; wait a full interval first
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        match vault.gc(&opts).await {
            Ok(r) if r.skipped_lease_held => tracing::debug!("gc: another node holds the lease"),
            Ok(r) => tracing::info!(
                expired_uploads = r.expired_uploads.len(),
                deleted_unreferenced = r.deleted_unreferenced.len(),
                deleted_orphans = r.deleted_orphans.len(),
                missing = r.missing.len(),
                "gc finished"
            ),
            Err(e) => tracing::warn!(error = %e, "gc failed; retrying next interval"),
        }
    }
}

/// With several locations: every few seconds repairs the chunks reads and writes found below
/// policy, and every `interval` checks every chunk. While a location stays down the queued
/// chunks cannot be completed; the pause then doubles up to 5 minutes, so an outage does not
/// turn into reading every queued chunk every few seconds. Repairs are idempotent, so several
/// nodes may run this at once without a lease.
async fn repair_loop(vault: Vault, interval: Duration, mut stop: watch::Receiver<bool>) {
    const QUICK: Duration = Duration::from_secs(5);
    const SLOWEST: Duration = Duration::from_secs(300);
    let mut pause = QUICK;
    let mut last_full = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
        let full = last_full.elapsed() >= interval;
        let result = if full {
            last_full = tokio::time::Instant::now();
            vault.repair().await
        } else {
            vault.repair_queued().await
        };
        match result {
            Ok(r) => {
                pause = if r.is_complete() {
                    QUICK
                } else {
                    (pause * 2).min(SLOWEST)
                };
                if r.chunks_checked > 0 {
                    tracing::info!(
                        full,
                        checked = r.chunks_checked,
                        restored = r.restored.len(),
                        below_policy = r.unrestored.len(),
                        "repair finished"
                    );
                }
            }
            Err(e) => {
                pause = (pause * 2).min(SLOWEST);
                tracing::warn!(error = %e, "repair failed; retrying");
            }
        }
    }
}
