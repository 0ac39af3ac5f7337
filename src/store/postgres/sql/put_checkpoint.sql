-- $1 writer, $2 counter, $3 at, $4 body, $5 the oldest time kept.
WITH trimmed AS (
    DELETE FROM {schema}.session_trail_checkpoints WHERE at < $5
)
INSERT INTO {schema}.session_trail_checkpoints (writer, counter, at, body)
VALUES ($1, $2, $3, $4)
ON CONFLICT (writer, counter) DO NOTHING
