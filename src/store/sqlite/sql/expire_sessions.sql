-- Evicts up to ?2 records that expired before ?1 (now minus the linger).
DELETE FROM session_trail_sessions WHERE sid IN (
    SELECT sid FROM session_trail_sessions
    WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2)
