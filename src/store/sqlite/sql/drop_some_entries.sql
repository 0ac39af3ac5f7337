-- Deletes up to ?2 rows of a session's history (maintenance's budget).
DELETE FROM session_trail_history WHERE id IN (
    SELECT id FROM session_trail_history WHERE sid = ?1 LIMIT ?2)
