-- A funnel (see `session_trail::analytics`): $1 the steps (text[]), $2 the
-- window in milliseconds, $3 and $4 the time range [from, until), $5 now
-- and $6 keep (Unix ms, entries): only what a history read would answer
-- counts, the newest `keep` entries of live lists, whether or not
-- maintenance trimmed or removed the rest yet.
-- `s1`: each session's first step-1 event, whose time starts the window,
-- with the session's last seq. Then, for each following step k, `s{k}`
-- (from `funnel_step.sql`): the first step-k event after the session's
-- step k-1, within the window. Each step's events are read from the index
-- on (name, sid, seq), in session order. Answers one count per step.
-- (`$2::bigint > 0` types $2 for a one-step funnel, which has no other
-- use for it.)
WITH s1 AS (
    SELECT DISTINCT ON (x.sid) x.sid, x.seq, x.ts AS t0, h.last_seq
    FROM {schema}.session_trail_history x
    JOIN {schema}.session_trail_history_heads h ON h.sid = x.sid
    WHERE x.kind = 'event' AND x.name = ($1::text[])[1] AND x.ts >= $3 AND x.ts < $4
        AND h.head IS NOT NULL AND h.expires_at > $5
        AND x.seq > h.last_seq - $6 AND x.seq <= h.last_seq AND $2::bigint > 0
    ORDER BY x.sid, x.seq
){steps}
SELECT {counts}
