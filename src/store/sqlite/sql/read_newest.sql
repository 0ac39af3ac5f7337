-- The newest ?4 readable entries of a live list (?2: now), newest first:
-- only the newest ?3 (keep) count, whether or not maintenance trimmed the
-- rest yet.
SELECT x.entry FROM session_trail_history x
WHERE x.sid = ?1
  AND x.seq > (SELECT max(l.seq) FROM session_trail_history l WHERE l.sid = ?1) - ?3
  AND EXISTS (SELECT 1 FROM session_trail_history_heads h WHERE h.sid = ?1 AND h.expires_at > ?2)
ORDER BY x.seq DESC
LIMIT ?4
