-- A funnel (see `session_trail::analytics`): ?1 the steps (a JSON array),
-- ?2 the window in milliseconds, ?3 and ?4 the time range [from, until),
-- ?5 onwards the steps one by one.
-- `e`: the events of the steps, read through the index on (name, ts).
-- `s1`: each session's first step-1 event (SQLite takes `ts` from the row
-- that has the `min(seq)`), whose time starts the window.
-- Then, for each following step k, `s{k}` (from `funnel_step.sql`): the
-- first step-k event after the session's step k-1, within the window.
-- Answers one count per step.
WITH e AS MATERIALIZED (
    SELECT sid, seq, ts, name
    FROM session_trail_history
    WHERE kind = 'event' AND name IN (SELECT value FROM json_each(?1))
        AND ts >= ?3 AND ts < ?4
),
s1 AS (
    SELECT sid, min(seq) AS seq, ts AS t0
    FROM e
    WHERE name = ?5
    GROUP BY sid
){steps}
SELECT {counts}
