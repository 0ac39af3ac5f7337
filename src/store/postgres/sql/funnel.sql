-- A funnel (see `session_trail::analytics`): $1 the steps (text[]), $2 the
-- window in milliseconds, $3 and $4 the time range [from, until).
-- `s1`: each session's first step-1 event, whose time starts the window.
-- Then, for each following step k, `s{k}` (from `funnel_step.sql`): the
-- first step-k event after the session's step k-1, within the window.
-- Each step's events are read from the index on (name, sid, seq), in
-- session order. Answers one count per step. (`$2::bigint > 0` types $2
-- for a one-step funnel, which has no other use for it.)
WITH s1 AS (
    SELECT DISTINCT ON (sid) sid, seq, ts AS t0
    FROM {schema}.session_trail_history
    WHERE kind = 'event' AND name = ($1::text[])[1] AND ts >= $3 AND ts < $4 AND $2::bigint > 0
    ORDER BY sid, seq
){steps}
SELECT {counts}
