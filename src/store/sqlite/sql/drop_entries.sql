-- Every row of a session's history.
DELETE FROM session_trail_history WHERE sid = ?1
