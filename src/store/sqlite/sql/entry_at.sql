-- One stored entry.
SELECT entry FROM session_trail_history WHERE sid = ?1 AND seq = ?2
