-- A live record holding the token hash ?2 (an update's condition; ?3: now).
SELECT sid, token_hash, replaced_hash, replaced_at, user_id, privilege, data,
       created, last_seen, idle_deadline, absolute_deadline, device, network
FROM session_trail_sessions
WHERE sid = ?1 AND token_hash = ?2 AND expires_at > ?3
