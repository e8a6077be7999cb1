-- Upload sessions (issue 4): the total size a client announced when it opened an upload, so a
-- resumable upload (session API, tus Upload-Length) knows its end after a restart. NULL when
-- the size was not announced. Append-only: never edit a migration that shipped.
ALTER TABLE files ADD COLUMN declared_size INTEGER;
