-- Records ($1: their sids), also while expired until they are evicted
-- ($2: now minus the linger). The loads of concurrent requests are
-- answered by one statement.
SELECT sid, token_hash, replaced_hash, replaced_at, user_id, privilege, data::text,
       created, last_seen, idle_deadline, absolute_deadline, device, network
FROM {schema}.session_trail_sessions
WHERE sid = ANY($1) AND expires_at > $2
