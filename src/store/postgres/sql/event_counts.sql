-- Event counts (see `session_trail::analytics`): the period of day number
-- d is (d + $1) / $2; $3 and $4 the time range [from, until); $5 the names
-- counted, or NULL for all. Answers (name, period, count).
SELECT name,
    ((((ts AT TIME ZONE 'UTC')::date - DATE '1970-01-01') + $1::int) / $2::int)::bigint AS p,
    count(*)
FROM {schema}.session_trail_history
WHERE kind = 'event' AND ts >= $3 AND ts < $4
    AND ($5::text[] IS NULL OR name = ANY ($5))
GROUP BY 1, 2
