-- A new record: a plain INSERT, so an id that exists is a unique-key
-- violation, never an overwrite. With a user, the login's claimed place
-- (if any) is now the session itself.
WITH unclaimed AS (
    DELETE FROM {schema}.session_trail_claims
    WHERE sid = $1 AND kind = 0 AND $5::text IS NOT NULL
)
INSERT INTO {schema}.session_trail_sessions
    (sid, token_hash, replaced_hash, replaced_at, user_id, privilege, data,
     created, last_seen, idle_deadline, absolute_deadline, device, network)
VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8, $9, $10, $11, $12, $13)
