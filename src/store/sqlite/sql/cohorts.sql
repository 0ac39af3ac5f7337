-- Cohorts (see `session_trail::analytics`): the period of day number d
-- (days since 1970-01-01, UTC) is (d + ?1) / ?2; ?3 and ?4 the time range
-- [from, until); ?5 now and ?6 keep: only what a history read would
-- answer counts, the newest `keep` entries of live lists, whether or not
-- maintenance trimmed or removed the rest yet. `up`: the periods in which
-- each user (by pseudonym) was active, from the entries that name them
-- (read through the index on (user_pseudonym, ts, sid, seq)); `c`: each
-- user's first. Answers (cohort period, periods after it, users active).
WITH up AS (
    SELECT DISTINCT x.user_pseudonym AS u, (x.ts / 86400000 + ?1) / ?2 AS p
    FROM session_trail_history x
    JOIN session_trail_history_heads h ON h.sid = x.sid AND h.expires_at > ?5
    WHERE x.user_pseudonym IS NOT NULL AND x.ts >= ?3 AND x.ts < ?4
        AND x.seq > (SELECT max(m.seq) FROM session_trail_history m WHERE m.sid = x.sid) - ?6
),
c AS (
    SELECT u, min(p) AS c FROM up GROUP BY u
)
SELECT c.c, up.p - c.c, count(*)
FROM c JOIN up USING (u)
GROUP BY 1, 2
