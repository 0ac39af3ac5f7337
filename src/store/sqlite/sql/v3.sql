-- Schema version 3 of the SQLite store: the history writer's signed
-- checkpoints (`session_trail::history::checkpoint`), one row each, kept
-- for the retention TTL after their time.
CREATE TABLE IF NOT EXISTS session_trail_checkpoints (
    writer  BLOB NOT NULL,
    counter INTEGER NOT NULL,
    at      INTEGER NOT NULL,
    body    BLOB NOT NULL,
    PRIMARY KEY (writer, counter)
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS session_trail_checkpoints_at
    ON session_trail_checkpoints (at);
