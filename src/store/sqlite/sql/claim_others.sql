-- The user's (?1) live sessions other than ?2 that are not being ended
-- for another login, oldest first (?3: now).
SELECT s.sid FROM session_trail_sessions s
WHERE s.user_id = ?1 AND s.sid <> ?2 AND s.expires_at > ?3
  AND s.sid NOT IN (SELECT c.sid FROM session_trail_claims c
                    WHERE c.user_id = ?1 AND c.kind = 1 AND c.until > ?3)
ORDER BY s.created, s.sid
