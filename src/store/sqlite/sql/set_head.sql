-- Moves a list's head (?2, ?3 its seq); ?4 the lowest seq kept, ?5 the
-- expiry; an erasure stays remembered.
INSERT INTO session_trail_history_heads (sid, head, last_seq, low_seq, expires_at)
VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (sid) DO UPDATE SET
    head = excluded.head, last_seq = excluded.last_seq,
    low_seq = excluded.low_seq, expires_at = excluded.expires_at
