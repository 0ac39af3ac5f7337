-- A funnel (see `session_trail::analytics`): ?1 the window in
-- milliseconds, ?2 and ?3 the time range [from, until), ?4 onwards the
-- steps. `s1`: each session's first step-1 event (SQLite takes `ts` from
-- the row that has the `min(seq)`), whose time starts the window. Then,
-- for each following step k, `s{k}` (from `funnel_step.sql`): the first
-- step-k event after the session's step k-1, within the window. Each
-- step's events are read from the index on (name, sid, seq, ts), in
-- session order. Answers one count per step.
WITH s1 AS (
    SELECT sid, min(seq) AS seq, ts AS t0
    FROM session_trail_history
    WHERE kind = 'event' AND name = ?4 AND ts >= ?2 AND ts < ?3
    GROUP BY sid
){steps}
SELECT {counts}
