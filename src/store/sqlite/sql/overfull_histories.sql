-- The next ?2 lists after ?3 in sid order (maintenance goes through them
-- all, a batch at a time), each with the last seq beyond its newest ?1
-- (keep) and its lowest seq not yet trimmed: entries up to the first are
-- deleted where it is not below the second.
SELECT h.sid, (SELECT max(x.seq) FROM session_trail_history x WHERE x.sid = h.sid) - ?1, h.low_seq
FROM session_trail_history_heads h
WHERE h.sid > ?3
ORDER BY h.sid
LIMIT ?2
