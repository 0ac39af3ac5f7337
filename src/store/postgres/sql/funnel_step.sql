,
s{k} AS (
    SELECT p.sid, min(x.seq) AS seq, p.t0, p.last_seq
    FROM s{prev} p
    JOIN {schema}.session_trail_history x ON x.sid = p.sid
    WHERE x.kind = 'event' AND x.name = ($1::text[])[{k}] AND x.ts >= $3 AND x.ts < $4
        AND x.seq > p.seq AND x.seq <= p.last_seq
        AND x.ts - p.t0 <= $2::bigint * interval '1 millisecond'
    GROUP BY p.sid, p.t0, p.last_seq
)
