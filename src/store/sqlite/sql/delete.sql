-- Deletes a record (delete_unclaim.sql then drops its place among
-- sessions being ended for a login).
DELETE FROM session_trail_sessions WHERE sid = ?1
