-- A list's heads row: ?2 the lowest seq kept, ?3 the expiry; an erasure
-- stays remembered.
INSERT INTO session_trail_history_heads (sid, low_seq, expires_at) VALUES (?1, ?2, ?3)
ON CONFLICT (sid) DO UPDATE SET low_seq = excluded.low_seq, expires_at = excluded.expires_at
