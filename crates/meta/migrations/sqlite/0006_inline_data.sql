-- Small files kept in the metadata store itself: the content of a committed file of at most
-- `inline_max` bytes, uploaded whole, instead of a chunk row, a manifest row and a blob (see
-- ARCHITECTURE.md, "Small files kept inline"). `files.is_inline` says which files; their
-- content is a row of `inline_data`, deleted with the file.
-- A table of its own with a rowid, not a column of `files`: `files` is WITHOUT ROWID, whose
-- B-tree keeps whole rows in its interior pages too, so kilobytes per row there made lookups
-- several levels deeper (a small download spent a third of its time in them). Here the
-- content sits in the leaves of a rowid table, found through the small `file_id` index.
-- Append-only: never edit a migration that shipped.
ALTER TABLE files ADD COLUMN is_inline INTEGER NOT NULL DEFAULT 0;
CREATE TABLE inline_data (
    file_id BLOB NOT NULL UNIQUE REFERENCES files (id) ON DELETE CASCADE,
    data    BLOB NOT NULL
);
