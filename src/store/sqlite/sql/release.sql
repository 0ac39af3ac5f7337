-- Gives back a login's claimed place (?1 the user, ?2 the session).
DELETE FROM session_trail_claims WHERE user_id = ?1 AND sid = ?2 AND kind = 0
