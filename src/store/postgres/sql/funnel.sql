-- A funnel (see `session_trail::analytics`): $1 the steps (text[]), $2 the
-- window in milliseconds, $3 and $4 the time range [from, until).
-- `e`: the events of the steps, read through the index on (name, ts).
-- `s1`: each session's first step-1 event, whose time starts the window.
-- Then, for each following step k, `s{k}` (from `funnel_step.sql`): the
-- first step-k event after the session's step k-1, within the window.
-- Answers one count per step. (`$2::bigint > 0` types $2 for a one-step
-- funnel, which has no other use for it.)
WITH e AS MATERIALIZED (
    SELECT sid, seq, ts, name
    FROM {schema}.session_trail_history
    WHERE kind = 'event' AND name = ANY ($1) AND ts >= $3 AND ts < $4 AND $2::bigint > 0
),
s1 AS (
    SELECT DISTINCT ON (sid) sid, seq, ts AS t0
    FROM e
    WHERE name = $1[1]
    ORDER BY sid, seq
){steps}
SELECT {counts}
