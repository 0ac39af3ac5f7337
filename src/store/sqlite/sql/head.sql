-- A session's heads row.
SELECT low_seq, expires_at, erased_until FROM session_trail_history_heads WHERE sid = ?1
