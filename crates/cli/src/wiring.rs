//! Opening the stores a configuration names, checking the schema, building the vault.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chunkvault_blob::{
    BlobConfig, BlobError, BlobStore, Location, ObjectStoreBlobs, ReplicatedBlobStore,
};
use chunkvault_core::Vault;
use chunkvault_meta::{
    MetaStore, PostgresMeta, PostgresOptions, SchemaStatus, SqliteMeta, SqliteOptions,
};

use crate::config::{Config, MetaConfig};

/// What to do about the schema when opening the metadata store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// Refuse anything but the current schema; migrate a new, empty SQLite database (or any
    /// database when `migrate` is configured).
    Serve,
    /// Apply pending migrations (the `migrate` command).
    Migrate,
    /// Refuse anything but the current schema.
    Require,
}

pub async fn open_meta(config: &Config, schema: Schema) -> Result<Arc<dyn MetaStore>> {
    let meta: Arc<dyn MetaStore> = match &config.meta {
        MetaConfig::Sqlite { path } => Arc::new(
            SqliteMeta::open(&SqliteOptions {
                path: path.clone(),
                fsync: config.fsync,
                read_connections: 8,
            })
            .await
            .with_context(|| {
                format!(
                    "cannot open the SQLite metadata database {}",
                    path.display()
                )
            })?,
        ),
        MetaConfig::Postgres { url } => Arc::new(
            PostgresMeta::open(&PostgresOptions {
                url: url.clone(),
                max_connections: config.db_max_connections,
                acquire_timeout: Duration::from_secs(5),
            })
            .await
            .with_context(|| {
                format!(
                    "cannot connect to the PostgreSQL metadata database {}",
                    crate::config::redact(url)
                )
            })?,
        ),
    };
    let status = meta
        .schema_status()
        .await
        .context("cannot read the metadata schema version")?;
    let sqlite = matches!(config.meta, MetaConfig::Sqlite { .. });
    let migrate = match schema {
        Schema::Migrate => true,
        Schema::Serve => (sqlite && status == SchemaStatus::Empty) || config.migrate,
        Schema::Require => false,
    };
    if migrate && matches!(status, SchemaStatus::Empty | SchemaStatus::Behind { .. }) {
        meta.migrate().await?;
        tracing::info!(store = %meta.describe(), "metadata schema migrated");
    } else if let Some(problem) = status.problem() {
        bail!("{problem} ({})", meta.describe());
    }
    Ok(meta)
}

/// The blob store, and when the configuration names several locations, the same store seen
/// through its location-aware API (for repair, drain and scrub).
pub async fn open_blob_stores(
    config: &Config,
) -> Result<(Arc<dyn BlobStore>, Option<ReplicatedBlobStore>)> {
    if config.locations.is_empty() {
        let store = open_one(&config.blob, &config.retry, "").await?;
        return Ok((Arc::new(store), None));
    }
    // A wrong URL or credential fails start-up here, naming the location, rather than at the
    // first write placed there. A location that merely does not answer is let through, as long
    // as `write_quorum` others do: restarting must not need every location up. Its reads and
    // writes fail over until it answers again, and repair fills it in.
    let opened = futures::future::join_all(config.locations.iter().map(|l| async move {
        let location = |store: ObjectStoreBlobs| Location {
            name: l.name.clone(),
            store: Arc::new(store),
            draining: l.draining,
        };
        match ObjectStoreBlobs::open(&l.blob, &config.retry).await {
            Ok(store) => Ok((true, location(store))),
            Err(e @ (BlobError::Unavailable { .. } | BlobError::ContainerMissing { .. })) => {
                tracing::warn!(location = %l.name, error = %e, "blob location does not answer at start-up; reads and writes fail over until it does");
                ObjectStoreBlobs::connect(&l.blob, &config.retry)
                    .map(|store| (false, location(store)))
                    .map_err(|e| location_error(&l.name, &e))
            }
            Err(e) => Err(location_error(&l.name, &e)),
        }
    }))
    .await;
    let opened = opened.into_iter().collect::<Result<Vec<_>>>()?;
    let answering = opened.iter().filter(|(ok, l)| *ok && !l.draining).count();
    if answering < config.policy.write_quorum {
        let down: Vec<&str> = opened
            .iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, l)| l.name.as_str())
            .collect();
        bail!(
            "only {answering} blob locations answer, write_quorum is {}; not answering: {}",
            config.policy.write_quorum,
            down.join(", ")
        );
    }
    let locations: Vec<Location> = opened.into_iter().map(|(_, l)| l).collect();
    let replicated = match config.erasure {
        Some((data, parity)) => {
            ReplicatedBlobStore::erasure(locations, data, parity, config.policy.write_quorum)
        }
        None => ReplicatedBlobStore::new(locations, config.policy),
    }
    .map_err(|e| anyhow::anyhow!("invalid setting locations: {e}"))?;
    Ok((Arc::new(replicated.clone()), Some(replicated)))
}

async fn open_one(
    blob: &BlobConfig,
    retry: &chunkvault_blob::RetryOptions,
    prefix: &str,
) -> Result<ObjectStoreBlobs> {
    let what = match blob {
        BlobConfig::Local { root, .. } => format!("the local blob directory {}", root.display()),
        other => format!("the blob store ({other:?})"),
    };
    ObjectStoreBlobs::open(blob, retry)
        .await
        .map_err(|e| anyhow::anyhow!("{prefix}cannot open {what}: {e}{}", source_text(&e)))
}

fn location_error(name: &str, e: &BlobError) -> anyhow::Error {
    anyhow::anyhow!(
        "invalid setting locations: location {name:?}: cannot open the blob store: {e}{}",
        source_text(e)
    )
}

fn source_text(e: &dyn std::error::Error) -> String {
    let mut out = String::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(&format!(": {s}"));
        cur = s.source();
    }
    out
}

pub async fn open_vault(config: &Config, schema: Schema) -> Result<Vault> {
    let meta = open_meta(config, schema).await?;
    let (blobs, replicas) = open_blob_stores(config).await?;
    Ok(match replicas {
        // Several locations: where each copy lives is recorded in the metadata.
        Some(r) => Vault::replicated(r, meta, config.vault.clone()),
        None => Vault::new(blobs, meta, config.vault.clone()),
    })
}

/// A name for this process in leases: host, pid and a random suffix.
pub fn holder_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!(
        "{host}:{}:{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}
