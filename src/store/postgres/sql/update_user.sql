-- update.sql for a change of user ($5 is true): the login's claim on a
-- place under the session limit ends with it, in the same statement.
WITH updated AS (
    UPDATE {schema}.session_trail_sessions SET
        data = (data - $3::text[]) || $4::text::jsonb,
        user_id = CASE WHEN $5::bool THEN $6::text ELSE user_id END,
        privilege = CASE WHEN $7::bool THEN $8::text ELSE privilege END,
        replaced_hash = CASE WHEN $9::bytea IS NULL THEN replaced_hash ELSE token_hash END,
        replaced_at = CASE WHEN $9::bytea IS NULL THEN replaced_at ELSE $10::bigint END,
        token_hash = coalesce($9::bytea, token_hash),
        last_seen = coalesce($11::bigint, last_seen),
        idle_deadline = coalesce($12::bigint, idle_deadline),
        device = CASE WHEN $13::bool THEN $14::text ELSE device END,
        network = CASE WHEN $15::bool THEN $16::text ELSE network END
    WHERE sid = $1 AND token_hash = $2 AND expires_at > $17
    RETURNING sid
), unclaimed AS (
    DELETE FROM {schema}.session_trail_claims c USING updated u
    WHERE c.sid = u.sid AND c.kind = 0
)
SELECT count(*) FROM updated
