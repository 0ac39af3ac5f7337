-- Drops up to ?2 claims lapsed by ?1.
DELETE FROM session_trail_claims WHERE (sid, kind) IN (
    SELECT sid, kind FROM session_trail_claims WHERE until <= ?1 LIMIT ?2)
