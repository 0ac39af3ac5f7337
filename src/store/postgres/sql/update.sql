-- One request's changes, applied only to a live record holding the token
-- hash $2. Data keys are changed one by one: removed ($3), then written
-- ($4, an object of the changed keys), so concurrent requests that write
-- different keys both survive. Every SET expression reads the row as it
-- was, so the rotation ($9) moves the old hash to `replaced_hash`. The
-- number of rows updated (0 or 1) is the answer. `update_user.sql` is the
-- same for a change of user.
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
