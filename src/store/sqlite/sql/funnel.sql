-- A funnel (see `session_trail::analytics`): ?1 the window in
-- milliseconds, ?2 and ?3 the time range [from, until), ?4 now and ?5
-- keep (Unix ms, entries), ?6 onwards the steps.
-- `live`: each live list and its last seq: only what a history read would
-- answer counts, the newest `keep` entries of live lists, whether or not
-- maintenance trimmed or removed the rest yet.
-- `s1`: each session's first step-1 event (SQLite takes `ts` from the row
-- that has the `min(seq)`), whose time starts the window. Then, for each
-- following step k, `s{k}` (from `funnel_step.sql`): the first step-k
-- event after the session's step k-1, within the window. Each step's
-- events are read from the index on (name, sid, seq, ts), in session
-- order. Answers one count per step.
WITH live AS MATERIALIZED (
    SELECT h.sid,
        (SELECT max(m.seq) FROM session_trail_history m WHERE m.sid = h.sid) AS last_seq
    FROM session_trail_history_heads h
    WHERE h.expires_at > ?4
),
s1 AS (
    SELECT x.sid, min(x.seq) AS seq, x.ts AS t0, l.last_seq
    FROM session_trail_history x
    JOIN live l ON l.sid = x.sid
    WHERE x.kind = 'event' AND x.name = ?6 AND x.ts >= ?2 AND x.ts < ?3
        AND x.seq > l.last_seq - ?5
    GROUP BY x.sid
){steps}
SELECT {counts}
