//! The one implementation of [`crate::MetaStore`], written once and generated for each sqlx
//! database by `impl_meta_store!`. The SQL is shared: sqlx's SQLite driver binds `$N` by
//! number like PostgreSQL, and both dialects have `ON CONFLICT` and `RETURNING`. What differs
//! (row locks, the catalog query, the migrations) comes from the dialect module passed in.
//!
//! A macro rather than generics over `sqlx::Database`: the trait bounds sqlx needs for generic
//! executors and codecs would outweigh the code they save.

/// An account's columns, in the order SQLite's point reads (`reads.rs`) read them by index.
pub(crate) const ACCOUNT_COLUMNS: &str =
    "id, name, role, quota_bytes, bytes_used, created_at, disabled";

pub(crate) const FILE_COLUMNS: &str = "id, name, content_type, size, chunk_size, chunk_count, sha256, created_at, committed_at, owner, is_inline, blake3";

/// How many columns `FILE_COLUMNS` names (its commas plus one): the manifest's columns follow
/// them where a file is read joined with its manifest.
pub(crate) const FILE_COLUMN_COUNT: usize = {
    let (bytes, mut i, mut n) = (FILE_COLUMNS.as_bytes(), 0, 1);
    while i < bytes.len() {
        if bytes[i] == b',' {
            n += 1;
        }
        i += 1;
    }
    n
};

/// A committed file's row joined with its first manifest entries (`limit` of them) and an
/// inline file's content: one row per entry, in index order (the join walks `file_chunks`'
/// primary key), or one row with NULL entry columns for a file without chunks; the content in
/// the last column (NULL for every other file). No row: no such committed file. One statement
/// is one snapshot, without the `BEGIN` and `COMMIT` (two more round trips) that reading the
/// three in statements of their own needs. `id` and `limit` are the placeholders' text.
pub(crate) fn file_with_entries_sql(id: &str, limit: &str) -> String {
    format!(
        "SELECT {FILE_COLUMNS}, fc.idx, fc.byte_offset, fc.byte_length, fc.hash, d.data
         FROM files f LEFT JOIN inline_data d ON d.file_id = f.id LEFT JOIN file_chunks fc
           ON fc.file_id = f.id AND fc.idx >= 0 AND fc.idx < {limit}
         WHERE f.id = {id} AND f.state = 'committed'
         ORDER BY fc.idx"
    )
}

/// [`file_with_entries_sql`] with sqlx's placeholders.
pub(crate) static FILE_WITH_ENTRIES: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| file_with_entries_sql("$1", "$2"));

/// An API key's row with its account's, the account's columns prefixed `a_` (NULL when the
/// account is gone). `id` is the placeholder's text.
pub(crate) fn key_with_account_sql(id: &str) -> String {
    format!(
        "SELECT k.id, k.account_id, k.name, k.secret_hash, k.created_at, k.expires_at,
                k.revoked_at, k.last_used_at, a.id AS a_id, a.name AS a_name, a.role AS a_role,
                a.quota_bytes AS a_quota_bytes, a.bytes_used AS a_bytes_used,
                a.created_at AS a_created_at, a.disabled AS a_disabled
         FROM api_keys k LEFT JOIN accounts a ON a.id = k.account_id
         WHERE k.id = {id}"
    )
}

/// [`key_with_account_sql`] with sqlx's placeholders.
pub(crate) static KEY_WITH_ACCOUNT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| key_with_account_sql("$1"));

/// Rows per multi-row statement: far below both databases' bind-variable limits (5 binds a row).
pub(crate) const BATCH: usize = 1000;

macro_rules! impl_meta_store {
    ($store:ident, $db:ty, $dialect:path) => {
        mod imp {
        use super::$store;
        use $dialect as dialect;

        use std::time::Duration;

        use async_trait::async_trait;
        use chunkvault_types::{ChunkEntry, ChunkId, FileDigest, FileId};
        use sqlx::{QueryBuilder, Row};
        use time::OffsetDateTime;

        use crate::sql::{ACCOUNT_COLUMNS, BATCH, FILE_COLUMNS};
        use crate::{
            chunk_id, chunk_row, from_micros, micros, to_i64, Account, AccountId, ApiKeyRecord, ChunkRecord, ChunkState, CommitFile, FileRecord, FileStart, LinkSecret, MetaError, MetaStore, NewUpload, PendingChunk, Result, Role, SchemaStatus, UploadRecord, UploadState, ChunkCopy, CopyStatus,
        };

        type Tx = sqlx::Transaction<'static, $db>;

        /// Begins a transaction on its own task, so that it always finishes beginning.
        ///
        /// sqlx's `begin()` is not cancel-safe: a future dropped after `BEGIN` went out but
        /// before its answer came back leaves the pooled connection inside a transaction that
        /// sqlx does not know about, and every later statement on that connection runs in it,
        /// invisible to the others and never committed. Request futures are dropped whenever
        /// a client goes away or an upload fails part-way, so this happened (an upload's own
        /// row, just inserted, was then not found). On its own task `begin()` completes; if
        /// the caller is gone, the returned transaction is dropped there, which sqlx rolls
        /// back properly.
        async fn begin(pool: &sqlx::Pool<$db>) -> Result<Tx> {
            begin_with(pool, dialect::BEGIN_WRITE).await
        }

        /// A transaction that only reads (one snapshot), begun the same way.
        async fn begin_with(pool: &sqlx::Pool<$db>, statement: &'static str) -> Result<Tx> {
            let pool = pool.clone();
            match tokio::spawn(async move { pool.begin_with(statement).await }).await {
                Ok(tx) => Ok(tx?),
                Err(e) => Err(MetaError::Other { source: Box::new(e) }),
            }
        }

        /// A manifest row: `idx, byte_offset, byte_length, hash`, in that order.
        fn chunk_entry(r: &<$db as sqlx::Database>::Row) -> Result<ChunkEntry> {
            chunk_entry_at(r, 0)
        }

        /// A manifest row's four columns, from column `at` on.
        fn chunk_entry_at(r: &<$db as sqlx::Database>::Row, at: usize) -> Result<ChunkEntry> {
            Ok(ChunkEntry {
                index: r.try_get::<i64, _>(at)? as u64,
                offset: r.try_get::<i64, _>(at + 1)? as u64,
                length: r.try_get::<i64, _>(at + 2)? as u64,
                hash: chunk_id(r.try_get(at + 3)?)?,
            })
        }

        fn file_record(row: &<$db as sqlx::Database>::Row) -> Result<FileRecord> {
            Ok(FileRecord {
                id: FileId::from_uuid(row.try_get("id")?),
                name: row.try_get("name")?,
                content_type: row.try_get("content_type")?,
                size: row.try_get::<i64, _>("size")? as u64,
                chunk_size: row.try_get::<i64, _>("chunk_size")? as u64,
                chunk_count: row.try_get::<i64, _>("chunk_count")? as u64,
                digest: FileDigest::from_parts(row.try_get("blake3")?, row.try_get("sha256")?)
                    .ok_or_else(|| MetaError::Other {
                        source: "a committed file's row has no digest".into(),
                    })?,
                created_at: from_micros(row.try_get("created_at")?),
                committed_at: from_micros(row.try_get("committed_at")?),
                owner: row.try_get::<Option<uuid::Uuid>, _>("owner")?.map(AccountId),
                inline: row.try_get("is_inline")?,
            })
        }


        fn account_record(row: &<$db as sqlx::Database>::Row) -> Result<Account> {
            account_record_named(row, |c| c.to_string())
        }

        /// An account from a row whose account columns are named by `column` (a join prefixes
        /// them).
        fn account_record_named(
            row: &<$db as sqlx::Database>::Row,
            column: impl Fn(&str) -> String,
        ) -> Result<Account> {
            let role: String = row.try_get(column("role").as_str())?;
            Ok(Account {
                id: AccountId(row.try_get(column("id").as_str())?),
                name: row.try_get(column("name").as_str())?,
                role: Role::parse(&role)
                    .ok_or_else(|| MetaError::Other { source: format!("unknown role {role:?}").into() })?,
                quota_bytes: row.try_get::<Option<i64>, _>(column("quota_bytes").as_str())?.map(|q| q as u64),
                bytes_used: row.try_get::<i64, _>(column("bytes_used").as_str())? as u64,
                created_at: from_micros(row.try_get(column("created_at").as_str())?),
                disabled: row.try_get(column("disabled").as_str())?,
            })
        }

        const KEY_COLUMNS: &str = "id, account_id, name, secret_hash, created_at, expires_at, revoked_at, last_used_at";

        fn key_record(row: &<$db as sqlx::Database>::Row) -> Result<ApiKeyRecord> {
            let opt = |name: &str| -> Result<Option<OffsetDateTime>> {
                Ok(row.try_get::<Option<i64>, _>(name)?.map(from_micros))
            };
            Ok(ApiKeyRecord {
                id: row.try_get("id")?,
                account: AccountId(row.try_get("account_id")?),
                name: row.try_get("name")?,
                secret_hash: row.try_get("secret_hash")?,
                created_at: from_micros(row.try_get("created_at")?),
                expires_at: opt("expires_at")?,
                revoked_at: opt("revoked_at")?,
                last_used_at: opt("last_used_at")?,
            })
        }

        /// A unique-constraint violation becomes [`MetaError::AlreadyExists`].
        fn unique(e: sqlx::Error, what: String) -> MetaError {
            match &e {
                sqlx::Error::Database(d) if d.is_unique_violation() => MetaError::AlreadyExists { what },
                _ => e.into(),
            }
        }

        /// Locks the upload's row and returns its state, chunk size and owner.
        async fn lock_upload(tx: &mut Tx, id: FileId) -> Result<(UploadState, i64, Option<uuid::Uuid>)> {
            let sql = format!("SELECT state, chunk_size, owner FROM files WHERE id = $1{}", dialect::LOCK_ROW);
            let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(id.as_uuid()).fetch_optional(&mut **tx).await?;
            let row = row.ok_or(MetaError::NotFound)?;
            let state: String = row.try_get(0)?;
            let state = UploadState::parse(&state)
                .ok_or_else(|| MetaError::Other { source: format!("unknown upload state {state:?}").into() })?;
            Ok((state, row.try_get(1)?, row.try_get(2)?))
        }

        /// Locks the chunk rows a file references, in hash order: the order `add_chunks` locks
        /// them in, so concurrent uploads, commits and deletions of shared chunks cannot deadlock.
        async fn lock_file_chunks(tx: &mut Tx, id: FileId) -> Result<()> {
            if dialect::LOCK_ROW.is_empty() {
                return Ok(());
            }
            let sql = format!(
                "SELECT hash FROM chunks WHERE hash IN (SELECT hash FROM file_chunks WHERE file_id = $1) ORDER BY hash{}",
                dialect::LOCK_ROW
            );
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(id.as_uuid()).fetch_all(&mut **tx).await?;
            Ok(())
        }

        /// Drops every chunk reference of a file, touching the chunks so GC's grace period
        /// counts from now.
        async fn drop_refs(tx: &mut Tx, id: FileId, now: OffsetDateTime) -> Result<()> {
            lock_file_chunks(tx, id).await?;
            sqlx::query("UPDATE chunks SET touched_at = $2 WHERE hash IN (SELECT hash FROM file_chunks WHERE file_id = $1)")
                .bind(id.as_uuid())
                .bind(micros(now))
                .execute(&mut **tx)
                .await?;
            sqlx::query("DELETE FROM file_chunks WHERE file_id = $1").bind(id.as_uuid()).execute(&mut **tx).await?;
            Ok(())
        }

        fn insert_upload(u: &NewUpload) -> Result<sqlx::query::Query<'static, $db, <$db as sqlx::Database>::Arguments>> {
            Ok(sqlx::query(
                "INSERT INTO files (id, state, name, content_type, chunk_size, created_at, expires_at, declared_size, owner)
                 VALUES ($1, 'open', $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(*u.id.as_uuid())
            .bind(u.name.clone())
            .bind(u.content_type.clone())
            .bind(to_i64(u.chunk_size, "chunk size")?)
            .bind(micros(u.created_at))
            .bind(micros(u.expires_at))
            .bind(u.declared_size.map(|d| to_i64(d, "declared size")).transpose()?)
            .bind(u.owner.map(|o| o.0)))
        }

        /// `add_chunks` inside the caller's transaction.
        async fn add_chunks_tx(tx: &mut Tx, upload: FileId, chunks: &[PendingChunk]) -> Result<Vec<ChunkState>> {
            if chunks.is_empty() {
                return Ok(Vec::new());
            }
            let now = micros(OffsetDateTime::now_utc());
            match lock_upload(tx, upload).await?.0 {
                UploadState::Open => {}
                other => return Err(MetaError::NotOpen { state: other.as_str().into() }),
            }
            // Unique hashes in sorted order: concurrent uploads then lock chunk rows in the
            // same order and cannot deadlock, and no statement upserts one row twice.
            let unique = crate::unique_by_hash(chunks);
            let mut states = std::collections::HashMap::with_capacity(unique.len());
            for batch in unique.chunks(BATCH) {
                let mut qb = QueryBuilder::<$db>::new(
                    "INSERT INTO chunks (hash, size, state, created_at, touched_at) ",
                );
                qb.push_values(batch, |mut b, (hash, len)| {
                    b.push_bind(hash.as_bytes().as_slice())
                        .push_bind(*len as i64)
                        .push_bind("pending")
                        .push_bind(now)
                        .push_bind(now);
                });
                qb.push(" ON CONFLICT (hash) DO UPDATE SET touched_at = excluded.touched_at RETURNING hash, state");
                for row in qb.build().fetch_all(&mut **tx).await? {
                    let hash = chunk_id(row.try_get(0)?)?;
                    let state: String = row.try_get(1)?;
                    if state == "deleting" {
                        // Dropping the transaction rolls back: nothing recorded.
                        return Err(MetaError::ChunkBusy { id: hash });
                    }
                    states.insert(hash, state == "live");
                }
            }
            // One reference per index; a later entry for the same index wins.
            let mut refs: Vec<&PendingChunk> = chunks.iter().collect();
            refs.sort_by_key(|c| c.index);
            refs.reverse();
            refs.dedup_by_key(|c| c.index);
            for batch in refs.chunks(BATCH) {
                let rows = batch.iter().map(|c| chunk_row(c)).collect::<Result<Vec<_>>>()?;
                let mut qb = QueryBuilder::<$db>::new(
                    "INSERT INTO file_chunks (file_id, idx, byte_offset, byte_length, hash) ",
                );
                qb.push_values(&rows, |mut b, (idx, off, len, hash)| {
                    b.push_bind(*upload.as_uuid())
                        .push_bind(*idx)
                        .push_bind(*off)
                        .push_bind(*len)
                        .push_bind(hash.as_bytes().as_slice());
                });
                qb.push(
                    " ON CONFLICT (file_id, idx) DO UPDATE SET byte_offset = excluded.byte_offset, \
                     byte_length = excluded.byte_length, hash = excluded.hash",
                );
                qb.build().execute(&mut **tx).await?;
            }
            Ok(crate::chunk_states(chunks, &states))
        }

        /// `commit_upload` inside the caller's transaction.
        /// Adds `size` to the owner's `bytes_used`, or fails with [`MetaError::QuotaExceeded`]
        /// (nothing changed) when that would pass the quota.
        async fn charge_tx(tx: &mut Tx, owner: uuid::Uuid, bytes: u64) -> Result<()> {
            let size = to_i64(bytes, "file size")?;
            // One statement checks and charges, so concurrent commits of one account
            // cannot both slip under the quota (PostgreSQL locks the row; SQLite
            // writes one transaction at a time).
            let charged = sqlx::query(
                "UPDATE accounts SET bytes_used = bytes_used + $2
                 WHERE id = $1 AND (quota_bytes IS NULL OR bytes_used + $2 <= quota_bytes)",
            )
            .bind(owner)
            .bind(size)
            .execute(&mut **tx)
            .await?;
            if charged.rows_affected() != 1 {
                return Err(quota_refusal(&mut **tx, owner, bytes).await?);
            }
            Ok(())
        }

        /// The error for a charge of `bytes` that the owner's quota refused, with the figures.
        async fn quota_refusal<'e, E>(e: E, owner: uuid::Uuid, bytes: u64) -> Result<MetaError>
        where
            E: sqlx::Executor<'e, Database = $db>,
        {
            let row = sqlx::query("SELECT quota_bytes, bytes_used FROM accounts WHERE id = $1")
                .bind(owner)
                .fetch_one(e)
                .await?;
            Ok(MetaError::QuotaExceeded {
                quota: row.try_get::<Option<i64>, _>(0)?.unwrap_or(0) as u64,
                used: row.try_get::<i64, _>(1)? as u64,
                size: bytes,
            })
        }

        async fn commit_tx(tx: &mut Tx, upload: FileId, c: &CommitFile) -> Result<FileRecord> {
            let (state, chunk_size, owner) = lock_upload(tx, upload).await?;
            if state != UploadState::Open {
                return Err(MetaError::NotOpen { state: state.as_str().into() });
            }
            let size = to_i64(c.size, "file size")?;
            let n = chunkvault_types::chunk_count(c.size, chunk_size as u64) as i64;
            let row = sqlx::query(
                "SELECT COUNT(*),
                        CAST(COALESCE(SUM(byte_length), 0) AS BIGINT),
                        CAST(COALESCE(SUM(CASE WHEN idx < 0 OR idx >= $2
                                                 OR byte_offset <> idx * $3
                                                 OR byte_length < 1 OR byte_length > $3
                                                 OR (idx < $2 - 1 AND byte_length <> $3)
                                               THEN 1 ELSE 0 END), 0) AS BIGINT)
                 FROM file_chunks WHERE file_id = $1",
            )
            .bind(upload.as_uuid())
            .bind(n)
            .bind(chunk_size)
            .fetch_one(&mut **tx)
            .await?;
            let (count, total, misplaced): (i64, i64, i64) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            crate::check_layout(
                crate::Layout { chunks: n.into(), chunk_size: chunk_size.into(), size: size.into() },
                "recorded",
                [count.into(), total.into(), misplaced.into()],
            )?;
            if let Some(owner) = owner {
                charge_tx(tx, owner, c.size).await?;
            }
            lock_file_chunks(tx, upload).await?;
            sqlx::query(
                "UPDATE chunks SET state = 'live'
                 WHERE state = 'pending' AND hash IN (SELECT hash FROM file_chunks WHERE file_id = $1)",
            )
            .bind(upload.as_uuid())
            .execute(&mut **tx)
            .await?;
            let sql = format!(
                "UPDATE files SET state = 'committed', name = $2, content_type = $3, size = $4,
                   chunk_count = $5, sha256 = $6, committed_at = $7, blake3 = $8
                 WHERE id = $1 RETURNING {FILE_COLUMNS}"
            );
            let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(upload.as_uuid())
                .bind(&c.name)
                .bind(&c.content_type)
                .bind(size)
                .bind(n)
                .bind(c.digest.sha256())
                .bind(micros(c.committed_at))
                .bind(c.digest.blake3())
                .fetch_one(&mut **tx)
                .await?;
            file_record(&row)
        }

        fn push_hashes(qb: &mut QueryBuilder<$db>, ids: &[ChunkId]) {
            qb.push("(");
            let mut sep = qb.separated(", ");
            for id in ids {
                sep.push_bind(id.as_bytes().as_slice());
            }
            sep.push_unseparated(")");
        }

        #[async_trait]
        impl MetaStore for $store {
            async fn create_upload(&self, u: &NewUpload) -> Result<()> {
                if let Some(writer) = dialect::upload_writer(self) {
                    return writer.create_upload(u).await;
                }
                insert_upload(u)?.execute(&self.write).await?;
                Ok(())
            }

            async fn create_upload_with_chunks(&self, u: &NewUpload, chunks: &[PendingChunk]) -> Result<Vec<ChunkState>> {
                if let Some(writer) = dialect::upload_writer(self) {
                    return writer.create_upload_with_chunks(u, chunks).await;
                }
                let mut tx = begin(&self.write).await?;
                insert_upload(u)?.execute(&mut *tx).await?;
                let states = add_chunks_tx(&mut tx, u.id, chunks).await?;
                tx.commit().await?;
                Ok(states)
            }

            async fn add_chunks(&self, upload: FileId, chunks: &[PendingChunk]) -> Result<Vec<ChunkState>> {
                if let Some(writer) = dialect::upload_writer(self) {
                    return writer.add_chunks(upload, chunks).await;
                }
                if chunks.is_empty() {
                    return Ok(Vec::new());
                }
                let mut tx = begin(&self.write).await?;
                let states = add_chunks_tx(&mut tx, upload, chunks).await?;
                tx.commit().await?;
                Ok(states)
            }

            async fn commit_upload(&self, upload: FileId, c: &CommitFile) -> Result<FileRecord> {
                if let Some(writer) = dialect::upload_writer(self) {
                    return writer.commit_upload(upload, c).await;
                }
                let mut tx = begin(&self.write).await?;
                let record = commit_tx(&mut tx, upload, c).await?;
                tx.commit().await?;
                Ok(record)
            }

            async fn create_file(&self, u: &NewUpload, chunks: &[PendingChunk], c: &CommitFile) -> Result<(FileRecord, Vec<ChunkState>)> {
                if let Some(writer) = dialect::upload_writer(self) {
                    // A file just written is often read soon: its record is kept (SQLite).
                    let recent = dialect::point_reads(self).map(|r| (&r.recent, r.recent.generation()));
                    let (file, states, manifest) = writer.create_file(u, chunks, c).await?;
                    if let Some((recent, generation)) = recent {
                        recent.insert(generation, &file, &manifest);
                    }
                    return Ok((file, states));
                }
                let mut tx = begin(&self.write).await?;
                insert_upload(u)?.execute(&mut *tx).await?;
                let states = add_chunks_tx(&mut tx, u.id, chunks).await?;
                let record = commit_tx(&mut tx, u.id, c).await?;
                tx.commit().await?;
                Ok((record, states))
            }

            async fn create_inline_file(&self, u: &NewUpload, c: &CommitFile, data: bytes::Bytes) -> Result<FileRecord> {
                if data.is_empty() || data.len() as u64 != c.size {
                    return Err(MetaError::InvalidManifest {
                        message: format!("an inline file of size {} holds {} bytes", c.size, data.len()),
                    });
                }
                if let Some(writer) = dialect::upload_writer(self) {
                    let recent = dialect::point_reads(self).map(|r| (&r.recent, r.recent.generation()));
                    let file = writer.create_inline_file(u, c, data.clone()).await?;
                    if let Some((recent, generation)) = recent {
                        recent.insert(generation, &file, &[]);
                        // A copy: `data` is a slice of the request body's buffer.
                        recent.attach(
                            generation,
                            file.id,
                            &bytes::Bytes::copy_from_slice(&data),
                            crate::recent::Admit::Written,
                        );
                    }
                    return Ok(file);
                }
                // One statement: one round trip, and a transaction of its own, so the owner's
                // quota charge, the row and the content are recorded all or nothing. (On SQLite
                // the writer thread above records inline files; this SQL is PostgreSQL's.)
                let sql = format!(
                    "WITH charged AS (
                         UPDATE accounts SET bytes_used = bytes_used + $5
                         WHERE id = $11 AND (quota_bytes IS NULL OR bytes_used + $5 <= quota_bytes)
                         RETURNING id),
                     f AS (
                         INSERT INTO files (id, state, name, content_type, chunk_size, size, chunk_count,
                                            sha256, created_at, committed_at, expires_at, declared_size,
                                            owner, is_inline, blake3)
                         SELECT $1, 'committed', $2, $3, $4, $5, 1, $6, $7, $8, $9, $10, $11, TRUE, $13
                         WHERE $11 IS NULL OR EXISTS (SELECT 1 FROM charged)
                         RETURNING {FILE_COLUMNS}),
                     content AS (INSERT INTO inline_data (file_id, data) SELECT id, $12 FROM f)
                     SELECT {FILE_COLUMNS} FROM f"
                );
                let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(*u.id.as_uuid())
                    .bind(&c.name)
                    .bind(&c.content_type)
                    .bind(to_i64(u.chunk_size, "chunk size")?)
                    .bind(to_i64(c.size, "file size")?)
                    .bind(c.digest.sha256())
                    .bind(micros(u.created_at))
                    .bind(micros(c.committed_at))
                    .bind(micros(u.expires_at))
                    .bind(u.declared_size.map(|d| to_i64(d, "declared size")).transpose()?)
                    .bind(u.owner.map(|o| o.0))
                    .bind(data.as_ref())
                    .bind(c.digest.blake3())
                    .fetch_optional(&self.write)
                    .await?;
                match (row, u.owner) {
                    (Some(row), _) => file_record(&row),
                    // No row: the owner's quota refused it, and nothing was recorded.
                    (None, Some(owner)) => Err(quota_refusal(&self.write, owner.0, c.size).await?),
                    (None, None) => Err(MetaError::Other {
                        source: "recording an inline file returned no row".into(),
                    }),
                }
            }

            async fn inline_data(&self, id: FileId) -> Result<Option<bytes::Bytes>> {
                if let Some(reads) = dialect::point_reads(self) {
                    return reads.inline_data(id);
                }
                let row = sqlx::query(crate::reads::INLINE_DATA)
                    .bind(id.as_uuid())
                    .fetch_optional(&self.read)
                    .await?;
                Ok(row.map(|r| r.try_get::<Vec<u8>, _>(0)).transpose()?.map(bytes::Bytes::from))
            }

            async fn abort_upload(&self, upload: FileId) -> Result<()> {
                if let Some(writer) = dialect::upload_writer(self) {
                    return writer.abort_upload(upload).await;
                }
                let mut tx = begin(&self.write).await?;
                match lock_upload(&mut tx, upload).await?.0 {
                    UploadState::Open => {}
                    UploadState::Committed => return Err(MetaError::NotOpen { state: "committed".into() }),
                    UploadState::Aborted | UploadState::Expired => return Ok(()),
                }
                drop_refs(&mut tx, upload, OffsetDateTime::now_utc()).await?;
                sqlx::query("UPDATE files SET state = 'aborted' WHERE id = $1")
                    .bind(upload.as_uuid())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn upload(&self, id: FileId) -> Result<Option<UploadRecord>> {
                let row = sqlx::query(
                    "SELECT state, name, content_type, chunk_size, created_at, expires_at,
                            (SELECT COUNT(*) FROM file_chunks WHERE file_id = $1), declared_size, owner
                     FROM files WHERE id = $1",
                )
                .bind(id.as_uuid())
                .fetch_optional(&self.read)
                .await?;
                let Some(row) = row else { return Ok(None) };
                let state: String = row.try_get(0)?;
                Ok(Some(UploadRecord {
                    id,
                    state: UploadState::parse(&state)
                        .ok_or_else(|| MetaError::Other { source: format!("unknown upload state {state:?}").into() })?,
                    name: row.try_get(1)?,
                    content_type: row.try_get(2)?,
                    chunk_size: row.try_get::<i64, _>(3)? as u64,
                    created_at: from_micros(row.try_get(4)?),
                    expires_at: from_micros(row.try_get(5)?),
                    chunks_recorded: row.try_get::<i64, _>(6)? as u64,
                    declared_size: row.try_get::<Option<i64>, _>(7)?.map(|d| d as u64),
                    owner: row.try_get::<Option<uuid::Uuid>, _>(8)?.map(AccountId),
                }))
            }

            async fn upload_chunks(&self, id: FileId, from_index: u64, limit: u32) -> Result<Vec<ChunkEntry>> {
                let rows = sqlx::query(
                    "SELECT idx, byte_offset, byte_length, hash FROM file_chunks
                     WHERE file_id = $1 AND idx >= $2 ORDER BY idx LIMIT $3",
                )
                .bind(id.as_uuid())
                .bind(to_i64(from_index, "chunk index")?)
                .bind(i64::from(limit))
                .fetch_all(&self.read)
                .await?;
                rows.iter().map(chunk_entry)
                    .collect()
            }

            async fn file(&self, id: FileId) -> Result<Option<FileRecord>> {
                if let Some(reads) = dialect::point_reads(self) {
                    return reads.file(id);
                }
                let sql = format!("SELECT {FILE_COLUMNS} FROM files WHERE id = $1 AND state = 'committed'");
                let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(id.as_uuid()).fetch_optional(&self.read).await?;
                row.as_ref().map(file_record).transpose()
            }

            async fn manifest(&self, id: FileId, from_index: u64, limit: u32) -> Result<Vec<ChunkEntry>> {
                if let Some(reads) = dialect::point_reads(self) {
                    return reads.manifest(id, from_index, limit);
                }
                let rows = sqlx::query(
                    "SELECT fc.idx, fc.byte_offset, fc.byte_length, fc.hash
                     FROM file_chunks fc JOIN files f ON f.id = fc.file_id
                     WHERE fc.file_id = $1 AND f.state = 'committed' AND fc.idx >= $2
                     ORDER BY fc.idx LIMIT $3",
                )
                .bind(id.as_uuid())
                .bind(to_i64(from_index, "chunk index")?)
                .bind(i64::from(limit))
                .fetch_all(&self.read)
                .await?;
                rows.iter().map(chunk_entry)
                    .collect()
            }

            async fn file_with_manifest(&self, id: FileId, limit: u32) -> Result<Option<FileStart>> {
                if let Some(reads) = dialect::point_reads(self) {
                    return reads.file_with_manifest(id, limit);
                }
                let rows = sqlx::query(sqlx::AssertSqlSafe(crate::sql::FILE_WITH_ENTRIES.as_str()))
                    .bind(id.as_uuid())
                    .bind(i64::from(limit))
                    .fetch_all(&self.read)
                    .await?;
                let Some(first) = rows.first() else {
                    return Ok(None);
                };
                let at = crate::sql::FILE_COLUMN_COUNT;
                let file = file_record(first)?;
                let inline = first.try_get::<Option<Vec<u8>>, _>(at + 4)?.map(bytes::Bytes::from);
                let mut entries = Vec::with_capacity(rows.len());
                for row in &rows {
                    // A file without chunks is one row with no manifest columns.
                    if row.try_get::<Option<i64>, _>(at)?.is_some() {
                        entries.push(chunk_entry_at(row, at)?);
                    }
                }
                Ok(Some(FileStart { file, entries, inline }))
            }

            async fn list_files(&self, owner: Option<AccountId>, before: Option<FileId>, limit: u32) -> Result<Vec<FileRecord>> {
                // The largest UUID stands for "no lower bound", so one statement serves both.
                let before = before.map(|b| *b.as_uuid()).unwrap_or(uuid::Uuid::max());
                let rows = match owner {
                    Some(o) => {
                        let sql = format!(
                            "SELECT {FILE_COLUMNS} FROM files WHERE state = 'committed' AND owner = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
                        );
                        sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(o.0).bind(before).bind(i64::from(limit)).fetch_all(&self.read).await?
                    }
                    None => {
                        let sql = format!(
                            "SELECT {FILE_COLUMNS} FROM files WHERE state = 'committed' AND id < $1 ORDER BY id DESC LIMIT $2"
                        );
                        sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(before).bind(i64::from(limit)).fetch_all(&self.read).await?
                    }
                };
                rows.iter().map(file_record).collect()
            }

            async fn delete_file(&self, id: FileId) -> Result<bool> {
                // Declared first, dropped last: after the transaction, however it ends.
                let _forget = dialect::point_reads(self).map(|r| crate::recent::ForgetOnDrop(&r.recent, id));
                let mut tx = begin(&self.write).await?;
                let owner = match lock_upload(&mut tx, id).await {
                    Ok((UploadState::Committed, _, owner)) => owner,
                    Ok(_) | Err(MetaError::NotFound) => return Ok(false),
                    Err(e) => return Err(e),
                };
                if let Some(owner) = owner {
                    sqlx::query(
                        "UPDATE accounts SET bytes_used = CASE WHEN bytes_used > s.size THEN bytes_used - s.size ELSE 0 END
                         FROM (SELECT size FROM files WHERE id = $2) AS s WHERE accounts.id = $1",
                    )
                    .bind(owner)
                    .bind(id.as_uuid())
                    .execute(&mut *tx)
                    .await?;
                }
                drop_refs(&mut tx, id, OffsetDateTime::now_utc()).await?;
                sqlx::query("DELETE FROM inline_data WHERE file_id = $1").bind(id.as_uuid()).execute(&mut *tx).await?;
                sqlx::query("DELETE FROM files WHERE id = $1").bind(id.as_uuid()).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn expire_uploads(&self, now: OffsetDateTime) -> Result<Vec<FileId>> {
                let mut tx = begin(&self.write).await?;
                let sql = format!(
                    "SELECT id FROM files WHERE state = 'open' AND expires_at < $1 ORDER BY expires_at LIMIT 1000{}",
                    dialect::SKIP_LOCKED
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(micros(now)).fetch_all(&mut *tx).await?;
                let mut expired = Vec::with_capacity(rows.len());
                for row in rows {
                    let id = FileId::from_uuid(row.try_get(0)?);
                    drop_refs(&mut tx, id, now).await?;
                    sqlx::query("UPDATE files SET state = 'expired' WHERE id = $1")
                        .bind(id.as_uuid())
                        .execute(&mut *tx)
                        .await?;
                    expired.push(id);
                }
                tx.commit().await?;
                Ok(expired)
            }

            async fn gc_claim_unreferenced(&self, touched_before: OffsetDateTime, limit: u32) -> Result<Vec<ChunkId>> {
                let mut tx = begin(&self.write).await?;
                // First lock the candidates (skipping rows an upload holds right now), then
                // re-check for references in a new statement: it sees every reference committed
                // before we got the locks, and no upload can add one while we hold them.
                let sql = format!(
                    "SELECT hash FROM chunks c WHERE c.state <> 'deleting' AND c.touched_at < $1
                       AND NOT EXISTS (SELECT 1 FROM file_chunks f WHERE f.hash = c.hash)
                     LIMIT $2{}",
                    dialect::SKIP_LOCKED
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(micros(touched_before))
                    .bind(i64::from(limit))
                    .fetch_all(&mut *tx)
                    .await?;
                let candidates: Vec<ChunkId> =
                    rows.into_iter().map(|r| chunk_id(r.try_get(0)?)).collect::<Result<_>>()?;
                let mut claimed = Vec::new();
                if !candidates.is_empty() {
                    let mut qb = QueryBuilder::<$db>::new("UPDATE chunks SET state = 'deleting' WHERE hash IN ");
                    push_hashes(&mut qb, &candidates);
                    qb.push(" AND NOT EXISTS (SELECT 1 FROM file_chunks f WHERE f.hash = chunks.hash) RETURNING hash");
                    for row in qb.build().fetch_all(&mut *tx).await? {
                        claimed.push(chunk_id(row.try_get(0)?)?);
                    }
                }
                // Rows a GC that crashed midway left claimed: finish them too.
                let rows = sqlx::query("SELECT hash FROM chunks WHERE state = 'deleting' LIMIT $1")
                    .bind(i64::from(limit))
                    .fetch_all(&mut *tx)
                    .await?;
                for row in rows {
                    let id = chunk_id(row.try_get(0)?)?;
                    if !claimed.contains(&id) {
                        claimed.push(id);
                    }
                }
                tx.commit().await?;
                Ok(claimed)
            }

            async fn gc_claim_chunks(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>> {
                let sorted = crate::sorted_unique(ids);
                let mut claimed = Vec::new();
                let mut tx = begin(&self.write).await?;
                for batch in sorted.chunks(BATCH) {
                    // As in gc_claim_unreferenced: lock the candidates first, then re-check for
                    // references in a new statement, which sees every reference committed
                    // before the locks were taken.
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT hash FROM chunks c WHERE c.state <> 'deleting' AND c.hash IN ",
                    );
                    push_hashes(&mut qb, batch);
                    qb.push(" AND NOT EXISTS (SELECT 1 FROM file_chunks f WHERE f.hash = c.hash)");
                    qb.push(dialect::SKIP_LOCKED);
                    let candidates: Vec<ChunkId> = qb
                        .build()
                        .fetch_all(&mut *tx)
                        .await?
                        .into_iter()
                        .map(|r| chunk_id(r.try_get(0)?))
                        .collect::<Result<_>>()?;
                    if candidates.is_empty() {
                        continue;
                    }
                    let mut qb = QueryBuilder::<$db>::new("UPDATE chunks SET state = 'deleting' WHERE hash IN ");
                    push_hashes(&mut qb, &candidates);
                    qb.push(" AND NOT EXISTS (SELECT 1 FROM file_chunks f WHERE f.hash = chunks.hash) RETURNING hash");
                    for row in qb.build().fetch_all(&mut *tx).await? {
                        claimed.push(chunk_id(row.try_get(0)?)?);
                    }
                }
                tx.commit().await?;
                Ok(claimed)
            }

            async fn gc_unclaim(&self, ids: &[ChunkId], now: OffsetDateTime) -> Result<()> {
                let sorted = crate::sorted_unique(ids);
                let mut tx = begin(&self.write).await?;
                for batch in sorted.chunks(BATCH) {
                    let mut qb = QueryBuilder::<$db>::new("UPDATE chunks SET state = 'pending', touched_at = ");
                    qb.push_bind(micros(now));
                    qb.push(" WHERE state = 'deleting' AND hash IN ");
                    push_hashes(&mut qb, batch);
                    qb.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn chunk_lost(&self, id: &ChunkId, now: OffsetDateTime) -> Result<()> {
                sqlx::query("UPDATE chunks SET state = 'pending', touched_at = $1 WHERE hash = $2 AND state = 'live'")
                .bind(micros(now))
                .bind(id.as_bytes().as_slice())
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn gc_claim_orphans(&self, ids: &[ChunkId], now: OffsetDateTime) -> Result<Vec<ChunkId>> {
                let sorted = crate::sorted_unique(ids);
                let mut claimed = Vec::new();
                let mut tx = begin(&self.write).await?;
                for batch in sorted.chunks(BATCH) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO chunks (hash, size, state, created_at, touched_at) ",
                    );
                    qb.push_values(batch, |mut b, id| {
                        b.push_bind(id.as_bytes().as_slice())
                            .push_bind(0i64)
                            .push_bind("deleting")
                            .push_bind(micros(now))
                            .push_bind(micros(now));
                    });
                    qb.push(" ON CONFLICT (hash) DO NOTHING RETURNING hash");
                    for row in qb.build().fetch_all(&mut *tx).await? {
                        claimed.push(chunk_id(row.try_get(0)?)?);
                    }
                }
                tx.commit().await?;
                Ok(claimed)
            }

            async fn gc_forget(&self, ids: &[ChunkId]) -> Result<()> {
                let mut tx = begin(&self.write).await?;
                for batch in ids.chunks(BATCH) {
                    let mut qb = QueryBuilder::<$db>::new("DELETE FROM chunks WHERE state = 'deleting' AND hash IN ");
                    push_hashes(&mut qb, batch);
                    qb.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn chunks(&self, after: Option<ChunkId>, limit: u32) -> Result<Vec<ChunkRecord>> {
                let after = after.map(|a| a.as_bytes().to_vec()).unwrap_or_default();
                // A pending row a committed file references was recorded lost by a read
                // (chunk_lost): its blob must exist, as a live one's must.
                let rows = sqlx::query(
                    "SELECT c.hash, c.size,
                            CASE WHEN c.state = 'live' OR EXISTS (
                                SELECT 1 FROM file_chunks fc JOIN files f ON f.id = fc.file_id
                                 WHERE fc.hash = c.hash AND f.state = 'committed')
                            THEN 1 ELSE 0 END
                       FROM chunks c WHERE c.state <> 'deleting' AND c.hash > $1 ORDER BY c.hash LIMIT $2",
                )
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.read)
                .await?;
                rows.into_iter()
                    .map(|r| {
                        Ok(ChunkRecord {
                            hash: chunk_id(r.try_get(0)?)?,
                            size: r.try_get::<i64, _>(1)? as u64,
                            live: r.try_get::<i32, _>(2)? == 1,
                        })
                    })
                    .collect()
            }

            async fn files_with_chunk(&self, id: &ChunkId, limit: u32) -> Result<Vec<FileId>> {
                let rows = sqlx::query("SELECT DISTINCT file_id FROM file_chunks WHERE hash = $1 ORDER BY file_id LIMIT $2")
                    .bind(id.as_bytes().as_slice())
                    .bind(i64::from(limit))
                    .fetch_all(&self.read)
                    .await?;
                rows.into_iter().map(|r| Ok(FileId::from_uuid(r.try_get(0)?))).collect()
            }

            async fn record_copies(&self, copies: &[ChunkCopy]) -> Result<()> {
                if copies.is_empty() {
                    return Ok(());
                }
                // One row per (chunk, location), the last record winning (an upsert may not
                // touch a row twice in one statement), in hash order like every other statement
                // that locks chunk rows (the foreign key check locks them on PostgreSQL).
                let mut rows: Vec<&ChunkCopy> = copies.iter().rev().collect();
                rows.sort_by(|a, b| (a.hash, &a.location).cmp(&(b.hash, &b.location)));
                rows.dedup_by(|a, b| a.hash == b.hash && a.location == b.location);
                let mut tx = begin(&self.write).await?;
                for batch in rows.chunks(BATCH) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO chunk_locations (hash, location, shard, state, verified_at) \
                         SELECT v.column1, v.column2, v.column3, v.column4, v.column5 FROM (",
                    );
                    qb.push_values(batch, |mut b, c| {
                        b.push_bind(c.hash.as_bytes().as_slice())
                            .push_bind(c.location.as_str())
                            .push_bind(c.shard.map(i64::from))
                            .push_bind(c.state.as_str())
                            .push_bind(micros(c.verified_at));
                    });
                    qb.push(
                        ") AS v WHERE EXISTS (SELECT 1 FROM chunks c WHERE c.hash = v.column1 AND c.state <> 'deleting') \
                         ON CONFLICT (hash, location) DO UPDATE SET shard = excluded.shard, state = excluded.state, \
                         verified_at = excluded.verified_at",
                    );
                    qb.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn chunk_copies(&self, id: &ChunkId) -> Result<Vec<ChunkCopy>> {
                let rows = sqlx::query(
                    "SELECT location, shard, state, verified_at FROM chunk_locations WHERE hash = $1 ORDER BY location",
                )
                .bind(id.as_bytes().as_slice())
                .fetch_all(&self.read)
                .await?;
                rows.into_iter()
                    .map(|r| {
                        let state: String = r.try_get(2)?;
                        Ok(ChunkCopy {
                            hash: *id,
                            location: r.try_get(0)?,
                            shard: r.try_get::<Option<i64>, _>(1)?.map(|s| s as u32),
                            state: CopyStatus::parse(&state).ok_or_else(|| MetaError::Other {
                                source: format!("unknown copy state {state:?}").into(),
                            })?,
                            verified_at: from_micros(r.try_get(3)?),
                        })
                    })
                    .collect()
            }

            async fn forget_copies(&self, location: &str, ids: &[ChunkId]) -> Result<()> {
                let mut tx = begin(&self.write).await?;
                for batch in ids.chunks(BATCH) {
                    let mut qb = QueryBuilder::<$db>::new("DELETE FROM chunk_locations WHERE location = ");
                    qb.push_bind(location);
                    qb.push(" AND hash IN ");
                    push_hashes(&mut qb, batch);
                    qb.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn chunks_with_bad_copies(&self, after: Option<ChunkId>, limit: u32) -> Result<Vec<ChunkId>> {
                let after = after.map(|a| a.as_bytes().to_vec()).unwrap_or_default();
                let rows = sqlx::query(
                    "SELECT DISTINCT l.hash FROM chunk_locations l JOIN chunks c ON c.hash = l.hash
                     WHERE l.state <> 'ok' AND c.state = 'live' AND l.hash > $1 ORDER BY l.hash LIMIT $2",
                )
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.read)
                .await?;
                rows.into_iter().map(|r| chunk_id(r.try_get(0)?)).collect()
            }

            async fn try_lease(&self, name: &str, holder: &str, ttl: Duration, now: OffsetDateTime) -> Result<bool> {
                let until = micros(now) + ttl.as_micros().min(i64::MAX as u128) as i64;
                let done = sqlx::query(
                    "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
                     WHERE leases.holder = excluded.holder OR leases.expires_at < $4",
                )
                .bind(name)
                .bind(holder)
                .bind(until)
                .bind(micros(now))
                .execute(&self.write)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
                sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
                    .bind(name)
                    .bind(holder)
                    .execute(&self.write)
                    .await?;
                Ok(())
            }

            async fn chunks_held_by(&self, owner: AccountId, hashes: &[ChunkId]) -> Result<Vec<ChunkId>> {
                let mut unique = hashes.to_vec();
                unique.sort();
                unique.dedup();
                let mut held = Vec::new();
                for batch in unique.chunks(BATCH) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT DISTINCT fc.hash FROM file_chunks fc JOIN files f ON f.id = fc.file_id
                         WHERE f.state IN ('open', 'committed') AND f.owner = ",
                    );
                    qb.push_bind(owner.0);
                    qb.push(" AND fc.hash IN ");
                    push_hashes(&mut qb, batch);
                    for row in qb.build().fetch_all(&self.read).await? {
                        held.push(chunk_id(row.try_get(0)?)?);
                    }
                }
                Ok(held)
            }

            async fn create_account(&self, a: &Account) -> Result<()> {
                sqlx::query(
                    "INSERT INTO accounts (id, name, role, quota_bytes, bytes_used, created_at, disabled)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(a.id.0)
                .bind(&a.name)
                .bind(a.role.as_str())
                .bind(a.quota_bytes.map(|q| to_i64(q, "quota")).transpose()?)
                .bind(to_i64(a.bytes_used, "bytes used")?)
                .bind(micros(a.created_at))
                .bind(a.disabled)
                .execute(&self.write)
                .await
                .map_err(|e| unique(e, format!("account {:?}", a.name)))?;
                Ok(())
            }

            async fn account(&self, id: AccountId) -> Result<Option<Account>> {
                if let Some(reads) = dialect::point_reads(self) {
                    return reads.account(id);
                }
                let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1");
                let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(id.0).fetch_optional(&self.read).await?;
                row.as_ref().map(account_record).transpose()
            }

            async fn account_by_name(&self, name: &str) -> Result<Option<Account>> {
                let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE name = $1");
                let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(name).fetch_optional(&self.read).await?;
                row.as_ref().map(account_record).transpose()
            }

            async fn list_accounts(&self) -> Result<Vec<Account>> {
                let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY id");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).fetch_all(&self.read).await?;
                rows.iter().map(account_record).collect()
            }

            async fn set_quota(&self, id: AccountId, quota_bytes: Option<u64>) -> Result<bool> {
                let done = sqlx::query("UPDATE accounts SET quota_bytes = $2 WHERE id = $1")
                    .bind(id.0)
                    .bind(quota_bytes.map(|q| to_i64(q, "quota")).transpose()?)
                    .execute(&self.write)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn set_account_disabled(&self, id: AccountId, disabled: bool) -> Result<bool> {
                let done = sqlx::query("UPDATE accounts SET disabled = $2 WHERE id = $1")
                    .bind(id.0)
                    .bind(disabled)
                    .execute(&self.write)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn create_api_key(&self, k: &ApiKeyRecord) -> Result<()> {
                sqlx::query(
                    "INSERT INTO api_keys (id, account_id, name, secret_hash, created_at, expires_at, revoked_at, last_used_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&k.id)
                .bind(k.account.0)
                .bind(&k.name)
                .bind(k.secret_hash.as_slice())
                .bind(micros(k.created_at))
                .bind(k.expires_at.map(micros))
                .bind(k.revoked_at.map(micros))
                .bind(k.last_used_at.map(micros))
                .execute(&self.write)
                .await
                .map_err(|e| unique(e, format!("key {:?}", k.id)))?;
                Ok(())
            }

            async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>> {
                let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1");
                let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(&self.read).await?;
                row.as_ref().map(key_record).transpose()
            }

            async fn api_key_with_account(&self, id: &str) -> Result<Option<(ApiKeyRecord, Option<Account>)>> {
                if let Some(reads) = dialect::point_reads(self) {
                    return reads.api_key_with_account(id);
                }
                let row = sqlx::query(sqlx::AssertSqlSafe(crate::sql::KEY_WITH_ACCOUNT.as_str()))
                    .bind(id)
                    .fetch_optional(&self.read)
                    .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let account = match row.try_get::<Option<uuid::Uuid>, _>("a_id")? {
                    Some(_) => Some(account_record_named(&row, |c| format!("a_{c}"))?),
                    None => None,
                };
                Ok(Some((key_record(&row)?, account)))
            }

            async fn list_api_keys(&self, account: Option<AccountId>) -> Result<Vec<ApiKeyRecord>> {
                let rows = match account {
                    Some(a) => {
                        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE account_id = $1 ORDER BY created_at, id");
                        sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(a.0).fetch_all(&self.read).await?
                    }
                    None => {
                        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id");
                        sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).fetch_all(&self.read).await?
                    }
                };
                rows.iter().map(key_record).collect()
            }

            async fn revoke_api_key(&self, id: &str, at: OffsetDateTime) -> Result<bool> {
                let done = sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1")
                    .bind(id)
                    .bind(micros(at))
                    .execute(&self.write)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn set_api_key_expiry(&self, id: &str, at: Option<OffsetDateTime>) -> Result<bool> {
                let done = sqlx::query("UPDATE api_keys SET expires_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(at.map(micros))
                    .execute(&self.write)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn touch_api_key(&self, id: &str, at: OffsetDateTime) -> Result<()> {
                sqlx::query("UPDATE api_keys SET last_used_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(micros(at))
                    .execute(&self.write)
                    .await?;
                Ok(())
            }

            async fn link_secret(&self, fresh: &[u8], now: OffsetDateTime) -> Result<LinkSecret> {
                let read = || sqlx::query("SELECT generation, secret FROM link_secret WHERE id = 1");
                if let Some(row) = read().fetch_optional(&self.read).await? {
                    return Ok(LinkSecret { generation: row.try_get::<i64, _>(0)? as u64, secret: row.try_get(1)? });
                }
                // First use: whichever node inserts first wins, the others read its secret.
                sqlx::query(
                    "INSERT INTO link_secret (id, generation, secret, created_at) VALUES (1, 1, $1, $2)
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(fresh)
                .bind(micros(now))
                .execute(&self.write)
                .await?;
                let row = read().fetch_one(&self.write).await?;
                Ok(LinkSecret { generation: row.try_get::<i64, _>(0)? as u64, secret: row.try_get(1)? })
            }

            async fn rotate_link_secret(&self, fresh: &[u8], now: OffsetDateTime) -> Result<LinkSecret> {
                let row = sqlx::query(
                    "INSERT INTO link_secret (id, generation, secret, created_at) VALUES (1, 1, $1, $2)
                     ON CONFLICT (id) DO UPDATE SET generation = link_secret.generation + 1,
                       secret = excluded.secret, created_at = excluded.created_at
                     RETURNING generation, secret",
                )
                .bind(fresh)
                .bind(micros(now))
                .fetch_one(&self.write)
                .await?;
                Ok(LinkSecret { generation: row.try_get::<i64, _>(0)? as u64, secret: row.try_get(1)? })
            }

            async fn check(&self) -> Result<()> {
                sqlx::query("SELECT 1").execute(&self.read).await?;
                Ok(())
            }

            async fn schema_status(&self) -> Result<SchemaStatus> {
                let exists: i64 = sqlx::query_scalar(dialect::HAS_MIGRATIONS_TABLE).fetch_one(&self.read).await?;
                let applied: Vec<(i64, Vec<u8>, bool)> = if exists == 0 {
                    Vec::new()
                } else {
                    sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
                        .fetch_all(&self.read)
                        .await?
                };
                Ok(crate::schema::compare(&dialect::MIGRATOR, &applied))
            }

            async fn migrate(&self) -> Result<()> {
                dialect::MIGRATOR
                    .run(&self.write)
                    .await
                    .map_err(|e| MetaError::Schema { message: format!("migration failed: {e}") })
            }

            fn describe(&self) -> String {
                self.describe.clone()
            }
        }
        }
    };
}

pub(crate) use impl_meta_store;
