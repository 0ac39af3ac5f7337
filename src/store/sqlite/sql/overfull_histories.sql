-- Up to ?2 lists holding entries beyond their newest ?1 (keep).
SELECT sid, last_seq - ?1 FROM session_trail_history_heads
WHERE head IS NOT NULL AND last_seq - ?1 >= low_seq
LIMIT ?2
