-- Drops up to ?2 links lapsed by ?1.
DELETE FROM session_trail_user_history WHERE linked IN (
    SELECT linked FROM session_trail_user_history WHERE until <= ?1 LIMIT ?2)
