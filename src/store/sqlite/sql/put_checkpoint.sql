-- ?1 writer, ?2 counter, ?3 at, ?4 body. Kept once: a second copy of the
-- same checkpoint (a retry) changes nothing.
INSERT OR IGNORE INTO session_trail_checkpoints (writer, counter, at, body)
VALUES (?1, ?2, ?3, ?4)
