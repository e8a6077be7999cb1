-- The whole-file digest is BLAKE3 (what `b3sum` prints) for files committed from now on: an
-- upload already hashes every chunk with BLAKE3, and a SHA-256 of the whole file beside it was
-- most of an upload's CPU. Files committed before keep their `sha256`; a committed file has
-- exactly one of the two.
-- Append-only: never edit a migration that shipped.
ALTER TABLE files ADD COLUMN blake3 TEXT;
