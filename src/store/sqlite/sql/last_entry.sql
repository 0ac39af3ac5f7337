-- A session's newest stored entry and its seq (the head is its tag).
SELECT seq, entry FROM session_trail_history WHERE sid = ?1 ORDER BY seq DESC LIMIT 1
