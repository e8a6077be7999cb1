-- chunkvault metadata schema, SQLite dialect. Append-only: never edit a migration that shipped.
-- Times are unix microseconds (UTC) in both dialects.

CREATE TABLE files (
    id           BLOB PRIMARY KEY,           -- UUIDv7: sorts by creation time
    state        TEXT NOT NULL CHECK (state IN ('open', 'committed', 'aborted', 'expired')),
    name         TEXT NOT NULL,
    content_type TEXT NOT NULL,
    chunk_size   INTEGER NOT NULL CHECK (chunk_size > 0),
    size         INTEGER,                    -- set at commit
    chunk_count  INTEGER,                    -- set at commit
    sha256       TEXT,                       -- set at commit
    created_at   INTEGER NOT NULL,
    committed_at INTEGER,
    expires_at   INTEGER NOT NULL            -- for open uploads
) WITHOUT ROWID;

CREATE INDEX files_committed ON files (id) WHERE state = 'committed';
CREATE INDEX files_open_expiry ON files (expires_at) WHERE state = 'open';

-- One row per distinct chunk. state: 'pending' (a reference exists, the blob may not be written
-- yet), 'live' (a committed upload wrote it), 'deleting' (claimed by GC: its blob is being
-- removed; uploads wait for the row to go before writing it again).
CREATE TABLE chunks (
    hash       BLOB PRIMARY KEY,
    size       INTEGER NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('pending', 'live', 'deleting')),
    created_at INTEGER NOT NULL,
    touched_at INTEGER NOT NULL              -- last time a reference was added or dropped
) WITHOUT ROWID;

-- The manifest of each file, and the pending references of open uploads.
CREATE TABLE file_chunks (
    file_id     BLOB NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    byte_offset INTEGER NOT NULL,
    byte_length INTEGER NOT NULL,
    hash        BLOB NOT NULL REFERENCES chunks (hash),
    PRIMARY KEY (file_id, idx)
) WITHOUT ROWID;

CREATE INDEX file_chunks_hash ON file_chunks (hash);

-- Leases for work that one node at a time must do (GC).
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
