-- $1 sid, $2 now: when the session's erasure marker lapses, if it has not.
SELECT erased_until FROM {schema}.session_trail_history_heads
WHERE sid = $1 AND erased_until > $2
