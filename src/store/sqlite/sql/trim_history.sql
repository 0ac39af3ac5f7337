-- Deletes a list's entries up to seq ?2 (trimmed_head.sql then records
-- the new lowest seq).
DELETE FROM session_trail_history WHERE sid = ?1 AND seq <= ?2
