//! PostgreSQL: the production metadata store, shared by every server node.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

pub(crate) mod dialect {
    pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
    pub const LOCK_ROW: &str = " FOR UPDATE";
    pub const SKIP_LOCKED: &str = " FOR UPDATE SKIP LOCKED";
    pub const HAS_MIGRATIONS_TABLE: &str = "SELECT COUNT(*) FROM information_schema.tables \
         WHERE table_name = '_sqlx_migrations' AND table_schema = current_schema()";
    /// Row locks serialise what must be serialised; no need for more.
    pub const BEGIN_WRITE: &str = "BEGIN";

    /// PostgreSQL runs uploads through the shared SQL like every other call.
    pub fn upload_writer(_: &super::PostgresMeta) -> Option<&crate::writer::UploadWriter> {
        None
    }

    /// And reads files and manifests through the shared SQL too.
    pub fn point_reads(_: &super::PostgresMeta) -> Option<&crate::reads::PointReads> {
        None
    }
}

#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// `postgres://user:password@host:port/database`.
    pub url: String,
    pub max_connections: u32,
    /// How long a request waits for a connection before it fails as unavailable (503).
    pub acquire_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct PostgresMeta {
    pub(crate) read: PgPool,
    pub(crate) write: PgPool,
    pub(crate) describe: String,
}

impl PostgresMeta {
    /// Connects (failing fast when the server cannot be reached). Does not migrate.
    pub async fn open(opts: &PostgresOptions) -> crate::Result<Self> {
        let connect: PgConnectOptions = opts.url.parse().map_err(|e| crate::MetaError::Schema {
            message: format!("invalid PostgreSQL URL: {e}"),
        })?;
        let describe = format!(
            "postgresql {}@{}:{}/{}",
            connect.get_username(),
            connect.get_host(),
            connect.get_port(),
            connect.get_database().unwrap_or("")
        );
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(opts.acquire_timeout)
            .idle_timeout(Duration::from_secs(300))
            // sqlx pings every connection it hands out by default: one more round trip per
            // transaction. A connection used in the last 30 s is trusted; an older one is
            // pinged, which still catches a server that restarted while the pool was idle.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > Duration::from_secs(30) {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(connect.application_name("chunkvault"))
            .await?;
        Ok(Self {
            read: pool.clone(),
            write: pool,
            describe,
        })
    }
}

crate::sql::impl_meta_store!(PostgresMeta, sqlx::Postgres, crate::postgres::dialect);
