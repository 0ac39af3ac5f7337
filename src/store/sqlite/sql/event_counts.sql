-- Event counts (see `session_trail::analytics`): the period of day number
-- d is (d + ?1) / ?2; ?3 and ?4 the time range [from, until); ?5 the names
-- counted (a JSON array), or NULL for all. Answers (name, period, count).
SELECT name, (ts / 86400000 + ?1) / ?2 AS p, count(*)
FROM session_trail_history
WHERE kind = 'event' AND ts >= ?3 AND ts < ?4
    AND (?5 IS NULL OR name IN (SELECT value FROM json_each(?5)))
GROUP BY 1, 2
