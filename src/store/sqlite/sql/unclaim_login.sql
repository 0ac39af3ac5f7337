-- A login's claimed place ends: the session itself now counts.
DELETE FROM session_trail_claims WHERE sid = ?1 AND kind = 0
