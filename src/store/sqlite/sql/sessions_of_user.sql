-- A user's live sessions, oldest first (the index on (user_id, created)).
SELECT sid, token_hash, replaced_hash, replaced_at, user_id, privilege, data,
       created, last_seen, idle_deadline, absolute_deadline, device, network
FROM session_trail_sessions
WHERE user_id = ?1 AND expires_at > ?2
ORDER BY created, sid
