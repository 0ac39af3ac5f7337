-- The newest ?4 readable entries of a live list, newest first: only the
-- newest ?3 (keep) count, whether or not maintenance trimmed the rest yet.
SELECT x.entry
FROM session_trail_history_heads h
JOIN session_trail_history x
    ON x.sid = h.sid AND x.seq > h.last_seq - ?3 AND x.seq <= h.last_seq
WHERE h.sid = ?1 AND h.head IS NOT NULL AND h.expires_at > ?2
ORDER BY x.seq DESC
LIMIT ?4
