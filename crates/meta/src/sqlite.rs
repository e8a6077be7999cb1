//! SQLite: the embedded default.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub(crate) mod dialect {
    pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
    /// SQLite has no row locks: every write transaction holds the database's one write lock
    /// from its start (`BEGIN_WRITE`), which serialises them and gives the same guarantees.
    pub const LOCK_ROW: &str = "";
    pub const SKIP_LOCKED: &str = "";
    pub const HAS_MIGRATIONS_TABLE: &str =
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'";
    /// Takes the write lock at once: two connections write (sqlx's and the upload writer's),
    /// and a deferred transaction that read first could not upgrade after the other wrote.
    pub const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

    /// Uploads (open, record chunks, commit, abort) go through the dedicated writer thread.
    pub fn upload_writer(store: &super::SqliteMeta) -> Option<&crate::writer::UploadWriter> {
        Some(&store.uploads)
    }

    /// A download's reads (the file, its manifest) run inline (see `reads.rs`).
    pub fn point_reads(store: &super::SqliteMeta) -> Option<&crate::reads::PointReads> {
        Some(&store.reads)
    }
}

/// How long a connection waits for SQLite's write lock before the store reports itself
/// unavailable.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub path: PathBuf,
    /// `synchronous = FULL` (every commit durable on power loss) instead of `NORMAL` (durable
    /// across process crashes; the last commits may be lost on power loss, never corrupted).
    pub fsync: bool,
    pub read_connections: u32,
}

/// The metadata store on SQLite: the upload path (open, record chunks, commit, abort: what
/// every upload does) on a dedicated connection thread that commits waiting calls together (see
/// `writer.rs`); every other write on one sqlx connection; a pool of sqlx readers beside them
/// (WAL lets readers run beside the writer). SQLite allows one writer at a time: the two
/// writing connections take turns through its lock, each transaction `BEGIN IMMEDIATE`.
#[derive(Debug, Clone)]
pub struct SqliteMeta {
    pub(crate) read: SqlitePool,
    pub(crate) write: SqlitePool,
    pub(crate) uploads: crate::writer::UploadWriter,
    pub(crate) reads: std::sync::Arc<crate::reads::PointReads>,
    pub(crate) describe: String,
}

impl SqliteMeta {
    /// Opens (creating when missing) the database file. Does not migrate.
    pub async fn open(opts: &SqliteOptions) -> crate::Result<Self> {
        if let Some(parent) = opts.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| crate::MetaError::Schema {
                message: format!(
                    "cannot create the directory of {}: {e}",
                    opts.path.display()
                ),
            })?;
        }
        let connect = SqliteConnectOptions::from_str("sqlite://")?
            .filename(&opts.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if opts.fsync {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        // sqlx pings every connection it hands out by default: a round trip to the
        // connection's worker thread per transaction, and an embedded database file has no
        // peer that can hang up.
        let write = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect.clone())
            .await?;
        let read = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(opts.read_connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect.read_only(true))
            .await?;
        let uploads = crate::writer::UploadWriter::start(&crate::writer::WriterOptions {
            path: opts.path.clone(),
            fsync: opts.fsync,
            busy_timeout: BUSY_TIMEOUT,
        })?;
        let reads = std::sync::Arc::new(crate::reads::PointReads::open(opts.path.clone())?);
        Ok(Self {
            read,
            write,
            uploads,
            reads,
            describe: format!("sqlite {}", opts.path.display()),
        })
    }
}

impl SqliteMeta {
    /// Drops what this process keeps in memory of recent small files (see `recent.rs`), so
    /// the next reads go to the database file: after the file was changed by another process
    /// or by hand.
    pub fn forget_recent_files(&self) {
        self.reads.recent.clear();
    }
}

crate::sql::impl_meta_store!(SqliteMeta, sqlx::Sqlite, crate::sqlite::dialect);
