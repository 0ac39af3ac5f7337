-- Schema version 2 of the PostgreSQL store: indexes for analytics
-- (`session_trail::analytics`). Built inside the migration's transaction,
-- which holds off writes to the history table while they are built (a few
-- seconds per million rows).

-- A funnel's and an event count's events: by name and time, with what the
-- funnel reads of each, so the rows themselves are not visited.
CREATE INDEX IF NOT EXISTS session_trail_history_events
    ON {schema}.session_trail_history (name, ts) INCLUDE (sid, seq)
    WHERE kind = 'event';

-- The sessions that name a user, for cohorts.
CREATE INDEX IF NOT EXISTS session_trail_history_users
    ON {schema}.session_trail_history (user_pseudonym, sid)
    WHERE user_pseudonym IS NOT NULL;
