-- Schema version 2 of the PostgreSQL store: indexes for analytics
-- (`session_trail::analytics`). Built inside the migration's transaction,
-- which holds off writes to the history table while they are built (a few
-- seconds per million rows).

-- Events by name, then in each session's order, with their time: a
-- funnel reads each step's events in session order from here alone (no
-- sort, no visit to the rows), and event counts read them too.
CREATE INDEX IF NOT EXISTS session_trail_history_events
    ON {schema}.session_trail_history (name, sid, seq) INCLUDE (ts)
    WHERE kind = 'event';

-- The entries that name a user, by user and time, with their place in
-- their session: cohorts read them here.
CREATE INDEX IF NOT EXISTS session_trail_history_users
    ON {schema}.session_trail_history (user_pseudonym, ts) INCLUDE (sid, seq)
    WHERE user_pseudonym IS NOT NULL;
