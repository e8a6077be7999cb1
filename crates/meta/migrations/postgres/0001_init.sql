-- chunkvault metadata schema, PostgreSQL dialect. Append-only: never edit a migration that shipped.
-- Times are unix microseconds (UTC) in both dialects.

CREATE TABLE files (
    id           UUID PRIMARY KEY,           -- UUIDv7: sorts by creation time
    state        TEXT NOT NULL CHECK (state IN ('open', 'committed', 'aborted', 'expired')),
    name         TEXT NOT NULL,
    content_type TEXT NOT NULL,
    chunk_size   BIGINT NOT NULL CHECK (chunk_size > 0),
    size         BIGINT,
    chunk_count  BIGINT,
    sha256       TEXT,
    created_at   BIGINT NOT NULL,
    committed_at BIGINT,
    expires_at   BIGINT NOT NULL
);

CREATE INDEX files_committed ON files (id) WHERE state = 'committed';
CREATE INDEX files_open_expiry ON files (expires_at) WHERE state = 'open';

CREATE TABLE chunks (
    hash       BYTEA PRIMARY KEY,
    size       BIGINT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('pending', 'live', 'deleting')),
    created_at BIGINT NOT NULL,
    touched_at BIGINT NOT NULL
);

CREATE TABLE file_chunks (
    file_id     UUID NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    idx         BIGINT NOT NULL,
    byte_offset BIGINT NOT NULL,
    byte_length BIGINT NOT NULL,
    hash        BYTEA NOT NULL REFERENCES chunks (hash),
    PRIMARY KEY (file_id, idx)
);

CREATE INDEX file_chunks_hash ON file_chunks (hash);

CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
