-- Authentication and authorization: accounts, API keys, the secret presigned links are signed
-- with, and an owner on every file and upload. Append-only: never edit a migration that shipped.

-- role: 'user' or 'admin'. quota_bytes NULL: no quota. bytes_used: the sizes of the account's
-- committed files, charged in the commit's transaction and credited back on delete.
CREATE TABLE accounts (
    id          BLOB PRIMARY KEY,            -- UUIDv7
    name        TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL CHECK (role IN ('user', 'admin')),
    quota_bytes INTEGER CHECK (quota_bytes IS NULL OR quota_bytes >= 0),
    bytes_used  INTEGER NOT NULL DEFAULT 0 CHECK (bytes_used >= 0),
    created_at  INTEGER NOT NULL,
    disabled    BOOLEAN NOT NULL DEFAULT FALSE
) WITHOUT ROWID;

-- A key is `cvk_<id>_<secret>`; only SHA-256 of the secret is kept (the secret is 256 random
-- bits, so a plain hash cannot be brute-forced).
CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    account_id   BLOB NOT NULL REFERENCES accounts (id),
    name         TEXT NOT NULL,
    secret_hash  BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER,
    last_used_at INTEGER
) WITHOUT ROWID;

CREATE INDEX api_keys_account ON api_keys (account_id);

-- One row: the HMAC secret of presigned links and its generation. Rotating it replaces both,
-- which invalidates every link signed before.
CREATE TABLE link_secret (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL,
    secret     BLOB NOT NULL,
    created_at INTEGER NOT NULL
);

-- The account that created the upload or file. NULL for files from before authentication
-- existed (and for uploads made with auth off): only admins see those.
ALTER TABLE files ADD COLUMN owner BLOB REFERENCES accounts (id);

CREATE INDEX files_owner_committed ON files (owner, id) WHERE state = 'committed';
