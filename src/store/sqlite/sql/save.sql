-- Writes back a record an update changed (read, changed and written in
-- one write transaction, so no other writer comes between).
UPDATE session_trail_sessions SET
    token_hash = ?2, replaced_hash = ?3, replaced_at = ?4, user_id = ?5, privilege = ?6,
    data = ?7, last_seen = ?8, idle_deadline = ?9, device = ?10, network = ?11
WHERE sid = ?1
