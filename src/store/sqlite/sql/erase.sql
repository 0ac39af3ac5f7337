-- After an erasure: an empty list, the erasure remembered until ?2 (also
-- its expiry, so maintenance finds the row only once it lapses).
INSERT INTO session_trail_history_heads (sid, low_seq, expires_at, erased_until)
VALUES (?1, 1, ?2, ?2)
ON CONFLICT (sid) DO UPDATE SET
    low_seq = 1, expires_at = excluded.expires_at, erased_until = excluded.erased_until
