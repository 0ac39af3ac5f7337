-- Gives back a login's claimed place ($2) and the places of the sessions
-- it was to end ($3).
DELETE FROM {schema}.session_trail_claims
WHERE (user_id = $1 AND sid = $2 AND kind = 0) OR (kind = 1 AND sid = ANY($3))
