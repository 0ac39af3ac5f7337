-- Deletes a list's entries up to seq ?2, and records the new lowest seq.
DELETE FROM session_trail_history WHERE sid = ?1 AND seq <= ?2
