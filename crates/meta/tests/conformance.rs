//! The metadata conformance suite against SQLite and PostgreSQL, plus schema-version checks.

use chunkvault_meta::testing::TestDatabase;
use chunkvault_meta::{MetaStore, SchemaStatus, SqliteMeta, SqliteOptions, conformance};

async fn sqlite(dir: &tempfile::TempDir) -> SqliteMeta {
    SqliteMeta::open(&SqliteOptions {
        path: dir.path().join("meta.db"),
        fsync: false,
        read_connections: 4,
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn sqlite_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let m = sqlite(&dir).await;
    assert_eq!(m.schema_status().await.unwrap(), SchemaStatus::Empty);
    m.migrate().await.unwrap();
    conformance::run_all(&m).await;
}

#[tokio::test]
async fn postgres_conforms() {
    let db = TestDatabase::create().await;
    let m = db.open().await;
    assert_eq!(m.schema_status().await.unwrap(), SchemaStatus::Empty);
    m.migrate().await.unwrap();
    conformance::run_all(&m).await;
    db.drop_database().await;
}

#[tokio::test]
async fn sqlite_detects_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let m = sqlite(&dir).await;
    m.migrate().await.unwrap();
    let raw = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        dir.path().join("meta.db").display()
    ))
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (99999, 'future', 1, x'00', 0)",
    )
    .execute(&raw)
    .await
    .unwrap();
    let status = m.schema_status().await.unwrap();
    assert!(
        matches!(status, SchemaStatus::Ahead { applied: 99999, .. }),
        "{status:?}"
    );
    assert!(status.problem().unwrap().contains("upgrade chunkvault"));
}

#[tokio::test]
async fn postgres_reports_an_unmigrated_database() {
    let db = TestDatabase::create().await;
    let m = db.open().await;
    let status = m.schema_status().await.unwrap();
    assert_eq!(status, SchemaStatus::Empty);
    assert!(status.problem().unwrap().contains("chunkvault migrate"));
    m.migrate().await.unwrap();
    assert!(m.schema_status().await.unwrap().problem().is_none());
    db.drop_database().await;
}

#[tokio::test]
async fn postgres_unreachable_is_unavailable() {
    let err = chunkvault_meta::PostgresMeta::open(&chunkvault_meta::PostgresOptions {
        url: "postgres://postgres@127.0.0.1:1/none".into(),
        max_connections: 1,
        acquire_timeout: std::time::Duration::from_secs(2),
    })
    .await
    .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
}
