-- Deletes up to ?3 of a list's entries up to seq ?2, oldest first
-- (trimmed_head.sql then records the new lowest seq).
DELETE FROM session_trail_history WHERE id IN (
    SELECT id FROM session_trail_history WHERE sid = ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3)
