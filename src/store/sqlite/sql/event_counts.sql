-- Event counts (see `session_trail::analytics`): the period of day number
-- d is (d + ?1) / ?2; ?3 and ?4 the time range [from, until); ?5 the names
-- counted (a JSON array), or NULL for all; ?6 now and ?7 keep, as in
-- `cohorts.sql`. Answers (name, period, count).
SELECT x.name, (x.ts / 86400000 + ?1) / ?2 AS p, count(*)
FROM session_trail_history x
JOIN session_trail_history_heads h ON h.sid = x.sid AND h.expires_at > ?6
WHERE x.kind = 'event' AND x.name IS NOT NULL AND x.ts >= ?3 AND x.ts < ?4
    AND (?5 IS NULL OR x.name IN (SELECT value FROM json_each(?5)))
    AND x.seq > (SELECT max(m.seq) FROM session_trail_history m WHERE m.sid = x.sid) - ?7
GROUP BY 1, 2
