-- Cohorts (see `session_trail::analytics`): the period of day number d
-- (days since 1970-01-01, UTC) is (d + $1) / $2; $3 and $4 the time range
-- [from, until); $5 now and $6 keep, as in `funnel.sql`. `up`: the
-- periods in which each user (by pseudonym) was active, from the entries
-- that name them (read through the index on (user_pseudonym, ts)); `c`:
-- each user's first. Answers (cohort period, periods after it, users
-- active).
WITH up AS (
    SELECT DISTINCT x.user_pseudonym AS u,
        (((x.ts AT TIME ZONE 'UTC')::date - DATE '1970-01-01') + $1::int) / $2::int AS p
    FROM {schema}.session_trail_history x
    JOIN {schema}.session_trail_history_heads h ON h.sid = x.sid
    WHERE x.user_pseudonym IS NOT NULL AND x.ts >= $3 AND x.ts < $4
        AND h.head IS NOT NULL AND h.expires_at > $5
        AND x.seq > h.last_seq - $6 AND x.seq <= h.last_seq
),
c AS (
    SELECT u, min(p) AS c FROM up GROUP BY u
)
SELECT c.c::bigint, (up.p - c.c)::bigint, count(*)
FROM c JOIN up USING (u)
GROUP BY 1, 2
