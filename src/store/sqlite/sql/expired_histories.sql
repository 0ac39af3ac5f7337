-- Up to ?2 histories expired by ?1: their rows go, and their heads row
-- too unless an erasure is still remembered (then it is kept, empty, until
-- that lapses).
SELECT sid, coalesce(erased_until, 0) > ?1 FROM session_trail_history_heads
WHERE expires_at <= ?1
  AND (coalesce(erased_until, 0) <= ?1
       OR EXISTS (SELECT 1 FROM session_trail_history x WHERE x.sid = session_trail_history_heads.sid))
ORDER BY expires_at LIMIT ?2
