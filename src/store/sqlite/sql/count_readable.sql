-- How many entries of a live list a read would show (?2: now, ?3: keep).
SELECT count(*)
FROM session_trail_history_heads h
JOIN session_trail_history x
    ON x.sid = h.sid AND x.seq > h.last_seq - ?3 AND x.seq <= h.last_seq
WHERE h.sid = ?1 AND h.head IS NOT NULL AND h.expires_at > ?2
