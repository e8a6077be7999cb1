//! Configuration: one struct, loaded from a TOML file, then environment variables, then
//! flags (each overriding the one before), validated at start-up with errors that name the
//! setting. Libraries never read the environment; only this module does (through clap).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use chunkvault_blob::{BlobConfig, RetryOptions};
use chunkvault_core::VaultConfig;
use clap::Args;
use serde::Deserialize;

/// Settings every command that opens the stores shares (serve, migrate, gc, scrub, config).
#[derive(Args, Debug, Clone, Default)]
pub struct StoreArgs {
    /// TOML configuration file; every setting below may be given there (see chunkvault.example.toml).
    #[arg(long, env = "CHUNKVAULT_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Directory for the embedded defaults (SQLite database and local blobs). Default ./data.
    #[arg(long, env = "CHUNKVAULT_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Metadata database: postgres://user:pass@host:port/db, or sqlite://PATH. Default: SQLite in the data dir.
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Blob store: file:///path, az://container, s3://bucket, gs://bucket, memory://. Default: file://DATA_DIR/blobs.
    #[arg(long, env = "CHUNKVAULT_BLOB_URL", global = true)]
    pub blob_url: Option<String>,
    /// Chunk size, e.g. 4MiB (1KiB to 64MiB).
    #[arg(long, env = "CHUNKVAULT_CHUNK_SIZE", global = true)]
    pub chunk_size: Option<String>,
    /// Make every chunk write and metadata commit durable on power loss before answering.
    #[arg(long, env = "CHUNKVAULT_FSYNC", global = true)]
    pub fsync: Option<bool>,
    /// How long an unfinished upload lives before it expires, e.g. 24h.
    #[arg(long, env = "CHUNKVAULT_UPLOAD_TTL", global = true)]
    pub upload_ttl: Option<String>,
    /// PostgreSQL connections per node.
    #[arg(long, env = "CHUNKVAULT_DB_MAX_CONNECTIONS", global = true)]
    pub db_max_connections: Option<u32>,
    /// Several blob locations instead of blob_url: NAME=URL,NAME=URL (Azure ones use the [azure]
    /// credentials; per-location credentials need the file's [[locations]]).
    #[arg(long, env = "CHUNKVAULT_LOCATIONS", global = true)]
    pub locations: Option<String>,
    /// Copies of each chunk, on that many distinct locations (needs locations).
    #[arg(long, env = "CHUNKVAULT_REPLICAS", global = true)]
    pub replicas: Option<usize>,
    /// Copies that must be durable before a chunk write succeeds (1 to replicas).
    #[arg(long, env = "CHUNKVAULT_WRITE_QUORUM", global = true)]
    pub write_quorum: Option<usize>,
    /// Erasure coding instead of copies: DATA+PARITY shards, e.g. 4+2 (needs that many locations).
    #[arg(long, env = "CHUNKVAULT_ERASURE", global = true)]
    pub erasure: Option<String>,

    // The original service's variables.
    #[arg(long, env = "DB_HOST", global = true, hide = true)]
    pub db_host: Option<String>,
    #[arg(long, env = "DB_PORT", global = true, hide = true)]
    pub db_port: Option<String>,
    #[arg(long, env = "DB_USER", global = true, hide = true)]
    pub db_user: Option<String>,
    #[arg(
        long,
        env = "DB_PASSWORD",
        global = true,
        hide = true,
        hide_env_values = true
    )]
    pub db_password: Option<String>,
    #[arg(long, env = "DB_NAME", global = true, hide = true)]
    pub db_name: Option<String>,
    #[arg(long, env = "AZURE_STORAGE_ACCOUNT_NAME", global = true, hide = true)]
    pub azure_account: Option<String>,
    #[arg(
        long,
        env = "AZURE_STORAGE_ACCOUNT_KEY",
        global = true,
        hide = true,
        hide_env_values = true
    )]
    pub azure_key: Option<String>,
    #[arg(long, env = "AZURE_CONTAINER_NAME", global = true, hide = true)]
    pub azure_container: Option<String>,
    /// Azure endpoint override, e.g. http://127.0.0.1:10000/devstoreaccount1 for Azurite.
    #[arg(long, env = "AZURE_STORAGE_ENDPOINT", global = true, hide = true)]
    pub azure_endpoint: Option<String>,
}

/// Settings of `serve` only.
#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// Address to listen on. Default 127.0.0.1:3000.
    #[arg(long, env = "CHUNKVAULT_LISTEN")]
    pub listen: Option<String>,
    /// How often the server runs garbage collection (expired uploads, unreferenced chunks), e.g. 10m.
    #[arg(long, env = "CHUNKVAULT_GC_INTERVAL")]
    pub gc_interval: Option<String>,
    /// Unreferenced chunks and unknown blobs younger than this are kept, e.g. 1h.
    #[arg(long, env = "CHUNKVAULT_GC_GRACE")]
    pub gc_grace: Option<String>,
    /// Chunks a download fetches and verifies ahead of the one being sent (1 to 16).
    #[arg(long, env = "CHUNKVAULT_READ_AHEAD")]
    pub read_ahead: Option<usize>,
    /// Files uploaded whole up to this size are kept in the metadata database instead of as a
    /// chunk blob, e.g. 16KiB (the default); 0 keeps every file in blobs. At most 1MiB.
    #[arg(long, env = "CHUNKVAULT_INLINE_MAX")]
    pub inline_max: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "CHUNKVAULT_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Apply pending migrations at start-up (SQLite databases that are new are always migrated).
    #[arg(long, env = "CHUNKVAULT_MIGRATE")]
    pub migrate: Option<bool>,
    /// With several locations: how often the server checks every chunk's copies and repairs
    /// them, e.g. 24h (chunks seen below policy on reads and writes are repaired within seconds).
    #[arg(long, env = "CHUNKVAULT_REPAIR_INTERVAL")]
    pub repair_interval: Option<String>,
    /// API keys: required or off. Default: off when listening on loopback only, else required.
    #[arg(long, env = "CHUNKVAULT_AUTH")]
    pub auth: Option<String>,
    /// Allow `auth = off` on an address other than loopback (anyone who can reach it can read,
    /// overwrite and delete everything).
    #[arg(
        long,
        env = "CHUNKVAULT_ALLOW_UNAUTHENTICATED_NETWORK",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub allow_unauthenticated_network: Option<bool>,
    /// Uploads one account may have in progress at once on this node.
    #[arg(long, env = "CHUNKVAULT_MAX_UPLOADS_PER_ACCOUNT")]
    pub max_uploads_per_account: Option<usize>,
    /// Failed authentications one client address may make per minute before 429.
    #[arg(long, env = "CHUNKVAULT_AUTH_FAILURES_PER_MINUTE")]
    pub auth_failures_per_minute: Option<u32>,
}

/// The TOML file: the same settings, snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub blob_url: Option<String>,
    pub chunk_size: Option<String>,
    pub fsync: Option<bool>,
    pub upload_ttl: Option<String>,
    pub db_max_connections: Option<u32>,
    pub gc_interval: Option<String>,
    pub gc_grace: Option<String>,
    pub read_ahead: Option<usize>,
    pub inline_max: Option<String>,
    pub log_format: Option<String>,
    pub migrate: Option<bool>,
    pub azure: Option<AzureFileSettings>,
    pub locations: Option<Vec<LocationFileSettings>>,
    pub replicas: Option<usize>,
    pub write_quorum: Option<usize>,
    pub erasure: Option<ErasureFileSettings>,
    pub repair_interval: Option<String>,
    pub auth: Option<String>,
    pub allow_unauthenticated_network: Option<bool>,
    pub max_uploads_per_account: Option<usize>,
    pub auth_failures_per_minute: Option<u32>,
}

/// `erasure = { data = 4, parity = 2 }`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureFileSettings {
    pub data: usize,
    pub parity: usize,
}

/// One `[[locations]]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationFileSettings {
    pub name: Option<String>,
    pub url: Option<String>,
    /// Excluded from placement: still read, no new copies (before `location drain`).
    pub draining: Option<bool>,
    /// Credentials and endpoint of this location; unset keys fall back to the global [azure].
    pub azure: Option<AzureFileSettings>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureFileSettings {
    pub account: Option<String>,
    pub key: Option<String>,
    pub container: Option<String>,
    pub endpoint: Option<String>,
}

#[derive(Debug, Clone)]
pub enum MetaConfig {
    Sqlite { path: PathBuf },
    Postgres { url: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// One named blob location of a replicated deployment.
#[derive(Debug, Clone)]
pub struct LocationConfig {
    pub name: String,
    pub blob: BlobConfig,
    pub draining: bool,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub meta: MetaConfig,
    /// The single blob store; unused when `locations` is not empty.
    pub blob: BlobConfig,
    /// Several locations with a placement policy; empty: the single `blob` store.
    pub locations: Vec<LocationConfig>,
    pub policy: chunkvault_blob::Policy,
    /// Erasure coding `(data, parity)` instead of copies; `policy.replicas` is then their sum.
    pub erasure: Option<(usize, usize)>,
    pub repair_interval: Duration,
    pub retry: RetryOptions,
    pub vault: VaultConfig,
    pub fsync: bool,
    pub db_max_connections: u32,
    pub gc_interval: Duration,
    pub gc_grace: Duration,
    pub log_format: LogFormat,
    pub migrate: bool,
    /// Whether requests need an API key.
    pub auth: chunkvault_http::AuthMode,
    pub auth_failures_per_minute: u32,
}

fn pick<T>(flag: Option<T>, file: Option<T>) -> Option<T> {
    flag.or(file)
}

fn setting_error(name: &str, env: &str, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!(
        "invalid setting {name} (config file key `{name}`, environment {env}, flag --{}): {e}",
        name.replace('_', "-")
    )
}

impl Config {
    pub fn load(store: &StoreArgs, serve: &ServeArgs) -> Result<Self> {
        let file = match &store.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("cannot read the configuration file {}", path.display())
                })?;
                toml::from_str::<FileSettings>(&text)
                    .map_err(|e| anyhow!("invalid configuration file {}: {e}", path.display()))?
            }
            None => FileSettings::default(),
        };
        let azure_file = file.azure.unwrap_or_default();
        let azure_file_copy = azure_file.clone();

        let listen_raw =
            pick(serve.listen.clone(), file.listen).unwrap_or_else(|| "127.0.0.1:3000".into());
        let listen: SocketAddr = listen_raw.parse().map_err(|e| {
            setting_error(
                "listen",
                "CHUNKVAULT_LISTEN",
                format!("{listen_raw:?} is not an address:port ({e})"),
            )
        })?;
        let data_dir =
            pick(store.data_dir.clone(), file.data_dir).unwrap_or_else(|| PathBuf::from("data"));
        if data_dir.as_os_str().is_empty() {
            return Err(setting_error(
                "data_dir",
                "CHUNKVAULT_DATA_DIR",
                "must not be empty",
            ));
        }
        let fsync = pick(store.fsync, file.fsync).unwrap_or(false);

        let database_url =
            pick(store.database_url.clone(), file.database_url).or_else(|| compose_db_url(store));
        let meta = match database_url {
            None => MetaConfig::Sqlite {
                path: data_dir.join("meta.db"),
            },
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                MetaConfig::Postgres { url }
            }
            Some(url) if url.starts_with("sqlite:") => {
                let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
                if path.is_empty() {
                    return Err(setting_error(
                        "database_url",
                        "DATABASE_URL",
                        "sqlite:// needs a file path",
                    ));
                }
                MetaConfig::Sqlite {
                    path: PathBuf::from(path),
                }
            }
            Some(url) => {
                return Err(setting_error(
                    "database_url",
                    "DATABASE_URL",
                    format!(
                        "{:?} is neither postgres://... nor sqlite://...",
                        redact(&url)
                    ),
                ));
            }
        };

        let azure = AzureParts {
            account: pick(store.azure_account.clone(), azure_file.account),
            key: pick(store.azure_key.clone(), azure_file.key),
            container: pick(store.azure_container.clone(), azure_file.container),
            endpoint: pick(store.azure_endpoint.clone(), azure_file.endpoint),
        };
        let explicit_blob_url = store.blob_url.is_some() || file.blob_url.is_some();
        let (locations, policy, erasure) = load_locations(
            store,
            file.locations,
            file.replicas,
            file.write_quorum,
            file.erasure,
            explicit_blob_url,
            fsync,
            &azure,
            &azure_file_copy,
        )?;
        let blob_url = pick(store.blob_url.clone(), file.blob_url)
            .or_else(|| azure.container.as_ref().map(|c| format!("az://{c}")));
        let blob = match blob_url {
            None => BlobConfig::Local {
                root: data_dir.join("blobs"),
                fsync,
            },
            Some(url) => parse_blob_url(&url, fsync, &azure)?,
        };

        let chunk_size = match pick(store.chunk_size.clone(), file.chunk_size) {
            None => VaultConfig::default().chunk_size,
            Some(s) => {
                let n = parse_size(&s)
                    .map_err(|e| setting_error("chunk_size", "CHUNKVAULT_CHUNK_SIZE", e))?;
                let n = usize::try_from(n).map_err(|_| {
                    setting_error("chunk_size", "CHUNKVAULT_CHUNK_SIZE", "too large")
                })?;
                if !VaultConfig::CHUNK_SIZE_RANGE.contains(&n) {
                    return Err(setting_error(
                        "chunk_size",
                        "CHUNKVAULT_CHUNK_SIZE",
                        "must be from 1KiB to 64MiB",
                    ));
                }
                n
            }
        };
        let duration =
            |name: &str, env: &str, v: Option<String>, default: Duration| -> Result<Duration> {
                match v {
                    None => Ok(default),
                    Some(s) => humantime::parse_duration(s.trim())
                        .map_err(|e| setting_error(name, env, format!("{s:?}: {e}"))),
                }
            };
        let upload_ttl = duration(
            "upload_ttl",
            "CHUNKVAULT_UPLOAD_TTL",
            pick(store.upload_ttl.clone(), file.upload_ttl),
            Duration::from_secs(24 * 3600),
        )?;
        if upload_ttl.is_zero() {
            return Err(setting_error(
                "upload_ttl",
                "CHUNKVAULT_UPLOAD_TTL",
                "must be positive",
            ));
        }
        let gc_interval = duration(
            "gc_interval",
            "CHUNKVAULT_GC_INTERVAL",
            pick(serve.gc_interval.clone(), file.gc_interval),
            Duration::from_secs(600),
        )?;
        let gc_grace = duration(
            "gc_grace",
            "CHUNKVAULT_GC_GRACE",
            pick(serve.gc_grace.clone(), file.gc_grace),
            Duration::from_secs(3600),
        )?;
        let repair_interval = duration(
            "repair_interval",
            "CHUNKVAULT_REPAIR_INTERVAL",
            pick(serve.repair_interval.clone(), file.repair_interval),
            Duration::from_secs(24 * 3600),
        )?;
        if repair_interval.is_zero() {
            return Err(setting_error(
                "repair_interval",
                "CHUNKVAULT_REPAIR_INTERVAL",
                "must be positive",
            ));
        }
        let log_format = match pick(serve.log_format.clone(), file.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(setting_error(
                    "log_format",
                    "CHUNKVAULT_LOG_FORMAT",
                    format!("{other:?}: use text or json"),
                ));
            }
        };
        let inline_max = match pick(serve.inline_max.clone(), file.inline_max) {
            None => VaultConfig::DEFAULT_INLINE_MAX,
            Some(s) => parse_size(&s)
                .map_err(|e| setting_error("inline_max", "CHUNKVAULT_INLINE_MAX", e))
                .and_then(|n| {
                    usize::try_from(n)
                        .ok()
                        .filter(|n| *n <= VaultConfig::INLINE_MAX_LIMIT)
                        .ok_or_else(|| {
                            setting_error(
                                "inline_max",
                                "CHUNKVAULT_INLINE_MAX",
                                "must be at most 1MiB",
                            )
                        })
                })?,
        };
        let read_ahead =
            pick(serve.read_ahead, file.read_ahead).unwrap_or(VaultConfig::default().read_ahead);
        if !(1..=16).contains(&read_ahead) {
            return Err(setting_error(
                "read_ahead",
                "CHUNKVAULT_READ_AHEAD",
                "must be from 1 to 16",
            ));
        }
        let db_max_connections =
            pick(store.db_max_connections, file.db_max_connections).unwrap_or(16);
        if db_max_connections == 0 {
            return Err(setting_error(
                "db_max_connections",
                "CHUNKVAULT_DB_MAX_CONNECTIONS",
                "must be at least 1",
            ));
        }
        let auth = match pick(serve.auth.clone(), file.auth)
            .as_deref()
            .map(str::trim)
        {
            None => {
                if listen.ip().is_loopback() {
                    chunkvault_http::AuthMode::Off
                } else {
                    chunkvault_http::AuthMode::Required
                }
            }
            Some("required") => chunkvault_http::AuthMode::Required,
            Some("off") => chunkvault_http::AuthMode::Off,
            Some(other) => {
                return Err(setting_error(
                    "auth",
                    "CHUNKVAULT_AUTH",
                    format!("{other:?}: use required or off"),
                ));
            }
        };
        let allow_open = pick(
            serve.allow_unauthenticated_network,
            file.allow_unauthenticated_network,
        )
        .unwrap_or(false);
        if auth == chunkvault_http::AuthMode::Off && !listen.ip().is_loopback() && !allow_open {
            return Err(setting_error(
                "auth",
                "CHUNKVAULT_AUTH",
                format!(
                    "off on {listen}, which is not a loopback address, would let anyone who can \
                     reach it read, overwrite and delete every file; use auth = required, or \
                     say so explicitly with --allow-unauthenticated-network \
                     (allow_unauthenticated_network = true, CHUNKVAULT_ALLOW_UNAUTHENTICATED_NETWORK)"
                ),
            ));
        }
        let max_uploads_per_account =
            pick(serve.max_uploads_per_account, file.max_uploads_per_account)
                .unwrap_or(VaultConfig::default().max_uploads_per_account);
        if max_uploads_per_account == 0 {
            return Err(setting_error(
                "max_uploads_per_account",
                "CHUNKVAULT_MAX_UPLOADS_PER_ACCOUNT",
                "must be at least 1",
            ));
        }
        let auth_failures_per_minute = pick(
            serve.auth_failures_per_minute,
            file.auth_failures_per_minute,
        )
        .unwrap_or(30);
        if auth_failures_per_minute == 0 {
            return Err(setting_error(
                "auth_failures_per_minute",
                "CHUNKVAULT_AUTH_FAILURES_PER_MINUTE",
                "must be at least 1",
            ));
        }
        Ok(Self {
            auth,
            auth_failures_per_minute,
            listen,
            data_dir,
            meta,
            blob,
            locations,
            policy,
            erasure,
            repair_interval,
            retry: RetryOptions::default(),
            vault: VaultConfig {
                chunk_size,
                upload_ttl,
                read_ahead,
                max_uploads_per_account,
                inline_max,
                ..VaultConfig::default()
            },
            fsync,
            db_max_connections,
            gc_interval,
            gc_grace,
            log_format,
            migrate: pick(serve.migrate, file.migrate).unwrap_or(false),
        })
    }

    /// One line per setting, secrets hidden: what `config check` prints and `serve` logs.
    pub fn summary(&self) -> Vec<String> {
        let meta = match &self.meta {
            MetaConfig::Sqlite { path } => format!("sqlite {}", path.display()),
            MetaConfig::Postgres { url } => redact(url),
        };
        vec![
            format!("listen = {}", self.listen),
            format!("data_dir = {}", self.data_dir.display()),
            format!("metadata = {meta}"),
            if self.locations.is_empty() {
                format!("blobs = {}", describe_blob(&self.blob))
            } else {
                let locs: Vec<String> = self
                    .locations
                    .iter()
                    .map(|l| {
                        format!(
                            "{}{} = {}",
                            l.name,
                            if l.draining { " (draining)" } else { "" },
                            describe_blob(&l.blob)
                        )
                    })
                    .collect();
                let layout = match self.erasure {
                    Some((d, p)) => format!("erasure {d}+{p}"),
                    None => format!("replicas {}", self.policy.replicas),
                };
                format!(
                    "blobs = {layout}, write_quorum {} over [{}]",
                    self.policy.write_quorum,
                    locs.join(", ")
                )
            },
            format!("chunk_size = {}", self.vault.chunk_size),
            format!("fsync = {}", self.fsync),
            format!(
                "upload_ttl = {}",
                humantime::format_duration(self.vault.upload_ttl)
            ),
            format!(
                "gc_interval = {}",
                humantime::format_duration(self.gc_interval)
            ),
            format!("gc_grace = {}", humantime::format_duration(self.gc_grace)),
            format!("read_ahead = {}", self.vault.read_ahead),
            format!("inline_max = {}", self.vault.inline_max),
            format!("auth = {}", self.auth.as_str()),
            format!(
                "max_uploads_per_account = {}",
                self.vault.max_uploads_per_account
            ),
            format!(
                "auth_failures_per_minute = {}",
                self.auth_failures_per_minute
            ),
        ]
    }
}

/// The locations, the policy, and the erasure layout `(data, parity)` if any.
type LoadedLocations = (
    Vec<LocationConfig>,
    chunkvault_blob::Policy,
    Option<(usize, usize)>,
);

/// Reads `[[locations]]` (or `CHUNKVAULT_LOCATIONS`) and the placement policy; validates names,
/// URLs and `1 <= write_quorum <= replicas <= locations`.
#[allow(clippy::too_many_arguments)]
fn load_locations(
    store: &StoreArgs,
    file_locations: Option<Vec<LocationFileSettings>>,
    file_replicas: Option<usize>,
    file_write_quorum: Option<usize>,
    file_erasure: Option<ErasureFileSettings>,
    explicit_blob_url: bool,
    fsync: bool,
    azure: &AzureParts,
    azure_file: &AzureFileSettings,
) -> Result<LoadedLocations> {
    let loc_err = |e: String| setting_error("locations", "CHUNKVAULT_LOCATIONS", e);
    // (name, url, draining, per-location azure settings)
    let raw: Vec<(String, String, bool, AzureFileSettings)> = match &store.locations {
        Some(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|item| {
                let (name, url) = item.trim().split_once('=').ok_or_else(|| {
                    loc_err(format!("{item:?} is not NAME=URL (e.g. east=az://chunks)"))
                })?;
                Ok((
                    name.trim().to_string(),
                    url.trim().to_string(),
                    false,
                    AzureFileSettings::default(),
                ))
            })
            .collect::<Result<_>>()?,
        _ => file_locations
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                let name = l.name.ok_or_else(|| {
                    loc_err(format!("[[locations]] number {} has no name", i + 1))
                })?;
                let url = l
                    .url
                    .ok_or_else(|| loc_err(format!("location {name:?} has no url")))?;
                Ok((
                    name,
                    url,
                    l.draining.unwrap_or(false),
                    l.azure.unwrap_or_default(),
                ))
            })
            .collect::<Result<_>>()?,
    };
    let replicas = pick(store.replicas, file_replicas);
    let write_quorum = pick(store.write_quorum, file_write_quorum);
    let ec_err = |e: String| setting_error("erasure", "CHUNKVAULT_ERASURE", e);
    let erasure = match (&store.erasure, file_erasure) {
        (Some(text), _) => {
            let parsed = text.split_once('+').and_then(|(d, p)| {
                Some((
                    d.trim().parse::<usize>().ok()?,
                    p.trim().parse::<usize>().ok()?,
                ))
            });
            Some(parsed.ok_or_else(|| ec_err(format!("{text:?} is not DATA+PARITY, e.g. 4+2")))?)
        }
        (None, Some(e)) => Some((e.data, e.parity)),
        (None, None) => None,
    };
    if raw.is_empty() && erasure.is_some() {
        return Err(ec_err(
            "needs several locations ([[locations]] or CHUNKVAULT_LOCATIONS)".into(),
        ));
    }
    if raw.is_empty() {
        if replicas.is_some_and(|r| r != 1) {
            return Err(setting_error(
                "replicas",
                "CHUNKVAULT_REPLICAS",
                "more than one copy needs several locations ([[locations]] or CHUNKVAULT_LOCATIONS)",
            ));
        }
        if write_quorum.is_some_and(|w| w != 1) {
            return Err(setting_error(
                "write_quorum",
                "CHUNKVAULT_WRITE_QUORUM",
                "needs several locations ([[locations]] or CHUNKVAULT_LOCATIONS)",
            ));
        }
        return Ok((
            Vec::new(),
            chunkvault_blob::Policy {
                replicas: 1,
                write_quorum: 1,
            },
            None,
        ));
    }
    if explicit_blob_url {
        return Err(loc_err(
            "set either blob_url (one store) or locations (several), not both".into(),
        ));
    }
    let mut locations = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (name, url, draining, az) in raw {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(loc_err(format!(
                "location name {name:?} must be 1 to 64 letters, digits, '-' or '_'"
            )));
        }
        if !names.insert(name.clone()) {
            return Err(loc_err(format!("location name {name:?} is used twice")));
        }
        let parts = AzureParts {
            account: az.account.or_else(|| azure.account.clone()),
            key: az.key.or_else(|| azure.key.clone()),
            container: None,
            endpoint: az
                .endpoint
                .or_else(|| azure.endpoint.clone())
                .or_else(|| azure_file.endpoint.clone()),
        };
        let blob = parse_blob_url(&url, fsync, &parts)
            .map_err(|e| loc_err(format!("location {name:?}: {e}")))?;
        locations.push(LocationConfig {
            name,
            blob,
            draining,
        });
    }
    let writable = locations.iter().filter(|l| !l.draining).count();
    if let Some((data, parity)) = erasure {
        if replicas.is_some() {
            return Err(ec_err(
                "set either replicas (copies) or erasure (shards), not both".into(),
            ));
        }
        if data == 0 || parity == 0 || data + parity > writable.min(255) {
            return Err(ec_err(format!(
                "{data}+{parity}: needs at least 1 data and 1 parity shard, and data + parity \
                 locations not draining (there are {writable})"
            )));
        }
        let write_quorum = write_quorum.unwrap_or(data + parity);
        if write_quorum < data || write_quorum > data + parity {
            return Err(setting_error(
                "write_quorum",
                "CHUNKVAULT_WRITE_QUORUM",
                format!(
                    "{write_quorum}: with erasure {data}+{parity} must be from {data} to {}",
                    data + parity
                ),
            ));
        }
        return Ok((
            locations,
            chunkvault_blob::Policy {
                replicas: data + parity,
                write_quorum,
            },
            Some((data, parity)),
        ));
    }
    let replicas = replicas.unwrap_or(writable.min(2));
    if replicas == 0 || replicas > writable {
        return Err(setting_error(
            "replicas",
            "CHUNKVAULT_REPLICAS",
            format!(
                "{replicas}: must be from 1 to the number of locations not draining ({writable})"
            ),
        ));
    }
    let write_quorum = write_quorum.unwrap_or(replicas);
    if write_quorum == 0 || write_quorum > replicas {
        return Err(setting_error(
            "write_quorum",
            "CHUNKVAULT_WRITE_QUORUM",
            format!("{write_quorum}: must be from 1 to replicas ({replicas})"),
        ));
    }
    Ok((
        locations,
        chunkvault_blob::Policy {
            replicas,
            write_quorum,
        },
        None,
    ))
}

struct AzureParts {
    account: Option<String>,
    key: Option<String>,
    container: Option<String>,
    endpoint: Option<String>,
}

fn compose_db_url(s: &StoreArgs) -> Option<String> {
    let host = s.db_host.clone()?;
    let enc = |v: &str| {
        percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let user = s.db_user.clone().unwrap_or_else(|| "postgres".into());
    let auth = match &s.db_password {
        Some(p) => format!("{}:{}", enc(&user), enc(p)),
        None => enc(&user),
    };
    let port = s.db_port.clone().unwrap_or_else(|| "5432".into());
    let name = s.db_name.clone().unwrap_or_else(|| "postgres".into());
    Some(format!("postgres://{auth}@{host}:{port}/{}", enc(&name)))
}

/// Hides the password of a URL.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

fn describe_blob(b: &BlobConfig) -> String {
    match b {
        BlobConfig::Local { root, .. } => format!("file://{}", root.display()),
        BlobConfig::Memory => "memory://".into(),
        #[cfg(feature = "azure")]
        BlobConfig::Azure(az) => format!(
            "az://{} (account {}, endpoint {})",
            az.container,
            az.account,
            az.endpoint.as_deref().unwrap_or("default")
        ),
        #[allow(unreachable_patterns)]
        other => format!("{other:?}"),
    }
}

fn parse_blob_url(url: &str, fsync: bool, azure: &AzureParts) -> Result<BlobConfig> {
    let err = |e: String| setting_error("blob_url", "CHUNKVAULT_BLOB_URL", e);
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| err(format!("{url:?} has no scheme://")))?;
    match scheme {
        "file" => {
            if rest.is_empty() {
                return Err(err("file:// needs a directory".into()));
            }
            Ok(BlobConfig::Local {
                root: Path::new(rest).to_path_buf(),
                fsync,
            })
        }
        "memory" => Ok(BlobConfig::Memory),
        "az" | "azure" => {
            #[cfg(feature = "azure")]
            {
                let container = rest.trim_end_matches('/');
                let account = azure.account.clone().ok_or_else(|| {
                    err("az:// needs AZURE_STORAGE_ACCOUNT_NAME (or [azure] account)".into())
                })?;
                let access_key = azure.key.clone().ok_or_else(|| {
                    err("az:// needs AZURE_STORAGE_ACCOUNT_KEY (or [azure] key)".into())
                })?;
                Ok(BlobConfig::Azure(chunkvault_blob::AzureConfig {
                    account,
                    access_key,
                    container: container.to_string(),
                    endpoint: azure.endpoint.clone(),
                }))
            }
            #[cfg(not(feature = "azure"))]
            {
                let _ = azure;
                Err(err(
                    "this build has no Azure support (cargo feature `azure`)".into(),
                ))
            }
        }
        "s3" => {
            #[cfg(feature = "aws")]
            {
                Ok(BlobConfig::S3 {
                    bucket: rest.trim_end_matches('/').to_string(),
                })
            }
            #[cfg(not(feature = "aws"))]
            Err(err(
                "this build has no S3 support (cargo feature `aws`)".into()
            ))
        }
        "gs" => {
            #[cfg(feature = "gcp")]
            {
                Ok(BlobConfig::Gcs {
                    bucket: rest.trim_end_matches('/').to_string(),
                })
            }
            #[cfg(not(feature = "gcp"))]
            Err(err(
                "this build has no GCS support (cargo feature `gcp`)".into()
            ))
        }
        other => Err(err(format!(
            "unknown scheme {other:?}: use file, az, s3, gs or memory"
        ))),
    }
}

/// Parses `4MiB`, `4M`, `512k`, `1GiB`, `4096`.
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow!("{s:?} is not a size such as 4MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => bail!("{s:?}: unknown unit (use KiB, MiB, GiB)"),
    };
    n.checked_mul(mult)
        .ok_or_else(|| anyhow!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4MiB").unwrap(), 4 << 20);
        assert_eq!(parse_size("4m").unwrap(), 4 << 20);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size(" 1 GiB ").unwrap(), 1 << 30);
        assert!(parse_size("x").is_err());
        assert!(parse_size("4XB").is_err());
        assert!(parse_size("99999999999999999999T").is_err());
    }

    #[test]
    fn defaults_are_the_embedded_ones() {
        let c = Config::load(&StoreArgs::default(), &ServeArgs::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:3000");
        assert!(
            matches!(c.meta, MetaConfig::Sqlite { ref path } if path == Path::new("data/meta.db"))
        );
        assert!(
            matches!(c.blob, BlobConfig::Local { ref root, .. } if root == Path::new("data/blobs"))
        );
        assert_eq!(c.vault.chunk_size, 4 << 20);
    }

    #[test]
    fn original_variables_compose_the_backends() {
        let s = StoreArgs {
            db_host: Some("db".into()),
            db_user: Some("u".into()),
            db_password: Some("p@ss/w".into()),
            db_name: Some("files".into()),
            azure_account: Some("acct".into()),
            azure_key: Some("a2V5".into()),
            azure_container: Some("chunks".into()),
            ..Default::default()
        };
        let c = Config::load(&s, &ServeArgs::default()).unwrap();
        assert!(
            matches!(c.meta, MetaConfig::Postgres { ref url } if url == "postgres://u:p%40ss%2Fw@db:5432/files")
        );
        assert!(
            matches!(c.blob, BlobConfig::Azure(ref a) if a.container == "chunks" && a.account == "acct")
        );
        assert!(
            !c.summary().join("\n").contains("p%40ss"),
            "the password is never printed"
        );
    }

    #[test]
    fn bad_settings_name_the_setting() {
        let bad = |s: StoreArgs, v: ServeArgs, name: &str| {
            let e = Config::load(&s, &v).unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
        };
        bad(
            StoreArgs {
                chunk_size: Some("1".into()),
                ..Default::default()
            },
            ServeArgs::default(),
            "chunk_size",
        );
        bad(
            StoreArgs {
                chunk_size: Some("lots".into()),
                ..Default::default()
            },
            ServeArgs::default(),
            "chunk_size",
        );
        bad(
            StoreArgs::default(),
            ServeArgs {
                listen: Some("nowhere".into()),
                ..Default::default()
            },
            "listen",
        );
        bad(
            StoreArgs {
                database_url: Some("mysql://x".into()),
                ..Default::default()
            },
            ServeArgs::default(),
            "database_url",
        );
        bad(
            StoreArgs {
                blob_url: Some("ftp://x".into()),
                ..Default::default()
            },
            ServeArgs::default(),
            "blob_url",
        );
        bad(
            StoreArgs {
                blob_url: Some("az://c".into()),
                ..Default::default()
            },
            ServeArgs::default(),
            "AZURE_STORAGE_ACCOUNT_NAME",
        );
        bad(
            StoreArgs {
                upload_ttl: Some("soon".into()),
                ..Default::default()
            },
            ServeArgs::default(),
            "upload_ttl",
        );
        bad(
            StoreArgs::default(),
            ServeArgs {
                log_format: Some("xml".into()),
                ..Default::default()
            },
            "log_format",
        );
    }

    #[test]
    fn locations_load_from_the_file_and_the_environment_form() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            r#"
replicas = 2
write_quorum = 1
[azure]
account = "global"
key = "a2V5"
[[locations]]
name = "east"
url = "az://chunks-east"
[[locations]]
name = "west"
url = "az://chunks-west"
azure = { account = "other", key = "b3RoZXI=", endpoint = "http://127.0.0.1:10001/other" }
[[locations]]
name = "disk"
url = "file:///srv/chunks"
draining = true
"#,
        )
        .unwrap();
        let s = StoreArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let c = Config::load(&s, &ServeArgs::default()).unwrap();
        assert_eq!(c.locations.len(), 3);
        assert_eq!((c.policy.replicas, c.policy.write_quorum), (2, 1));
        assert!(
            matches!(&c.locations[0].blob, BlobConfig::Azure(a) if a.account == "global" && a.container == "chunks-east")
        );
        assert!(
            matches!(&c.locations[1].blob, BlobConfig::Azure(a) if a.account == "other" && a.endpoint.as_deref() == Some("http://127.0.0.1:10001/other"))
        );
        assert!(c.locations[2].draining);
        let summary = c.summary().join("\n");
        assert!(summary.contains("west = az://chunks-west"), "{summary}");
        assert!(!summary.contains("b3RoZXI="), "keys are never printed");

        // The environment form; replicas default to 2, the quorum to all of them.
        let s = StoreArgs {
            locations: Some("a=file:///x, b=file:///y,c=memory://".into()),
            ..Default::default()
        };
        let c = Config::load(&s, &ServeArgs::default()).unwrap();
        assert_eq!(c.locations.len(), 3);
        assert_eq!((c.policy.replicas, c.policy.write_quorum), (2, 2));

        let bad = |s: StoreArgs, word: &str| {
            let e = Config::load(&s, &ServeArgs::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(word), "{e}");
        };
        let with = |l: &str| StoreArgs {
            locations: Some(l.into()),
            ..Default::default()
        };
        bad(with("a=file:///x,a=file:///y"), "used twice");
        bad(with("a=file:///x,b"), "NAME=URL");
        bad(with("a b=file:///x"), "location name");
        bad(with("a=ftp://x"), "location \"a\"");
        bad(
            StoreArgs {
                replicas: Some(3),
                ..with("a=file:///x,b=file:///y")
            },
            "replicas",
        );
        bad(
            StoreArgs {
                write_quorum: Some(3),
                ..with("a=file:///x,b=file:///y")
            },
            "write_quorum",
        );
        bad(
            StoreArgs {
                blob_url: Some("file:///z".into()),
                ..with("a=file:///x,b=file:///y")
            },
            "not both",
        );
        bad(
            StoreArgs {
                replicas: Some(2),
                ..Default::default()
            },
            "replicas",
        );
        bad(
            StoreArgs {
                erasure: Some("2+2".into()),
                ..with("a=file:///x,b=file:///y,c=file:///z")
            },
            "erasure",
        );
        bad(
            StoreArgs {
                erasure: Some("two".into()),
                ..with("a=file:///x,b=file:///y,c=file:///z")
            },
            "DATA+PARITY",
        );
        bad(
            StoreArgs {
                erasure: Some("2+1".into()),
                write_quorum: Some(1),
                ..with("a=file:///x,b=file:///y,c=file:///z")
            },
            "write_quorum",
        );
        let c = Config::load(
            &StoreArgs {
                erasure: Some("2+1".into()),
                ..with("a=file:///x,b=file:///y,c=file:///z")
            },
            &ServeArgs::default(),
        )
        .unwrap();
        assert_eq!(c.erasure, Some((2, 1)));
        assert_eq!((c.policy.replicas, c.policy.write_quorum), (3, 3));
    }

    #[test]
    fn file_is_overridden_by_flags_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:4000\"\nchunk_size = \"1MiB\"\n[azure]\naccount = \"a\"\n",
        )
        .unwrap();
        let s = StoreArgs {
            config: Some(path.clone()),
            chunk_size: Some("2MiB".into()),
            ..Default::default()
        };
        let c = Config::load(&s, &ServeArgs::default()).unwrap();
        assert_eq!(c.listen.port(), 4000);
        assert_eq!(c.vault.chunk_size, 2 << 20);
        std::fs::write(&path, "listn = \"x\"\n").unwrap();
        assert!(
            Config::load(&s, &ServeArgs::default())
                .unwrap_err()
                .to_string()
                .contains("listn")
        );
    }
}
