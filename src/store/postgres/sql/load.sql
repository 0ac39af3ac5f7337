-- Records ($1: their sids); the caller keeps those not yet evicted (an
-- expired record is kept an hour to record why its session ended). The
-- loads of concurrent requests are answered by one statement. Only the
-- primary key can answer it: a condition on the expiry here would let a
-- cached generic plan scan the expiry index instead, once the table is
-- large.
SELECT sid, token_hash, replaced_hash, replaced_at, user_id, privilege, data::text,
       created, last_seen, idle_deadline, absolute_deadline, device, network
FROM {schema}.session_trail_sessions
WHERE sid = ANY($1)
