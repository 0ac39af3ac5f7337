-- One history row: the decoded columns and the exact entry.
INSERT INTO session_trail_history
    (sid, seq, ts, kind, name, method, status, user_pseudonym, attrs, entry)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
