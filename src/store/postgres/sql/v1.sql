-- Schema version 1 of the PostgreSQL store. Applied by
-- `PostgresStore::migrate` inside one transaction, under an advisory lock;
-- `{schema}` is the configured schema, quoted. Times are Unix milliseconds
-- (bigint) except the history's `ts`, a timestamptz for queries.

-- Sessions: one row per session. `data` holds the application's keys, each
-- updated on its own (`data - removed || changed`).
CREATE TABLE {schema}.session_trail_sessions (
    sid               bytea   PRIMARY KEY,
    token_hash        bytea   NOT NULL,
    replaced_hash     bytea,
    replaced_at       bigint,
    user_id           text,
    privilege         text,
    data              jsonb   NOT NULL DEFAULT '{}',
    created           bigint  NOT NULL,
    last_seen         bigint  NOT NULL,
    idle_deadline     bigint  NOT NULL,
    absolute_deadline bigint  NOT NULL,
    expires_at        bigint  GENERATED ALWAYS AS (least(idle_deadline, absolute_deadline)) STORED,
    device            text,
    network           text
);
CREATE INDEX session_trail_sessions_expires ON {schema}.session_trail_sessions (expires_at);
CREATE INDEX session_trail_sessions_user ON {schema}.session_trail_sessions (user_id, created)
    WHERE user_id IS NOT NULL;

-- Places claimed under a session limit: kind 0, a login in progress
-- (`sid` is the session that will carry the user); kind 1, a session being
-- ended to make room for one. Each lapses at `until`.
CREATE TABLE {schema}.session_trail_claims (
    sid     bytea    NOT NULL,
    kind    smallint NOT NULL,
    user_id text     NOT NULL,
    until   bigint   NOT NULL,
    PRIMARY KEY (sid, kind)
);
CREATE INDEX session_trail_claims_user ON {schema}.session_trail_claims (user_id);
CREATE INDEX session_trail_claims_until ON {schema}.session_trail_claims (until);

-- History: one row per entry. `entry` is the exact signed entry (the
-- evidence `verify` checks); the other columns are decoded from it for
-- queries. `session` is the public session id as the API shows it (hex).
CREATE TABLE IF NOT EXISTS {schema}.session_trail_history (
    sid            bytea       NOT NULL,
    session        text        GENERATED ALWAYS AS (encode(sid, 'hex')) STORED,
    seq            bigint      NOT NULL,
    ts             timestamptz NOT NULL,
    kind           text        NOT NULL,
    name           text,
    method         text,
    status         smallint,
    user_pseudonym text,
    attrs          jsonb,
    entry          bytea       NOT NULL,
    PRIMARY KEY (sid, seq)
);

-- Per session: the head (the last entry's tag) the compare-and-append
-- compares, the last entry's seq, the lowest seq not yet trimmed, when the
-- history expires (its TTL slides with each append) and, after an erasure,
-- until when the erasure is remembered. A list is live while `head` is
-- set and `expires_at` is ahead; only its newest `keep` entries are read.
CREATE TABLE {schema}.session_trail_history_heads (
    sid          bytea  PRIMARY KEY,
    head         bytea,
    last_seq     bigint NOT NULL,
    low_seq      bigint NOT NULL,
    expires_at   bigint NOT NULL,
    erased_until bigint
);
CREATE INDEX session_trail_history_heads_expires ON {schema}.session_trail_history_heads (expires_at);

-- The sessions whose history belongs to a user (by keyed pseudonym), in
-- the order they were linked; each link lives until `until`.
CREATE TABLE {schema}.session_trail_user_history (
    user_pseudonym text   NOT NULL,
    sid            bytea  NOT NULL,
    linked         bigint GENERATED ALWAYS AS IDENTITY,
    until          bigint NOT NULL,
    PRIMARY KEY (user_pseudonym, sid)
);
CREATE INDEX session_trail_user_history_until ON {schema}.session_trail_user_history (until);
