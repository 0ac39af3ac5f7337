-- Schema version 2 of the SQLite store: indexes for analytics
-- (`session_trail::analytics`).

-- Events by name, then in each session's order, with their time: a
-- funnel reads each step's events in session order from here alone (no
-- sort, no visit to the rows), and event counts read them too.
CREATE INDEX IF NOT EXISTS session_trail_history_events
    ON session_trail_history (name, sid, seq, ts)
    WHERE kind = 'event';

-- The entries that name a user, by user and time, with their place in
-- their session: cohorts read them here.
CREATE INDEX IF NOT EXISTS session_trail_history_users
    ON session_trail_history (user_pseudonym, ts, sid, seq)
    WHERE user_pseudonym IS NOT NULL;
