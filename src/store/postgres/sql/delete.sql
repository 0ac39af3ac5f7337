-- Deletes a record, and its place among sessions being ended for a login.
WITH deleted AS (
    DELETE FROM {schema}.session_trail_sessions WHERE sid = $1 RETURNING sid
), unclaimed AS (
    DELETE FROM {schema}.session_trail_claims WHERE sid = $1 AND kind = 1
)
SELECT count(*) FROM deleted
