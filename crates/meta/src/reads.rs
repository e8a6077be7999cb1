//! SQLite's two per-download reads (the file's row, its manifest) run inline on the calling
//! task, on a connection taken from a small pool.
//!
//! Through sqlx each query is a round trip to a connection's worker thread: two thread
//! hand-offs per download, which cost more than the queries (a primary-key lookup in a warm
//! page cache takes a few microseconds). WAL lets these readers run beside the writers without
//! waiting for them. A read that misses the page cache waits for the disk on the calling
//! thread: a handful of pages for these queries.

use std::path::PathBuf;
use std::sync::Mutex;

use chunkvault_types::{ChunkEntry, FileId};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::recent::{Admit, RecentFiles};
use crate::sql::{FILE_COLUMN_COUNT, FILE_COLUMNS};
use crate::writer::file_record;
use crate::{
    Account, AccountId, ApiKeyRecord, FileRecord, FileStart, Result, Role, chunk_id, from_micros,
    to_i64,
};

/// Connections kept for reuse; more are opened when more reads run at once, and closed after.
const KEEP: usize = 8;

#[derive(Debug)]
pub(crate) struct PointReads {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Small files recently written or read (see `recent.rs`).
    pub(crate) recent: RecentFiles,
}

impl PointReads {
    /// Checks that the database opens; connections are made as reads need them.
    pub(crate) fn open(path: PathBuf) -> Result<Self> {
        let reads = Self {
            path,
            idle: Mutex::new(Vec::new()),
            recent: RecentFiles::default(),
        };
        let conn = reads.connect()?;
        reads.put_back(conn);
        Ok(reads)
    }

    fn connect(&self) -> Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(1))?;
        Ok(conn)
    }

    fn put_back(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < KEEP
        {
            idle.push(conn);
        }
    }

    fn with<T>(&self, read: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let conn = match pooled {
            Some(c) => c,
            None => self.connect()?,
        };
        let out = read(&conn);
        // Never pooled inside a transaction (a read that failed inside one it began).
        if !conn.is_autocommit() && conn.execute_batch("ROLLBACK").is_err() {
            return out;
        }
        self.put_back(conn);
        out
    }

    pub(crate) fn file(&self, id: FileId) -> Result<Option<FileRecord>> {
        if let Some((file, _)) = self.recent.get(id) {
            return Ok(Some(file));
        }
        self.with(|conn| file(conn, id))
    }

    pub(crate) fn inline_data(&self, id: FileId) -> Result<Option<bytes::Bytes>> {
        if let Some(data) = self.recent.data(id) {
            return Ok(Some(data));
        }
        let generation = self.recent.generation();
        let found = self.with(|conn| {
            Ok(conn
                .prepare_cached(INLINE_DATA)?
                .query_row(params![id.as_uuid().as_bytes().as_slice()], |r| {
                    r.get::<_, Vec<u8>>(0)
                })
                .optional()?
                .map(bytes::Bytes::from))
        })?;
        if let Some(data) = &found {
            self.recent.attach(generation, id, data, Admit::Read);
        }
        Ok(found)
    }

    /// The file's row, the start of its manifest and an inline file's content in one
    /// statement ([`FILE_WITH_ENTRIES`]): one snapshot, one read lock taken and dropped (two
    /// `fcntl` calls on the shared memory index), and none of the `BEGIN`/`COMMIT` a
    /// two-statement read needs for its snapshot. A file kept in memory (`recent.rs`) is not
    /// read, except an inline file's content that was not kept.
    pub(crate) fn file_with_manifest(&self, id: FileId, limit: u32) -> Result<Option<FileStart>> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        if let Some((file, mut entries)) = self.recent.get(id) {
            entries.truncate(limit);
            let inline = if file.inline {
                match self.inline_data(id)? {
                    Some(data) => Some(data),
                    // Deleted since it was kept.
                    None => return Ok(None),
                }
            } else {
                None
            };
            return Ok(Some(FileStart {
                file,
                entries,
                inline,
            }));
        }
        let generation = self.recent.generation();
        let found = self.read_file_with_manifest(id, limit)?;
        if let Some(start) = &found {
            self.recent.insert(generation, &start.file, &start.entries);
            if let Some(data) = &start.inline {
                self.recent.attach(generation, id, data, Admit::Read);
            }
        }
        Ok(found)
    }

    fn read_file_with_manifest(&self, id: FileId, limit: usize) -> Result<Option<FileStart>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(&FILE_WITH_ENTRIES)?;
            let mut rows = stmt.query(params![
                id.as_uuid().as_bytes().as_slice(),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ])?;
            let mut found: Option<FileStart> = None;
            while let Some(row) = rows.next()? {
                let start = match &mut found {
                    Some(f) => f,
                    None => found.insert(FileStart {
                        file: file_record(row)?,
                        entries: Vec::new(),
                        inline: row
                            .get::<_, Option<Vec<u8>>>(FILE_COLUMN_COUNT + 4)?
                            .map(bytes::Bytes::from),
                    }),
                };
                // A file without chunks (empty or inline) is one row with no manifest columns.
                if let Some(index) = row.get::<_, Option<i64>>(FILE_COLUMN_COUNT)? {
                    start.entries.push(ChunkEntry {
                        index: index as u64,
                        offset: row.get::<_, i64>(FILE_COLUMN_COUNT + 1)? as u64,
                        length: row.get::<_, i64>(FILE_COLUMN_COUNT + 2)? as u64,
                        hash: chunk_id(row.get(FILE_COLUMN_COUNT + 3)?)?,
                    });
                }
            }
            Ok(found)
        })
    }

    /// A key with its account (see `MetaStore::api_key_with_account`), read inline like a
    /// download's: authenticating a request through sqlx took two thread hand-offs.
    pub(crate) fn api_key_with_account(
        &self,
        id: &str,
    ) -> Result<Option<(ApiKeyRecord, Option<Account>)>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(&KEY_WITH_ACCOUNT)?;
            let mut rows = stmt.query(params![id])?;
            rows.next()?.map(key_with_account).transpose()
        })
    }

    /// An account by id, read inline: every upload of an owner checks its quota.
    pub(crate) fn account(&self, id: AccountId) -> Result<Option<Account>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(&ACCOUNT)?;
            let mut rows = stmt.query(params![id.0.as_bytes().as_slice()])?;
            match rows.next()? {
                Some(row) => account_at(row, 0),
                None => Ok(None),
            }
        })
    }

    pub(crate) fn manifest(
        &self,
        id: FileId,
        from_index: u64,
        limit: u32,
    ) -> Result<Vec<ChunkEntry>> {
        self.with(|conn| entries(conn, id, from_index, limit))
    }
}

fn file(conn: &Connection, id: FileId) -> Result<Option<FileRecord>> {
    let sql = format!("SELECT {FILE_COLUMNS} FROM files WHERE id = ?1 AND state = 'committed'");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(params![id.as_uuid().as_bytes().as_slice()], file_record)
        .optional()?)
}

/// The content of a committed inline file (no row for a file stored in chunks). Its row is
/// written in the transaction that commits the file and deleted in the one that deletes it, so
/// it is there exactly while the file is committed: no need to read the file's row.
pub(crate) const INLINE_DATA: &str = "SELECT data FROM inline_data WHERE file_id = $1";

/// Records an inline file's content, after its row.
pub(crate) const INSERT_INLINE_DATA: &str =
    "INSERT INTO inline_data (file_id, data) VALUES ($1, $2)";

/// An account's row, its columns as [`account_at`] reads them.
static ACCOUNT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {} FROM accounts WHERE id = ?1",
        crate::sql::ACCOUNT_COLUMNS
    )
});

/// [`crate::sql::key_with_account_sql`] with rusqlite's placeholders.
static KEY_WITH_ACCOUNT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| crate::sql::key_with_account_sql("?1"));

/// A row of [`KEY_WITH_ACCOUNT`]: the key's columns 0-7, the account's 8-14.
fn key_with_account(r: &rusqlite::Row<'_>) -> Result<(ApiKeyRecord, Option<Account>)> {
    let time = |i: usize| -> Result<Option<time::OffsetDateTime>> {
        Ok(r.get::<_, Option<i64>>(i)?.map(from_micros))
    };
    let account: Vec<u8> = r.get(1)?;
    let key = ApiKeyRecord {
        id: r.get(0)?,
        account: AccountId(uuid::Uuid::from_slice(&account).map_err(bad)?),
        name: r.get(2)?,
        secret_hash: r.get(3)?,
        created_at: from_micros(r.get(4)?),
        expires_at: time(5)?,
        revoked_at: time(6)?,
        last_used_at: time(7)?,
    };
    Ok((key, account_at(r, 8)?))
}

/// The account whose columns (`id, name, role, quota_bytes, bytes_used, created_at, disabled`)
/// start at column `at`; `None` when its id is NULL (a join found none).
fn account_at(r: &rusqlite::Row<'_>, at: usize) -> Result<Option<Account>> {
    let Some(id) = r.get::<_, Option<Vec<u8>>>(at)? else {
        return Ok(None);
    };
    let role: String = r.get(at + 2)?;
    let (Ok(id), Some(role)) = (uuid::Uuid::from_slice(&id), Role::parse(&role)) else {
        return Err(bad(format!(
            "an account row with a bad id or role {role:?}"
        )));
    };
    Ok(Some(Account {
        id: AccountId(id),
        name: r.get(at + 1)?,
        role,
        quota_bytes: r.get::<_, Option<i64>>(at + 3)?.map(|q| q as u64),
        bytes_used: r.get::<_, i64>(at + 4)? as u64,
        created_at: from_micros(r.get(at + 5)?),
        disabled: r.get(at + 6)?,
    }))
}

fn bad(e: impl Into<crate::BoxError>) -> crate::MetaError {
    crate::MetaError::Other { source: e.into() }
}

/// [`crate::sql::file_with_entries_sql`] with rusqlite's placeholders.
static FILE_WITH_ENTRIES: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| crate::sql::file_with_entries_sql("?1", "?2"));

/// Manifest entries of a committed file, by index range. A committed manifest's indices run
/// 0..n without gaps, so the range is the page. Not `LIMIT ?`: SQLite plans with a bound
/// LIMIT's value and so prepares such a statement again on every execution.
const COMMITTED_ENTRIES: &str = "SELECT fc.idx, fc.byte_offset, fc.byte_length, fc.hash
     FROM file_chunks fc JOIN files f ON f.id = fc.file_id
     WHERE fc.file_id = ?1 AND f.state = 'committed' AND fc.idx >= ?2 AND fc.idx < ?3
     ORDER BY fc.idx";

/// Up to `limit` manifest entries of a committed file from `from_index` on.
fn entries(conn: &Connection, id: FileId, from_index: u64, limit: u32) -> Result<Vec<ChunkEntry>> {
    let from = to_i64(from_index, "chunk index")?;
    let mut stmt = conn.prepare_cached(COMMITTED_ENTRIES)?;
    let rows = stmt.query_map(
        params![
            id.as_uuid().as_bytes().as_slice(),
            from,
            from.saturating_add(i64::from(limit))
        ],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        },
    )?;
    let mut out = Vec::new();
    for row in rows {
        let (index, offset, length, hash) = row?;
        out.push(ChunkEntry {
            index: index as u64,
            offset: offset as u64,
            length: length as u64,
            hash: chunk_id(hash)?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_manifest_columns_follow_the_file_columns() {
        assert_eq!(
            crate::sql::FILE_COLUMNS.split(',').count(),
            crate::sql::FILE_COLUMN_COUNT
        );
    }
}
