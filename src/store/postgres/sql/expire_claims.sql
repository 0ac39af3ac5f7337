DELETE FROM {schema}.session_trail_claims WHERE (sid, kind) IN (
    SELECT sid, kind FROM {schema}.session_trail_claims
    WHERE until <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)
