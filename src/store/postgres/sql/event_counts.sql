-- Event counts (see `session_trail::analytics`): the period of day number
-- d is (d + $1) / $2; $3 and $4 the time range [from, until); $5 the names
-- counted, or NULL for all; $6 now and $7 keep, as in `funnel.sql`.
-- Answers (name, period, count).
SELECT x.name,
    ((((x.ts AT TIME ZONE 'UTC')::date - DATE '1970-01-01') + $1::int) / $2::int)::bigint AS p,
    count(*)
FROM {schema}.session_trail_history x
JOIN {schema}.session_trail_history_heads h ON h.sid = x.sid
WHERE x.kind = 'event' AND x.name IS NOT NULL AND x.ts >= $3 AND x.ts < $4
    AND ($5::text[] IS NULL OR x.name = ANY ($5))
    AND h.head IS NOT NULL AND h.expires_at > $6
    AND x.seq > h.last_seq - $7 AND x.seq <= h.last_seq
GROUP BY 1, 2
