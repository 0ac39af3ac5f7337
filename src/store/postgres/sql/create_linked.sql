-- create.sql, and in the same statement the session's link in its user's
-- history index ($14: the pseudonym, $15: until when the link lives).
WITH unclaimed AS (
    DELETE FROM {schema}.session_trail_claims
    WHERE sid = $1 AND kind = 0 AND $5::text IS NOT NULL
), linked AS (
    INSERT INTO {schema}.session_trail_user_history AS l (user_pseudonym, sid, until)
    VALUES ($14, $1, $15)
    ON CONFLICT (user_pseudonym, sid) DO UPDATE SET until = greatest(l.until, excluded.until)
)
INSERT INTO {schema}.session_trail_sessions
    (sid, token_hash, replaced_hash, replaced_at, user_id, privilege, data,
     created, last_seen, idle_deadline, absolute_deadline, device, network)
VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8, $9, $10, $11, $12, $13)
