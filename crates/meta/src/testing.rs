//! Test support: a fresh, empty PostgreSQL database per test, so tests run in parallel.
//!
//! The server comes from `CHUNKVAULT_TEST_DATABASE_URL` (scripts/test sets it, starting a
//! throwaway cluster when none answers), else `postgres://postgres@127.0.0.1:5432/postgres`.
//! There is no skipping: a test that needs PostgreSQL fails, saying how to get one.

use std::time::Duration;

use sqlx::{Connection, Executor};

use chunkvault_types::FileId;

use crate::{PostgresMeta, PostgresOptions};

pub const DEFAULT_TEST_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The admin URL of the test server.
pub fn test_server_url() -> String {
    std::env::var("CHUNKVAULT_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_TEST_URL.to_string())
}

/// A database created for one test; dropped (best effort) with [`TestDatabase::drop_database`].
pub struct TestDatabase {
    pub url: String,
    name: String,
    admin: String,
}

impl TestDatabase {
    /// Creates an empty database with a unique name.
    pub async fn create() -> Self {
        let admin = test_server_url();
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL is needed for this test and none answers at {admin}: {e}. \
                 Run the suite with scripts/test (it starts a throwaway PostgreSQL when none \
                 answers), or set CHUNKVAULT_TEST_DATABASE_URL."
                )
            });
        let name = format!("cv_test_{}", uuid::Uuid::new_v4().simple());
        conn.execute(sqlx::AssertSqlSafe(
            format!("CREATE DATABASE {name}").as_str(),
        ))
        .await
        .expect("create test database");
        let mut url = url::Url::parse(&admin).expect("test database URL");
        url.set_path(&format!("/{name}"));
        Self {
            url: url.to_string(),
            name,
            admin,
        }
    }

    /// A store on this database (not migrated).
    pub async fn open(&self) -> PostgresMeta {
        PostgresMeta::open(&PostgresOptions {
            url: self.url.clone(),
            max_connections: 8,
            acquire_timeout: Duration::from_secs(10),
        })
        .await
        .expect("open test database")
    }

    pub async fn drop_database(self) {
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.admin).await {
            let _ = conn
                .execute(sqlx::AssertSqlSafe(
                    format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str(),
                ))
                .await;
        }
    }
}

/// Flips one bit of an inline file's stored content, straight in the database at `url`
/// (`sqlite://PATH` or a PostgreSQL URL), the way a damaged disk would. Panics when the file
/// has no inline content.
pub async fn damage_inline_data(url: &str, id: FileId) {
    const READ: &str = "SELECT data FROM inline_data WHERE file_id = $1";
    const WRITE: &str = "UPDATE inline_data SET data = $2 WHERE file_id = $1";
    // One body, two connection types.
    macro_rules! damage {
        ($conn:ty) => {{
            let mut conn = <$conn>::connect(url).await.expect("open the database");
            let (mut data,): (Vec<u8>,) = sqlx::query_as(READ)
                .bind(id.as_uuid())
                .fetch_one(&mut conn)
                .await
                .expect("the file has inline content");
            data[0] ^= 0x01;
            sqlx::query(WRITE)
                .bind(id.as_uuid())
                .bind(data)
                .execute(&mut conn)
                .await
                .expect("damage the inline content");
        }};
    }
    if url.starts_with("sqlite:") {
        damage!(sqlx::SqliteConnection)
    } else {
        damage!(sqlx::PgConnection)
    }
}
