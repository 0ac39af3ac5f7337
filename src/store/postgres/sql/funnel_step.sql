,
s{k} AS (
    SELECT p.sid, min(x.seq) AS seq, p.t0
    FROM s{prev} p
    JOIN e x ON x.sid = p.sid
    WHERE x.name = $1[{k}] AND x.seq > p.seq
        AND x.ts - p.t0 <= $2::bigint * interval '1 millisecond'
    GROUP BY p.sid, p.t0
)
