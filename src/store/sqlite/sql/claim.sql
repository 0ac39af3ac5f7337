-- Claims a place (kind ?2) for session ?1 and user ?3 until ?4.
INSERT INTO session_trail_claims (sid, kind, user_id, until) VALUES (?1, ?2, ?3, ?4)
ON CONFLICT (sid, kind) DO UPDATE SET user_id = excluded.user_id, until = excluded.until
