,
s{k} AS (
    SELECT p.sid, min(x.seq) AS seq, p.t0, p.last_seq
    FROM s{prev} p
    JOIN session_trail_history x ON x.sid = p.sid
    WHERE x.kind = 'event' AND x.name = ?{param} AND x.ts >= ?2 AND x.ts < ?3
        AND x.seq > p.seq AND x.seq <= p.last_seq AND x.ts - p.t0 <= ?1
    GROUP BY p.sid
)
