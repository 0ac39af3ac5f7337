DELETE FROM session_trail_history_heads WHERE sid = ?1
