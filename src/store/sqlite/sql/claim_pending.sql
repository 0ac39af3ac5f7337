-- The user's (?1) logins in progress, other than ?2, whose session does
-- not count yet (not live, not being ended; ?3: now).
SELECT count(*) FROM session_trail_claims c
WHERE c.user_id = ?1 AND c.kind = 0 AND c.sid <> ?2 AND c.until > ?3
  AND c.sid NOT IN (SELECT s.sid FROM session_trail_sessions s
                    WHERE s.user_id = ?1 AND s.expires_at > ?3)
  AND c.sid NOT IN (SELECT e.sid FROM session_trail_claims e
                    WHERE e.user_id = ?1 AND e.kind = 1 AND e.until > ?3)
