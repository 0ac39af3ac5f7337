-- Up to ?2 histories expired by ?1 that still hold something to drop:
-- their rows and heads, or only their rows while an erasure is remembered.
SELECT sid, coalesce(erased_until, 0) > ?1 FROM session_trail_history_heads
WHERE expires_at <= ?1 AND (head IS NOT NULL OR coalesce(erased_until, 0) <= ?1)
ORDER BY expires_at LIMIT ?2
