DELETE FROM {schema}.session_trail_user_history WHERE (user_pseudonym, sid) IN (
    SELECT user_pseudonym, sid FROM {schema}.session_trail_user_history
    WHERE until <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)
