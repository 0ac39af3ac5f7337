DELETE FROM session_trail_claims WHERE sid = ?1 AND kind = 1
