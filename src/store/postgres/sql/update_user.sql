-- update.sql for a change of user ($5 is true): the login's claim on a
-- place under the session limit ends with it, in the same statement.
-- The statement of update.sql stands in the CTE below.
WITH updated AS (
{update}
    RETURNING sid
), unclaimed AS (
    DELETE FROM {schema}.session_trail_claims c USING updated u
    WHERE c.sid = u.sid AND c.kind = 0
)
SELECT count(*) FROM updated
