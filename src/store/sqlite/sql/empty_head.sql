-- An expired list whose erasure is still remembered: empty, kept.
UPDATE session_trail_history_heads SET low_seq = 1 WHERE sid = ?1
