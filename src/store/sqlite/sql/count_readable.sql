-- How many entries of a live list a read would show (?2: now, ?3: keep).
SELECT count(*) FROM session_trail_history x
WHERE x.sid = ?1
  AND x.seq > (SELECT max(l.seq) FROM session_trail_history l WHERE l.sid = ?1) - ?3
  AND EXISTS (SELECT 1 FROM session_trail_history_heads h WHERE h.sid = ?1 AND h.expires_at > ?2)
