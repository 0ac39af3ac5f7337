-- A record, also while expired until it is evicted (?2: now minus the
-- linger).
SELECT sid, token_hash, replaced_hash, replaced_at, user_id, privilege, data,
       created, last_seen, idle_deadline, absolute_deadline, device, network
FROM session_trail_sessions
WHERE sid = ?1 AND expires_at > ?2
