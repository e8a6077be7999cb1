-- Small files kept in the metadata store itself: the content of a committed file of at most
-- `inline_max` bytes, uploaded whole, instead of a chunk row, a manifest row and a blob (see
-- ARCHITECTURE.md, "Small files kept inline"). `files.is_inline` says which files; their
-- content is a row of `inline_data`, deleted with the file (listing files never reads it).
-- Append-only: never edit a migration that shipped.
ALTER TABLE files ADD COLUMN is_inline BOOLEAN NOT NULL DEFAULT FALSE;
CREATE TABLE inline_data (
    file_id UUID PRIMARY KEY REFERENCES files (id) ON DELETE CASCADE,
    data    BYTEA NOT NULL
);
