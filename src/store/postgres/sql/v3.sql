-- Schema version 3 of the PostgreSQL store: the history writer's signed
-- checkpoints (`session_trail::history::checkpoint`), one row each, kept
-- for the retention TTL after their time.
CREATE TABLE IF NOT EXISTS {schema}.session_trail_checkpoints (
    writer bytea NOT NULL,
    counter bigint NOT NULL,
    at bigint NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (writer, counter)
);

CREATE INDEX IF NOT EXISTS session_trail_checkpoints_at
    ON {schema}.session_trail_checkpoints (at);
