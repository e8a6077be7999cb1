-- Replication and erasure coding: where each copy (or shard) of a chunk lives. One row per
-- (chunk, location): a location holds at most one object per chunk, the copy or one shard.
-- state: 'ok' (written or verified), 'missing' or 'corrupt' (a write could not store it, or a read,
-- a scrub or a repair found it so). shard: NULL for a whole copy, the shard index under erasure
-- coding. Only deployments with several locations write rows; the blobs remain the truth and
-- these rows the index that lets reads and repair go straight to a copy. Rows leave with their
-- chunk (GC). Migration 0003 is another feature's; the gap is intended.
-- Append-only: never edit a migration that shipped.
CREATE TABLE chunk_locations (
    hash        BYTEA NOT NULL REFERENCES chunks (hash) ON DELETE CASCADE,
    location    TEXT NOT NULL,
    shard       BIGINT,
    state       TEXT NOT NULL CHECK (state IN ('ok', 'missing', 'corrupt')),
    verified_at BIGINT NOT NULL,
    PRIMARY KEY (hash, location)
);

-- The chunks with a copy found missing or corrupt, or not written: the repair queue that
-- survives a restart.
CREATE INDEX chunk_locations_bad ON chunk_locations (hash) WHERE state <> 'ok';
