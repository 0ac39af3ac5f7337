-- A new record: a plain INSERT, so an id that exists is a constraint
-- violation, never an overwrite.
INSERT INTO session_trail_sessions
    (sid, token_hash, replaced_hash, replaced_at, user_id, privilege, data,
     created, last_seen, idle_deadline, absolute_deadline, device, network)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
