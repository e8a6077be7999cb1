-- Files uploaded without an account (owner NULL) no longer enter the index of an owner's files:
-- no query looks them up by owner, and every such upload changed one more page of the index,
-- one more page for its commit to write to the WAL. `owner = ?` implies `owner IS NOT NULL`,
-- so listing an owner's files uses the index as before. PostgreSQL keeps its index as it is.
-- Append-only: never edit a migration that shipped.
DROP INDEX files_owner_committed;
CREATE INDEX files_owner_committed ON files (owner, id)
    WHERE state = 'committed' AND owner IS NOT NULL;
