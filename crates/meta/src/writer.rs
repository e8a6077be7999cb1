//! SQLite's upload path on one dedicated connection thread, with group commit.
//!
//! Through sqlx every statement is a round trip to the connection's worker thread, and on
//! SQLite all writes queue for one connection: an upload's three write transactions (open it,
//! record its chunks, commit it) were ~15 round trips on that one writer, which capped small
//! uploads near 1000 a second whatever the hardware. Here each call is one job sent to a
//! thread that owns a rusqlite connection. The thread takes every job waiting in its queue,
//! runs them in one transaction, each in its own savepoint when it has company (a job that
//! fails undoes only its own writes; a job alone rolls the transaction back), commits once,
//! and only then answers the callers: no caller learns of a write before the commit that
//! made it true. Under load the queue is never empty, so the thread runs flat out and one
//! commit serves many uploads.
//!
//! The rest of the store stays on sqlx. Both take SQLite's write lock with `BEGIN IMMEDIATE`
//! (waiting up to the busy timeout), so their transactions never interleave, exactly as with
//! one connection.

use std::sync::mpsc;
use std::time::Duration;

use chunkvault_types::{ChunkEntry, ChunkId, FileDigest, FileId};
use rusqlite::{Connection, OptionalExtension, Row, params};
use time::OffsetDateTime;
use tokio::sync::oneshot;

use crate::sql::FILE_COLUMNS;
use crate::{
    AccountId, ChunkState, CommitFile, FileRecord, Layout, MetaError, NewUpload, PendingChunk,
    Result, UploadState, check_layout, chunk_row, chunk_states, from_micros, micros, to_i64,
    unique_by_hash, whole_manifest,
};

/// Most jobs in one transaction: bounds how long the first caller of a batch waits.
const MAX_BATCH: usize = 128;

/// WAL pages after which a commit copies the WAL back into the database (SQLite's default is
/// 1000). A checkpoint costs two fsyncs and a write of every page changed since the last one,
/// and an upload's batch changes the same few index pages again and again, so fewer, larger
/// checkpoints write much less: at the default they took a fifth of this thread's time on
/// disk. The WAL then peaks near 32 MiB; it is reused from its start after each checkpoint.
const CHECKPOINT_PAGES: u32 = 8000;

/// Settings of the writer's connection.
#[derive(Debug, Clone)]
pub(crate) struct WriterOptions {
    pub path: std::path::PathBuf,
    pub fsync: bool,
    pub busy_timeout: Duration,
}

/// The handle: cheap to clone; the thread ends when the last handle is dropped.
#[derive(Debug, Clone)]
pub(crate) struct UploadWriter {
    jobs: mpsc::Sender<Box<dyn Job>>,
}

impl UploadWriter {
    /// Opens the connection (the database file must exist) and starts the thread.
    pub(crate) fn start(opts: &WriterOptions) -> Result<Self> {
        let conn = Connection::open(&opts.path).map_err(error)?;
        conn.busy_timeout(opts.busy_timeout).map_err(error)?;
        conn.set_prepared_statement_cache_capacity(64);
        let sync = if opts.fsync { "FULL" } else { "NORMAL" };
        // temp_store: a job's savepoint keeps the pages it changes in a statement journal,
        // which SQLite otherwise spills to a temporary file, created and deleted on the
        // thread (an ext4 inode each time). A job changes a few pages, so memory is enough.
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON;
             PRAGMA wal_autocheckpoint = {CHECKPOINT_PAGES}; PRAGMA temp_store = MEMORY;"
        ))
        .map_err(error)?;
        let (jobs, queue) = mpsc::channel::<Box<dyn Job>>();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || serve(conn, queue))
            .map_err(|e| MetaError::Other {
                source: Box::new(e),
            })?;
        Ok(Self { jobs })
    }

    /// Runs `work` in the next batch; answers once that batch is committed.
    async fn call<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Box::new(Call {
                work: Some(work),
                outcome: None,
                reply,
            }))
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    pub(crate) async fn create_upload(&self, u: &NewUpload) -> Result<()> {
        let u = u.clone();
        self.call(move |conn| insert_upload(conn, &u)).await
    }

    pub(crate) async fn create_upload_with_chunks(
        &self,
        u: &NewUpload,
        chunks: &[PendingChunk],
    ) -> Result<Vec<ChunkState>> {
        let u = u.clone();
        let chunks = chunks.to_vec();
        self.call(move |conn| {
            insert_upload(conn, &u)?;
            add_chunks_tx(conn, u.id, &chunks)
        })
        .await
    }

    pub(crate) async fn add_chunks(
        &self,
        upload: FileId,
        chunks: &[PendingChunk],
    ) -> Result<Vec<ChunkState>> {
        if chunks.is_empty() {
            return Ok(Vec::new());
        }
        let chunks = chunks.to_vec();
        self.call(move |conn| add_chunks_tx(conn, upload, &chunks))
            .await
    }

    /// Through the same queue as the calls that open an upload and add to it, so an abort
    /// sent after them (a request dropped while its call was queued) runs after them.
    pub(crate) async fn abort_upload(&self, upload: FileId) -> Result<()> {
        self.call(move |conn| {
            match lock_upload(conn, upload)?.0 {
                UploadState::Open => {}
                UploadState::Committed => {
                    return Err(MetaError::NotOpen {
                        state: "committed".into(),
                    });
                }
                UploadState::Aborted | UploadState::Expired => return Ok(()),
            }
            let id = upload.as_uuid().as_bytes().as_slice();
            let now = micros(OffsetDateTime::now_utc());
            conn.prepare_cached(
                "UPDATE chunks SET touched_at = ?2
                 WHERE hash IN (SELECT hash FROM file_chunks WHERE file_id = ?1)",
            )?
            .execute(params![id, now])?;
            conn.prepare_cached("DELETE FROM file_chunks WHERE file_id = ?1")?
                .execute(params![id])?;
            conn.prepare_cached("UPDATE files SET state = 'aborted' WHERE id = ?1")?
                .execute(params![id])?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn commit_upload(&self, upload: FileId, c: &CommitFile) -> Result<FileRecord> {
        let c = c.clone();
        self.call(move |conn| commit_tx(conn, upload, &c)).await
    }

    pub(crate) async fn create_file(
        &self,
        u: &NewUpload,
        chunks: &[PendingChunk],
        c: &CommitFile,
    ) -> Result<(FileRecord, Vec<ChunkState>, Vec<ChunkEntry>)> {
        let (u, chunks, c) = (u.clone(), chunks.to_vec(), c.clone());
        self.call(move |conn| create_file_tx(conn, &u, &chunks, &c))
            .await
    }

    pub(crate) async fn create_inline_file(
        &self,
        u: &NewUpload,
        c: &CommitFile,
        data: bytes::Bytes,
    ) -> Result<FileRecord> {
        let (u, c) = (u.clone(), c.clone());
        self.call(move |conn| create_inline_tx(conn, &u, &c, &data))
            .await
    }
}

/// Records a committed file with its content beside it (see `MetaStore::create_inline_file`,
/// whose caller checked the content against the size): one row, its content, no chunk and no
/// manifest entry.
fn create_inline_tx(
    conn: &Connection,
    u: &NewUpload,
    c: &CommitFile,
    data: &[u8],
) -> Result<FileRecord> {
    if let Some(owner) = u.owner {
        charge(conn, owner, c.size)?;
    }
    let record = insert_committed(conn, u, c, 1, true)?;
    conn.prepare_cached(crate::reads::INSERT_INLINE_DATA)?
        .execute(params![u.id.as_uuid().as_bytes().as_slice(), data])?;
    Ok(record)
}

/// Inserts a file's row straight in state `committed` and returns the record as a read would
/// return it (times at the microseconds stored), without reading it back.
fn insert_committed(
    conn: &Connection,
    u: &NewUpload,
    c: &CommitFile,
    chunk_count: u64,
    inline: bool,
) -> Result<FileRecord> {
    conn.prepare_cached(
        "INSERT INTO files (id, state, name, content_type, chunk_size, size, chunk_count, sha256,
                            created_at, committed_at, expires_at, declared_size, owner, is_inline,
                            blake3)
         VALUES (?1, 'committed', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        u.id.as_uuid().as_bytes().as_slice(),
        c.name,
        c.content_type,
        to_i64(u.chunk_size, "chunk size")?,
        to_i64(c.size, "file size")?,
        to_i64(chunk_count, "chunk count")?,
        c.digest.sha256(),
        micros(u.created_at),
        micros(c.committed_at),
        micros(u.expires_at),
        u.declared_size
            .map(|d| to_i64(d, "declared size"))
            .transpose()?,
        u.owner.map(|o| o.0.as_bytes().to_vec()),
        inline,
        c.digest.blake3(),
    ])?;
    Ok(FileRecord {
        id: u.id,
        name: c.name.clone(),
        content_type: c.content_type.clone(),
        size: c.size,
        chunk_size: u.chunk_size,
        chunk_count,
        digest: c.digest.clone(),
        created_at: from_micros(micros(u.created_at)),
        committed_at: from_micros(micros(c.committed_at)),
        owner: u.owner,
        inline,
    })
}

/// Records a whole file at once (see `MetaStore::create_file`): what opening it, adding its
/// chunks and committing it do, written straight in their final state (the file committed,
/// its chunks live), about half the statements of the three steps. Also returns the manifest
/// as recorded.
fn create_file_tx(
    conn: &Connection,
    u: &NewUpload,
    chunks: &[PendingChunk],
    c: &CommitFile,
) -> Result<(FileRecord, Vec<ChunkState>, Vec<ChunkEntry>)> {
    let refs = whole_manifest(chunks, u.chunk_size, c.size)?;
    let rows = refs.iter().map(chunk_row).collect::<Result<Vec<_>>>()?;
    let now = micros(OffsetDateTime::now_utc());
    // Hash order, as everywhere chunk rows are written; each hash once.
    let unique = unique_by_hash(&refs);
    let mut live = std::collections::HashMap::with_capacity(unique.len());
    for (hash, len) in &unique {
        let key = hash.as_bytes().as_slice();
        // A new chunk (the common case) in one statement; a known one is looked at.
        let inserted = conn
            .prepare_cached(
                "INSERT INTO chunks (hash, size, state, created_at, touched_at)
                 VALUES (?1, ?2, 'live', ?3, ?3) ON CONFLICT (hash) DO NOTHING",
            )?
            .execute(params![key, to_i64(*len, "chunk length")?, now])?;
        if inserted == 1 {
            live.insert(*hash, false);
            continue;
        }
        let state: String = conn
            .prepare_cached("SELECT state FROM chunks WHERE hash = ?1")?
            .query_row(params![key], |r| r.get(0))?;
        if state == "deleting" {
            return Err(MetaError::ChunkBusy { id: *hash });
        }
        live.insert(*hash, state == "live");
        conn.prepare_cached("UPDATE chunks SET state = 'live', touched_at = ?2 WHERE hash = ?1")?
            .execute(params![key, now])?;
    }
    if let Some(owner) = u.owner {
        charge(conn, owner, c.size)?;
    }
    let record = insert_committed(conn, u, c, rows.len() as u64, false)?;
    let id = u.id.as_uuid().as_bytes().as_slice();
    let mut insert = conn.prepare_cached(
        "INSERT INTO file_chunks (file_id, idx, byte_offset, byte_length, hash)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (idx, off, len, hash) in &rows {
        insert.execute(params![id, idx, off, len, hash.as_bytes().as_slice()])?;
    }
    let manifest = refs
        .iter()
        .map(|r| ChunkEntry {
            index: r.index,
            offset: r.offset,
            length: r.length,
            hash: r.hash,
        })
        .collect();
    Ok((record, chunk_states(chunks, &live), manifest))
}

/// Adds `size` to the owner's `bytes_used`, or fails with [`MetaError::QuotaExceeded`] (nothing
/// changed) when that would pass the quota.
fn charge(conn: &Connection, owner: AccountId, size: u64) -> Result<()> {
    let owner = owner.0.as_bytes().as_slice();
    let charged = conn
        .prepare_cached(
            "UPDATE accounts SET bytes_used = bytes_used + ?2
             WHERE id = ?1 AND (quota_bytes IS NULL OR bytes_used + ?2 <= quota_bytes)",
        )?
        .execute(params![owner, to_i64(size, "file size")?])?;
    if charged != 1 {
        let (quota, used): (Option<i64>, i64) = conn
            .prepare_cached("SELECT quota_bytes, bytes_used FROM accounts WHERE id = ?1")?
            .query_row(params![owner], |r| Ok((r.get(0)?, r.get(1)?)))?;
        return Err(MetaError::QuotaExceeded {
            quota: quota.unwrap_or(0) as u64,
            used: used as u64,
            size,
        });
    }
    Ok(())
}

/// Makes an open upload a visible file (see `MetaStore::commit_upload`).
fn commit_tx(conn: &Connection, upload: FileId, c: &CommitFile) -> Result<FileRecord> {
    let id = upload.as_uuid().as_bytes().as_slice();
    let size = to_i64(c.size, "file size")?;
    let (state, chunk_size, owner) = lock_upload(conn, upload)?;
    if state != UploadState::Open {
        return Err(MetaError::NotOpen {
            state: state.as_str().into(),
        });
    }
    let n = chunkvault_types::chunk_count(c.size, chunk_size as u64) as i64;
    let (count, total, misplaced): (i64, i64, i64) = conn
        .prepare_cached(
            "SELECT COUNT(*),
                    COALESCE(SUM(byte_length), 0),
                    COALESCE(SUM(CASE WHEN idx < 0 OR idx >= ?2
                                        OR byte_offset <> idx * ?3
                                        OR byte_length < 1 OR byte_length > ?3
                                        OR (idx < ?2 - 1 AND byte_length <> ?3)
                                      THEN 1 ELSE 0 END), 0)
             FROM file_chunks WHERE file_id = ?1",
        )?
        .query_row(params![id, n, chunk_size], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    check_layout(
        Layout {
            chunks: n.into(),
            chunk_size: chunk_size.into(),
            size: size.into(),
        },
        "recorded",
        [count.into(), total.into(), misplaced.into()],
    )?;
    if let Some(owner) = owner {
        charge(conn, owner, c.size)?;
    }
    conn.prepare_cached(
        "UPDATE chunks SET state = 'live'
         WHERE state = 'pending' AND hash IN (SELECT hash FROM file_chunks WHERE file_id = ?1)",
    )?
    .execute(params![id])?;
    let sql = format!(
        "UPDATE files SET state = 'committed', name = ?2, content_type = ?3, size = ?4,
           chunk_count = ?5, sha256 = ?6, committed_at = ?7, blake3 = ?8
         WHERE id = ?1 RETURNING {FILE_COLUMNS}"
    );
    let record = conn.prepare_cached(&sql)?.query_row(
        params![
            id,
            c.name,
            c.content_type,
            size,
            n,
            c.digest.sha256(),
            micros(c.committed_at),
            c.digest.blake3()
        ],
        file_record,
    )?;
    Ok(record)
}

/// Opens an upload.
fn insert_upload(conn: &Connection, u: &NewUpload) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO files (id, state, name, content_type, chunk_size, created_at, expires_at, declared_size, owner)
         VALUES (?1, 'open', ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        u.id.as_uuid().as_bytes().as_slice(),
        u.name,
        u.content_type,
        to_i64(u.chunk_size, "chunk size")?,
        micros(u.created_at),
        micros(u.expires_at),
        u.declared_size
            .map(|d| to_i64(d, "declared size"))
            .transpose()?,
        u.owner.map(|o| o.0.as_bytes().to_vec()),
    ])?;
    Ok(())
}

/// Records an open upload's references to `chunks` (see `MetaStore::add_chunks`).
fn add_chunks_tx(
    conn: &Connection,
    upload: FileId,
    chunks: &[PendingChunk],
) -> Result<Vec<ChunkState>> {
    if chunks.is_empty() {
        return Ok(Vec::new());
    }
    let rows = chunks.iter().map(chunk_row).collect::<Result<Vec<_>>>()?;
    let now = micros(OffsetDateTime::now_utc());
    match lock_upload(conn, upload)?.0 {
        UploadState::Open => {}
        other => {
            return Err(MetaError::NotOpen {
                state: other.as_str().into(),
            });
        }
    }
    // Hash order, as the SQL store locks chunk rows; each hash once.
    let unique = unique_by_hash(chunks);
    let mut live = std::collections::HashMap::with_capacity(unique.len());
    {
        let mut upsert = conn.prepare_cached(
            "INSERT INTO chunks (hash, size, state, created_at, touched_at)
             VALUES (?1, ?2, 'pending', ?3, ?3)
             ON CONFLICT (hash) DO UPDATE SET touched_at = excluded.touched_at
             RETURNING state",
        )?;
        for (hash, len) in &unique {
            let state: String = upsert.query_row(
                params![
                    hash.as_bytes().as_slice(),
                    to_i64(*len, "chunk length")?,
                    now
                ],
                |r| r.get(0),
            )?;
            if state == "deleting" {
                // The savepoint rolls back: nothing recorded.
                return Err(MetaError::ChunkBusy { id: *hash });
            }
            live.insert(*hash, state == "live");
        }
    }
    // One reference per index; a later entry for the same index wins.
    let mut refs: Vec<&(i64, i64, i64, ChunkId)> = rows.iter().collect();
    refs.sort_by_key(|r| r.0);
    refs.reverse();
    refs.dedup_by_key(|r| r.0);
    let mut insert = conn.prepare_cached(
        "INSERT INTO file_chunks (file_id, idx, byte_offset, byte_length, hash)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (file_id, idx) DO UPDATE SET byte_offset = excluded.byte_offset,
           byte_length = excluded.byte_length, hash = excluded.hash",
    )?;
    for (idx, off, len, hash) in refs {
        insert.execute(params![
            upload.as_uuid().as_bytes().as_slice(),
            idx,
            off,
            len,
            hash.as_bytes().as_slice()
        ])?;
    }
    Ok(chunk_states(chunks, &live))
}

/// The upload's state, chunk size and owner; `NotFound` when there is no such upload.
fn lock_upload(conn: &Connection, id: FileId) -> Result<(UploadState, i64, Option<AccountId>)> {
    let row = conn
        .prepare_cached("SELECT state, chunk_size, owner FROM files WHERE id = ?1")?
        .query_row(params![id.as_uuid().as_bytes().as_slice()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<Vec<u8>>>(2)?,
            ))
        })
        .optional()?;
    let (state, chunk_size, owner) = row.ok_or(MetaError::NotFound)?;
    let state = UploadState::parse(&state).ok_or_else(|| MetaError::Other {
        source: format!("unknown upload state {state:?}").into(),
    })?;
    let owner = owner.map(|o| uuid(&o)).transpose()?.map(AccountId);
    Ok((state, chunk_size, owner))
}

pub(crate) fn file_record(r: &Row<'_>) -> rusqlite::Result<FileRecord> {
    let blob_uuid = |i: usize, v: Vec<u8>| {
        uuid::Uuid::from_slice(&v).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Blob, Box::new(e))
        })
    };
    Ok(FileRecord {
        id: FileId::from_uuid(blob_uuid(0, r.get(0)?)?),
        name: r.get(1)?,
        content_type: r.get(2)?,
        size: r.get::<_, i64>(3)? as u64,
        chunk_size: r.get::<_, i64>(4)? as u64,
        chunk_count: r.get::<_, i64>(5)? as u64,
        digest: FileDigest::from_parts(r.get(11)?, r.get(6)?).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                6,
                rusqlite::types::Type::Null,
                "a committed file's row has no digest".into(),
            )
        })?,
        created_at: from_micros(r.get(7)?),
        committed_at: from_micros(r.get(8)?),
        owner: r
            .get::<_, Option<Vec<u8>>>(9)?
            .map(|o| blob_uuid(9, o))
            .transpose()?
            .map(AccountId),
        inline: r.get(10)?,
    })
}

fn uuid(bytes: &[u8]) -> Result<uuid::Uuid> {
    uuid::Uuid::from_slice(bytes).map_err(|e| MetaError::Other {
        source: Box::new(e),
    })
}

/// A unit of work for the thread.
/// How a job ended inside its batch's transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ran {
    /// Its writes stand (or, in a savepoint, were undone after it failed).
    Kept,
    /// It failed outside a savepoint: the transaction holds its partial writes and must roll
    /// back.
    FailedAlone,
    /// The transaction can no longer be trusted (a savepoint could not be rolled back).
    Unsound,
}

trait Job: Send {
    /// Runs inside the batch's transaction, in a savepoint of its own when `savepoint` (a
    /// batch of several: a failing job undoes only its own writes). A job alone in its batch
    /// needs none: when it fails, the whole transaction rolls back, which undoes the same.
    fn run(&mut self, conn: &Connection, savepoint: bool) -> Ran;
    /// Answers the caller once the batch has ended; `committed` is how it ended.
    fn answer(self: Box<Self>, committed: std::result::Result<(), &rusqlite::Error>);
}

struct Call<F, T> {
    work: Option<F>,
    outcome: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<F, T> Job for Call<F, T>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T> + Send,
{
    fn run(&mut self, conn: &Connection, savepoint: bool) -> Ran {
        let Some(work) = self.work.take() else {
            return Ran::Kept;
        };
        if !savepoint {
            let outcome = work(conn);
            let ran = if outcome.is_ok() {
                Ran::Kept
            } else {
                Ran::FailedAlone
            };
            self.outcome = Some(outcome);
            return ran;
        }
        if let Err(e) = conn
            .prepare_cached("SAVEPOINT job")
            .and_then(|mut s| s.execute([]))
        {
            self.outcome = Some(Err(error(e)));
            return Ran::Kept;
        }
        let outcome = work(conn);
        let end = if outcome.is_ok() {
            conn.prepare_cached("RELEASE job")
                .and_then(|mut s| s.execute([]))
        } else {
            conn.prepare_cached("ROLLBACK TO job")
                .and_then(|mut s| s.execute([]))
                .and_then(|_| conn.prepare_cached("RELEASE job"))
                .and_then(|mut s| s.execute([]))
        };
        match end {
            Ok(_) => {
                self.outcome = Some(outcome);
                Ran::Kept
            }
            Err(e) => {
                self.outcome = Some(Err(error(e)));
                Ran::Unsound
            }
        }
    }

    fn answer(self: Box<Self>, committed: std::result::Result<(), &rusqlite::Error>) {
        let outcome = match (self.outcome, committed) {
            // Its own failure stands: its savepoint was rolled back either way.
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(v)), Ok(())) => Ok(v),
            (Some(Ok(_)), Err(e)) | (None, Err(e)) => Err(error_ref(e)),
            (None, Ok(())) => Err(MetaError::Other {
                source: "the job did not run".into(),
            }),
        };
        // The caller may have gone away; its work is committed all the same.
        let _ = self.reply.send(outcome);
    }
}

/// The thread: one transaction per batch of waiting jobs.
fn serve(conn: Connection, queue: mpsc::Receiver<Box<dyn Job>>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let ended = run_batch(&conn, &mut batch);
        if let Err(e) = &ended {
            tracing::warn!(error = %e, jobs = batch.len(), "metadata batch rolled back");
        }
        for job in batch {
            job.answer(ended.as_ref().map(|_| ()));
        }
    }
}

fn run_batch(conn: &Connection, batch: &mut [Box<dyn Job>]) -> rusqlite::Result<()> {
    conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    let alone = batch.len() == 1;
    let mut ran = Ran::Kept;
    for job in batch.iter_mut() {
        ran = job.run(conn, !alone);
        if ran == Ran::Unsound {
            break;
        }
    }
    let end = match ran {
        Ran::Kept => conn.prepare_cached("COMMIT")?.execute([]).map(|_| ()),
        // Its own error is its answer; there is nothing else to commit.
        Ran::FailedAlone => conn.prepare_cached("ROLLBACK")?.execute([]).map(|_| ()),
        Ran::Unsound => Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
            Some("a savepoint could not be rolled back".into()),
        )),
    };
    if end.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    end
}

fn stopped() -> MetaError {
    MetaError::Unavailable {
        source: "the SQLite writer thread has stopped".into(),
    }
}

fn is_unavailable(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as C;
    matches!(
        e.sqlite_error_code(),
        Some(
            C::DatabaseBusy | C::DatabaseLocked | C::SystemIoFailure | C::CannotOpen | C::ReadOnly
        )
    )
}

/// What a SQLite error means to callers: the variant that carries it.
fn variant(e: &rusqlite::Error) -> fn(crate::BoxError) -> MetaError {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        |source| MetaError::StorageFull { source }
    } else if is_unavailable(e) {
        |source| MetaError::Unavailable { source }
    } else {
        |source| MetaError::Other { source }
    }
}

fn error(e: rusqlite::Error) -> MetaError {
    variant(&e)(Box::new(e))
}

/// The batch's one error, for each of its callers.
fn error_ref(e: &rusqlite::Error) -> MetaError {
    variant(e)(e.to_string().into())
}

impl From<rusqlite::Error> for MetaError {
    fn from(e: rusqlite::Error) -> Self {
        error(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite's own "database or disk is full" (here from `max_page_count`, which SQLite
    /// reports exactly as a full disk) is `StorageFull`, for the failing job and for the
    /// other jobs of its batch.
    #[test]
    fn a_full_database_is_storage_full() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (b BLOB); PRAGMA max_page_count = 8;")
            .unwrap();
        let full = (0..64)
            .find_map(|_| {
                conn.execute("INSERT INTO t VALUES (zeroblob(4000))", [])
                    .err()
            })
            .expect("the insert fails once the page limit is reached");
        assert!(matches!(error_ref(&full), MetaError::StorageFull { .. }));
        assert!(matches!(error(full), MetaError::StorageFull { .. }));

        let other = conn
            .execute("INSERT INTO missing VALUES (1)", [])
            .unwrap_err();
        assert!(matches!(error(other), MetaError::Other { .. }));
    }
}
