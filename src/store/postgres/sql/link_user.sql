-- Links a session's history to a user's pseudonym; a link only ever lives
-- longer, and keeps its place in the order.
INSERT INTO {schema}.session_trail_user_history AS l (user_pseudonym, sid, until)
VALUES ($1, $2, $3)
ON CONFLICT (user_pseudonym, sid) DO UPDATE SET until = greatest(l.until, excluded.until)
