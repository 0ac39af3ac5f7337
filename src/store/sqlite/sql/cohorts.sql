-- Cohorts (see `session_trail::analytics`): the period of day number d
-- (days since 1970-01-01, UTC) is (d + ?1) / ?2; ?3 and ?4 the time range
-- [from, until). `up`: the periods in which each user (by pseudonym) was
-- active, from the entries that name them (read through the index on
-- (user_pseudonym, ts)); `c`: each user's first. Answers (cohort period,
-- periods after it, users active).
WITH up AS (
    SELECT DISTINCT user_pseudonym AS u, (ts / 86400000 + ?1) / ?2 AS p
    FROM session_trail_history
    WHERE user_pseudonym IS NOT NULL AND ts >= ?3 AND ts < ?4
),
c AS (
    SELECT u, min(p) AS c FROM up GROUP BY u
)
SELECT c.c, up.p - c.c, count(*)
FROM c JOIN up USING (u)
GROUP BY 1, 2
