UPDATE session_trail_history_heads SET low_seq = ?2 + 1 WHERE sid = ?1
