-- Links a session's history to a user's pseudonym; a link only ever lives
-- longer, and keeps its place in the order.
INSERT INTO session_trail_user_history (user_pseudonym, sid, until) VALUES (?1, ?2, ?3)
ON CONFLICT (user_pseudonym, sid) DO UPDATE SET until = max(until, excluded.until)
